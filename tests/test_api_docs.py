"""The public API reads itself: every name in memwal.__all__ is documented, with an example
for classes and functions, and shows as ``memwal.X``; help(memwal) shows usage."""

from __future__ import annotations

import enum
import inspect
import pydoc
import traceback
import typing

import msgspec
import pytest

import memwal

PUBLIC = [n for n in memwal.__all__ if n != "__version__"]
CALLABLES = [n for n in PUBLIC if callable(getattr(memwal, n))]


def own_doc(obj: object) -> str:
    """The object's own docstring (not one inherited from a base such as Exception or Struct)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def test_every_public_name_has_a_docstring() -> None:
    missing = [n for n in PUBLIC if not own_doc(getattr(memwal, n))]
    assert missing == [], f"no docstring of their own: {missing}"


def test_every_public_class_and_function_shows_an_example() -> None:
    # An example is an "Example:" section with at least one ">>>" line.
    missing = [
        n
        for n in CALLABLES
        if "Example" not in own_doc(getattr(memwal, n)) or ">>>" not in own_doc(getattr(memwal, n))
    ]
    assert missing == [], f"no example in the docstring: {missing}"


@pytest.mark.parametrize("name", CALLABLES)
def test_public_names_show_as_memwal_x(name: str) -> None:
    obj = getattr(memwal, name)
    assert obj.__module__ == "memwal"
    if isinstance(obj, type) and not issubclass(obj, enum.Enum):  # an enum's repr names no module
        assert repr(obj) == f"<class 'memwal.{name}'>"


def test_an_error_prints_as_memwal_x() -> None:
    with pytest.raises(memwal.ConfigError) as info:
        memwal.load_config({"journal": {"busy_timeout": "soon"}})
    line = traceback.format_exception_only(info.value)[-1]
    assert line.startswith("memwal.ConfigError: journal.busy_timeout")


def test_public_classes_still_resolve_their_annotations() -> None:
    # Renaming the module must not break msgspec or typing, which resolve annotations there.
    assert typing.get_type_hints(memwal.Memory)["metadata"] == dict[str, typing.Any]

    class Tagged(memwal.MemoryOperation, frozen=True, kw_only=True):
        source: str = "test"

    got = msgspec.json.decode(b'{"id": "x", "category": "bug", "content": "c", "source": "s"}', type=Tagged)
    assert got.source == "s" and got.metadata == {}
    assert memwal.load_config({}).journal.busy_timeout > 0


def test_help_shows_usage_not_internal_layering() -> None:
    text = pydoc.render_doc(memwal, renderer=pydoc.plaintext)
    head = text.split("PACKAGE CONTENTS")[0]
    assert "AsyncMemoryCollector(" in head and "collect_async(" in head and "memwal-replay" in head
    for word in ("_journal", "_consumer", "orchestration", "adapters", "Layers"):
        assert word not in head


def test_memory_stored_at_is_none_until_stored() -> None:
    op = memwal.Memory(id="x", category="bug", content="c")
    assert op.stored_at is None
    assert memwal.Memory(id="x", category="bug", content="c", stored_at=12.5).stored_at == 12.5


def test_metrics_text_is_typed_for_the_collectors() -> None:
    hints = typing.get_type_hints(memwal.metrics_text, localns=vars(memwal))
    assert typing.Any not in typing.get_args(hints["collector"]) and hints["collector"] is not typing.Any
    # a Protocol (the observe layer sits below the collectors): both collectors satisfy it
    protocol = hints["collector"]
    assert all(callable(getattr(cls, "health", None)) for cls in (memwal.AsyncMemoryCollector, memwal.MemoryCollector))
    assert [n for n in dir(protocol) if not n.startswith("_")] == ["health"]
