"""Every example in README.md runs as written.

What runs, by the fence's language:

- ``python``: the block is saved as a script and run with this interpreter in a fresh
  temporary directory (the cwd), so relative paths such as ``agent.journal`` land there.
  It must be a whole program: top-level ``await`` or a name it never defines fails.
- ``sh``, ``bash``, ``shell``, ``console``: every line that runs ``memwal-replay`` (after an
  optional ``$ `` prompt and ``NAME=value`` assignments; ``&&``, pipes and redirections are
  kept; a trailing ``\\`` joins lines) runs with bash, in order, and must exit 0. Other lines
  (``tools/demo``, ``pip install`` ...) are not run. Before the first command, each journal a
  command names (its first ``*.journal`` argument) that does not exist yet is prepared: 20
  pending operations, 2 dead letters, 3 delivered (``import ... --create`` targets excepted).
- ``yaml``, ``toml``: saved as a file and loaded with ``memwal.load_config`` (must be valid).
- anything else (``text``, no language): not run.

A mem0 URL on loopback (``mem0+oss://127.0.0.1:PORT``, ``http://localhost:PORT`` in a block
that mentions mem0) gets the dev server ``memwal._testing.fake_mem0`` (what ``tools/fake-mem0``
runs); the block's port is replaced by the server's own free port, so the README may say
``8888`` while tests run in parallel.

Directives: an HTML comment on the last non-blank line before the fence, invisible on
GitHub, ``;``-separated::

    <!-- test: skip: needs a real mem0 account -->   not run (the reason is required and shown)
    <!-- test: compile-only -->                       python: only checked to compile
    <!-- test: continue -->                           run after the previous tested block, in
                                                      its directory (a shell block that inspects
                                                      the journal a python block wrote)
    <!-- test: background -->                         start it, do not wait: runs beside the
                                                      blocks that ``continue`` it, stopped after
    <!-- test: mem0 -->                               start the dev server even if not detected
    <!-- test: exit: 0,1 -->                          exit codes a shell command may end with
    <!-- test: timeout: 120 -->                       seconds for the block (default 60)

A block and the blocks that ``continue`` it form one test case, named after the first
block's line number.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SHELLS = {"sh", "bash", "shell", "console"}
CONFIGS = {"yaml": ".yaml", "yml": ".yaml", "toml": ".toml"}
DIRECTIVE = re.compile(r"<!--\s*test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
LOOPBACK = re.compile(r"(?P<host>127\.0\.0\.1|localhost):(?P<port>\d{2,5})")
DEFAULT_TIMEOUT = 60.0


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return float(self.directives.get("timeout", DEFAULT_TIMEOUT))


def parse_directives(comment: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in comment.split(";"))):
        name, _, value = part.partition(":")
        out[name.strip()] = value.strip()
    return out


def blocks(markdown: str) -> list[Block]:
    """Every fenced block, with the directives of the comment just before it."""
    lines = markdown.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i].removeprefix(indent))
            i += 1
        i += 1  # the closing fence
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        d = DIRECTIVE.search(before)
        found.append(Block(start + 1, lang, "\n".join(body) + "\n", parse_directives(d.group(1)) if d else {}))
    return found


def commands(text: str) -> list[str]:
    """The memwal-replay command lines of a shell block, prompts removed, continuations joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    out = []
    for raw in joined.splitlines():
        line = raw.strip().removeprefix("$ ").strip()
        words = line.split()
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
            words = words[1:]
        if words and words[0] == "memwal-replay":
            out.append(line)
    return out


def is_run(block: Block) -> bool:
    if block.lang in SHELLS:
        return bool(commands(block.text))
    return block.lang == "python" or block.lang in CONFIGS


def chains(all_blocks: list[Block]) -> list[list[Block]]:
    """Tested blocks grouped: each with the blocks that ``continue`` it."""
    out: list[list[Block]] = []
    for b in filter(is_run, all_blocks):
        if "continue" in b.directives and out:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def wants_mem0(block: Block) -> bool:
    return "mem0" in block.directives or (
        "mem0" in block.text.lower() and LOOPBACK.search(block.text) is not None
    )


# -- fixtures a block may need ------------------------------------------------------------


def prepare_journal(path: Path) -> None:
    """20 pending operations, 2 dead letters and 3 delivered (kept), as after an outage."""
    from memwal._core.config import JournalConfig
    from memwal._core.records import Priority
    from memwal._journal.journal import Journal, Settlement

    j = Journal(path, JournalConfig(retention_seconds=86400))
    j.open()
    try:
        for i in range(25):
            category = ("bug", "decision", "feedback")[i % 3]
            priority = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)[i % 3]
            j.append(category, f"example memory {i}", {"i": i}, priority, ("example",), "readme")
        leased, _ = j.lease(5)
        j.settle(
            Settlement(
                acked=[g.key for g in leased[:3]],
                dead=[(leased[3].key, "rejected: 401 unauthorized"),
                      (leased[4].key, "gave up after 8 attempts: HTTP 503")],
            )
        )
    finally:
        j.close()


