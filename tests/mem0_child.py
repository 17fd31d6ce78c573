"""Child process for test_mem0_crash: collect into a journal delivering to a slow mem0, print each id.

Usage: python tests/mem0_child.py JOURNAL MEM0_URL COUNT [PREFIX [CONFIG_JSON]]
(CONFIG_JSON: config sections merged over the child's own; "sink": Mem0Sink timing arguments.)
Each id is printed only after collect_async returned (it is committed to the journal).
The sink has the default config: its ledger sits beside the journal, so a restarted
process, or another one delivering from the same journal, knows what was in flight.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memwal import AsyncMemoryCollector, Mem0Sink, load_config


async def main(journal: str, url: str, count: int, prefix: str, extra: dict[str, Any]) -> None:
    sink_args = extra.pop("sink", {})  # Mem0Sink arguments (timings only; the ledger stays the default)
    sections: dict[str, dict[str, Any]] = {"async_collection": {"batch_size": 20}, "journal": {"poll_interval": 0.01}}
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    config = load_config(sections)
    async with AsyncMemoryCollector(journal, Mem0Sink(url, user_id="crash", **sink_args), config=config) as c:
        for i in range(count):
            op_id = await c.collect_async("operation", f"{prefix} memory {i}")
            print(op_id, flush=True)
            await anyio.sleep(0.002)  # pace collection so the kill lands while it is still going on
        print("DONE", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "crash test",
              json.loads(sys.argv[5]) if len(sys.argv) > 5 else {})