def journals_named(command: str) -> Iterator[str]:
    """The journal a memwal-replay command works on, unless it is an import that creates it."""
    for part in command.split("&&"):
        words = shlex.split(part, comments=True)
        while words and "=" in words[0] and words[0] != "memwal-replay":
            words = words[1:]
        if len(words) < 3 or words[0] != "memwal-replay":
            continue
        if words[1] == "import" and "--create" in words:
            continue
        target = next((w for w in words[2:] if w.endswith(".journal")), None)
        if target is not None:
            yield target


class Mem0Server:
    """The dev server in a child process, on a free loopback port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memwal._testing.fake_mem0", "--port", "0", "--api", "both"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = LOOPBACK.search(line)
        if m is None:
            self.stop()
            pytest.fail(f"the mem0 dev server did not start: {line!r}")
        self.port = m.group("port")

    def rewrite(self, text: str) -> str:
        return LOOPBACK.sub(lambda m: f"{m.group('host')}:{self.port}", text)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def environment() -> dict[str, str]:
    """This interpreter's bin first on PATH (memwal-replay), no MEMWAL_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMWAL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- running ---------------------------------------------------------------------------------


class Runner:
    def __init__(self, cwd: Path) -> None:
        self.cwd, self.env = cwd, environment()
        self.background: list[subprocess.Popen[str]] = []
        self.servers: list[Mem0Server] = []
        self.n = 0

    def close(self) -> None:
        for p in self.background:
            p.kill()
            p.wait(timeout=30)
        for s in self.servers:
            s.stop()

    def text_of(self, block: Block) -> str:
        if not wants_mem0(block):
            return block.text
        server = Mem0Server()
        self.servers.append(server)
        return server.rewrite(block.text)

    def run(self, block: Block) -> None:
        text = self.text_of(block)
        where = f"README.md:{block.line} ({block.lang})"
        if block.lang == "python":
            self.python(text, block, where)
        elif block.lang in SHELLS:
            self.shell(text, block, where)
        else:
            self.config(text, block, where)

    def python(self, text: str, block: Block, where: str) -> None:
        if "compile-only" in block.directives:
            compile(text, where, "exec")
            return
        self.n += 1
        script = self.cwd / f"readme_block_{self.n}.py"
        script.write_text(text)
        cmd = [sys.executable, str(script)]
        if "background" in block.directives:
            self.background.append(
                subprocess.Popen(cmd, cwd=self.cwd, env=self.env, text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            return
        r = subprocess.run(cmd, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                           timeout=block.timeout, check=False)
        assert r.returncode == 0, f"{where} exited {r.returncode}:\n{r.stderr[-3000:]}"

    def shell(self, text: str, block: Block, where: str) -> None:
        allowed = {int(c) for c in block.directives.get("exit", "0").split(",")}
        for command in commands(text):
            for name in journals_named(command):
                if not (self.cwd / name).exists():
                    prepare_journal(self.cwd / name)
            r = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True,
                               text=True, timeout=block.timeout, check=False)
            assert r.returncode in allowed, (
                f"{where}: `{command}` exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
            )
            assert "Traceback" not in r.stderr, f"{where}: `{command}`:\n{r.stderr[-3000:]}"

    def config(self, text: str, block: Block, where: str) -> None:
        import memwal

        path = self.cwd / f"readme_config{CONFIGS[block.lang]}"
        path.write_text(text)
        memwal.load_config(path, env={})


ALL = blocks(README.read_text()) if README.exists() else []
CHAINS = chains(ALL)


def test_the_readme_has_examples() -> None:
    assert any(b.lang == "python" for b in ALL), "README.md has no python example"


@pytest.mark.parametrize("chain", CHAINS, ids=[f"line{c[0].line}-{c[0].lang}" for c in CHAINS])
def test_readme_example_runs(chain: list[Block], tmp_path: Path) -> None:
    skipped = [b for b in chain if "skip" in b.directives]
    for b in skipped:
        assert b.directives["skip"], f"README.md:{b.line}: a skip needs a reason (<!-- test: skip: why -->)"
    if skipped and skipped[0] is chain[0]:
        pytest.skip(f"README.md:{chain[0].line}: {chain[0].directives['skip']}")
    runner = Runner(tmp_path)
    try:
        for b in chain:
            if "skip" not in b.directives:
                runner.run(b)
    finally:
        runner.close()


# -- the harness itself -------------------------------------------------------------------------


SAMPLE = '''Intro.

<!-- test: skip: illustration -->
```python
await nothing()
```

```sh
tools/demo
$ MEMWAL_X=1 memwal-replay status agent.journal \\
    --json
memwal-replay export agent.journal -o ops.jsonl && memwal-replay import new.journal ops.jsonl --create
```

<!-- test: continue; exit: 0,1 -->
```bash
memwal-replay requeue agent.journal --id 0190a5c1-7b2e-7c3d-8e4f-0123456789ab
```

```text
memwal-replay status not-run.journal
```
'''


def test_blocks_directives_and_chains_are_parsed() -> None:
    found = blocks(SAMPLE)
    assert [(b.line, b.lang) for b in found] == [(4, "python"), (8, "sh"), (16, "bash"), (20, "text")]
    assert found[0].directives == {"skip": "illustration"}
    assert found[2].directives == {"continue": "", "exit": "0,1"}
    assert commands(found[1].text) == [
        "MEMWAL_X=1 memwal-replay status agent.journal --json",
        "memwal-replay export agent.journal -o ops.jsonl && memwal-replay import new.journal ops.jsonl --create",
    ]
    assert [list(journals_named(c)) for c in commands(found[1].text)] == [["agent.journal"], ["agent.journal"]]
    assert [[b.line for b in c] for c in chains(found)] == [[4], [8, 16]]


def test_a_shell_chain_runs_against_a_prepared_journal(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    try:
        for b in chains(blocks(SAMPLE))[1]:
            runner.run(b)
    finally:
        runner.close()
    from memwal._recovery import inspect as rec

    for name, expect in (("agent.journal", (20, 2, 3)), ("new.journal", (22, 0, 0))):
        j = rec.open_journal(tmp_path / name)
        try:
            s = rec.status(j)
            assert (s.pending, s.dead, s.delivered) == expect
        finally:
            j.close()


def test_a_failing_example_fails_with_its_line(tmp_path: Path) -> None:
    bad = blocks("```python\nimport anyio\nasync with anyio.Lock():\n    pass\n```\n")[0]
    with pytest.raises(AssertionError, match=r"README.md:1 \(python\) exited 1:[\s\S]*SyntaxError"):
        Runner(tmp_path).run(bad)
    shell = blocks("<!-- test: exit: 0 -->\n```sh\nmemwal-replay show agent.journal nonsense\n```\n")[0]
    with pytest.raises(AssertionError, match="exited 2"):
        Runner(tmp_path).run(shell)


def test_a_mem0_example_gets_the_dev_server_on_a_free_port(tmp_path: Path) -> None:
    block = blocks(
        "```python\n"
        "import urllib.request\n"
        "# mem0 dev server\n"
        "urllib.request.urlopen('http://127.0.0.1:8888/_control/memories').read()\n"
        "```\n"
    )[0]
    runner = Runner(tmp_path)
    try:
        runner.run(block)
        assert runner.servers and runner.servers[0].port != "8888"
    finally:
        runner.close()


def test_a_background_block_runs_beside_the_blocks_that_continue_it(tmp_path: Path) -> None:
    sample = (
        "<!-- test: background -->\n"
        "```python\n"
        "import pathlib, time\n"
        "pathlib.Path('up').write_text('yes')\n"
        "time.sleep(3600)  # a delivery process runs until stopped\n"
        "```\n"
        "<!-- test: continue; timeout: 30 -->\n"
        "```python\n"
        "import pathlib, time\n"
        "deadline = time.monotonic() + 25\n"
        "while not pathlib.Path('up').exists():\n"
        "    assert time.monotonic() < deadline\n"
        "    time.sleep(0.01)\n"
        "```\n"
    )
    (chain,) = chains(blocks(sample))
    assert [b.directives for b in chain] == [{"background": ""}, {"continue": "", "timeout": "30"}]
    runner = Runner(tmp_path)
    try:
        for b in chain:
            runner.run(b)
        (proc,) = runner.background
        assert proc.poll() is None  # still running beside the second block
    finally:
        runner.close()
    assert proc.returncode is not None  # stopped after the chain


def test_a_config_block_must_load(tmp_path: Path) -> None:
    good = blocks("```yaml\nmemory:\n  cache: {ttl_seconds: 60}\n```\n")[0]
    Runner(tmp_path).run(good)
    bad = blocks("```toml\n[async_collection]\nbatch_sise = 3\n```\n")[0]
    import memwal

    with pytest.raises(memwal.ConfigError, match="batch_sise"):
        Runner(tmp_path).run(bad)
