"""Odd input: every value collect() or load_config() cannot store faithfully is refused
naming its field, and nothing is written; NUL and any other valid text round-trips
exactly through every sink (issue 16.6). Category typos (issue 18.3, 18.4)."""

from __future__ import annotations

import collections
import enum
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import fast_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memwal import (
    AsyncMemoryCollector,
    ConfigError,
    InvalidOperation,
    Mem0Sink,
    MemoryOperation,
    Priority,
    Sink,
    SQLiteSink,
    load_config,
)
from memwal._core.records import (
    MAX_METADATA_DEPTH,
    CategoryRules,
    IdGenerator,
    decode_op,
    encode_op,
    validate,
)
from memwal.testing import FakeMem0, MemorySink

MAX = 1 << 20
_ids = IdGenerator()


class S(str):
    """A str subclass: msgspec cannot encode it."""


class Color(enum.StrEnum):
    RED = "red"


def check(category: Any = "bug", content: Any = "text", metadata: Any = None, priority: Any = None,
          tags: Any = (), project: Any = None, rules: CategoryRules | None = None) -> tuple[Any, ...]:
    if rules is None:
        return validate(category, content, metadata, priority, tags, project, MAX)
    return validate(category, content, metadata, priority, tags, project, MAX, rules)


def nest(depth: int, leaf: Any = 1) -> Any:
    out = leaf
    for _ in range(depth):
        out = {"d": out}
    return out


def nest_list(depth: int) -> Any:
    out: Any = []
    for _ in range(depth):
        out = [out]
    return out


ODD = [
    ({"content": "a\ud800b"}, r"^content: has a lone surrogate '\\ud800' at index 1"),
    ({"content": "é\udfff"}, r"^content: has a lone surrogate"),
    ({"content": S("text")}, r"^content: must be a str, got a str subclass"),
    ({"metadata": {"k": "\ud800"}}, r"^metadata\.k: has a lone surrogate"),
    ({"metadata": {"\udc80": 1}}, r"^metadata\['\\udc80'\]: has a lone surrogate"),
    ({"metadata": {"a": [1, {"b": ["\ud800"]}]}}, r"^metadata\.a\[1\]\.b\[0\]: has a lone surrogate"),
    ({"metadata": {"a": {"\ud800": 1}}}, r"^metadata\.a\['\\ud800'\]: has a lone surrogate"),
    ({"metadata": {"k": S("v")}}, r"^metadata\.k: S is a str subclass"),
    ({"metadata": {"a": [S("v")]}}, r"^metadata\.a\[0\]: S is a str subclass"),
    ({"metadata": nest(MAX_METADATA_DEPTH + 1)}, r"^metadata(\.d)+: is nested more than 64 deep"),
    ({"metadata": nest(1000)}, r"^metadata(\.d)+: is nested more than 64 deep"),
    ({"metadata": {"l": nest_list(MAX_METADATA_DEPTH + 5)}}, r"^metadata\.l(\[0\])+: is nested more than 64 deep"),
    ({"tags": ["ok", "\ud800"]}, r"^tags\[1\]: has a lone surrogate"),
    ({"tags": [S("t")]}, r"^tags\[0\]: must be a non-empty str"),
    ({"project": "p\ud800"}, r"^project: has a lone surrogate"),
    ({"project": S("p")}, r"^project: must be None or a non-empty str"),
    ({"category": "bug\ud800"}, r"^category: .* does not match"),
    ({"category": S("bug")}, r"^category: must be a str, got a str subclass"),
]


class TestOddInputIsRefusedNamingTheField:
    @pytest.mark.parametrize(("kwargs", "message"), ODD)
    def test_validate_refuses(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidOperation, match=message):
            check(**kwargs)

    def test_a_structure_that_contains_itself_is_refused_not_a_recursion_error(self) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        with pytest.raises(InvalidOperation, match="is nested more than 64 deep"):
            check(metadata=loop)

    def test_nesting_up_to_the_limit_is_kept(self) -> None:
        md = nest(MAX_METADATA_DEPTH - 1)
        assert check(metadata=md)[2] == md

    def test_mappings_at_any_depth_become_dicts_and_enums_their_values(self) -> None:
        # A Mapping's content is its items, so it is stored as the dict it reads as
        # (the top level always was); what msgspec could not encode is converted here.
        md = types.MappingProxyType({"a": collections.UserDict({"b": (1, 2.5)}), "c": Color.RED})
        out = check(metadata=md)[2]
        assert out == {"a": {"b": [1, 2.5]}, "c": "red"}
        assert type(out["a"]) is dict
        encode_op(MemoryOperation(id="x", category="bug", content="c", metadata=out))

    @pytest.mark.parametrize("text", ["a\x00b", "\x00", "ünï\x00cödé", "emoji \U0001f600", "\u2028\ufeff"])
    def test_valid_text_is_accepted_as_it_is(self, text: str) -> None:
        _, content, md, _, tags, project = check(content=text, metadata={text: text}, tags=[text], project=text)
        assert (content, md, tags, project) == (text, {text: text}, (text,), text)


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[AsyncMemoryCollector]:
    async with AsyncMemoryCollector(tmp_path / "j.journal", MemorySink(), config=fast_config()) as c:
        yield c


@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "message"), ODD)
async def test_collect_refuses_and_writes_nothing(collector: AsyncMemoryCollector, kwargs: dict[str, Any],
                                                  message: str) -> None:
    args = {"category": "bug", "content": "text", **kwargs}
    with pytest.raises(InvalidOperation, match=message):
        collector.collect(args.pop("category"), args.pop("content"), **args)
    counts = collector.journal.counts()
    assert (counts.pending, counts.leased, counts.dead, collector.counters.collected) == (0, 0, 0, 0)


# -- NUL and other valid text through every sink --------------------------------


@pytest.fixture(params=["memory", "sqlite", "mem0"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sink]:
    if request.param == "memory":
        async with MemorySink() as m:
            yield m
    elif request.param == "sqlite":
        async with SQLiteSink(tmp_path / "store.db") as s:
            yield s
    else:
        async with FakeMem0(api="oss") as fake, Mem0Sink(fake.url, api="oss", user_id="u", timeout=5) as m0:
            yield m0


def _op(content: str, **kw: Any) -> MemoryOperation:
    return MemoryOperation(id=_ids.next()[0], category="bug", content=content, created_at=1000.0, **kw)


@pytest.mark.anyio
async def test_nul_round_trips_exactly_through_every_sink(sink: Sink) -> None:
    # SQLiteSink used to store "a\x00b" as "a": its batch INSERT reads text through json_extract.
    nul = _op("a\x00b", project="p\x00q", metadata={"k\x00": "v\x00w"}, tags=("t\x00",))
    plain = _op("no nul here", project="p")
    await sink.deliver([nul, plain])
    got, other = await sink.get(nul.id), await sink.get(plain.id)
    assert got is not None and other is not None
    assert (got.content, got.metadata, got.tags) == ("a\x00b", {"k\x00": "v\x00w"}, ("t\x00",))
    if not isinstance(sink, Mem0Sink):  # mem0 keeps the project as its own metadata, not a field
        assert got.project == "p\x00q"
    assert other.content == "no nul here"
    await sink.deliver([nul])  # redelivery is still ignored, NUL rows included
    assert [m.id for m in await sink.recent(limit=10)].count(nul.id) == 1


# -- hypothesis: odd values anywhere, valid text everywhere -----------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # any text but surrogates
_surrogate = st.text(st.characters(categories=("Cs",)), min_size=1, max_size=2).flatmap(
    lambda s: st.tuples(_text, _text).map(lambda ab: ab[0] + s + ab[1])
)
_poison = st.one_of(
    _surrogate.map(lambda s: ("surrogate", s)),
    _text.map(lambda s: ("subclass", S(s))),
    st.just(("deep", nest(MAX_METADATA_DEPTH + 5))),
)
_leaf = st.one_of(_text, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(),
                  st.floats(allow_nan=False, allow_infinity=False))
_json = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(_text, inner, max_size=3)), max_leaves=10)


def _plant(tree: Any, poison: Any, path: list[int]) -> tuple[Any, bool]:
    """``tree`` with ``poison`` in place of a value chosen by ``path``; True if planted."""
    if isinstance(tree, dict) and tree:
        keys = sorted(tree)
        k = keys[path[0] % len(keys)] if path else keys[0]
        sub, ok = _plant(tree[k], poison, path[1:])
        return {**tree, k: sub}, ok
    if isinstance(tree, list) and tree:
        i = path[0] % len(tree) if path else 0
        sub, ok = _plant(tree[i], poison, path[1:])
        return [*tree[:i], sub, *tree[i + 1 :]], ok
    return poison, True


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_text, _json, min_size=1, max_size=4), _poison, st.lists(st.integers(0, 9), max_size=6),
       st.sampled_from(["metadata", "content", "tags", "project"]))
def test_odd_values_anywhere_are_refused_naming_where(md: dict[str, Any], poison: tuple[str, Any],
                                                      path: list[int], where: str) -> None:
    kind, value = poison
    if where == "metadata" or kind == "deep":
        where = "metadata"
        planted, _ = _plant(md, value, path)
        kwargs: dict[str, Any] = {"metadata": planted}
    else:
        kwargs = {"content": value or S("x")} if where == "content" else {
            "tags": [value or S("x")] if where == "tags" else (), "project": value or S("x")}
        if where == "tags":
            kwargs.pop("project")
        if where == "project":
            kwargs.pop("tags")
    with pytest.raises(InvalidOperation) as err:
        check(**kwargs)
    assert err.value.field.startswith(where)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).filter(lambda s: not s.isspace()),
       st.dictionaries(_text, _json, max_size=3), st.one_of(st.none(), _text.filter(bool)))
def test_any_valid_text_round_trips_through_the_journal_codec_and_sqlite(
    tmp_path: Path, content: str, md: dict[str, Any], project: str | None
) -> None:
    cat, content2, md2, prio, tags, project2 = check(content=content, metadata=md, project=project)
    op = MemoryOperation(id=_ids.next()[0], category=cat, content=content2, metadata=md2, priority=prio,
                         tags=tags, project=project2, created_at=1.0)
    assert decode_op(encode_op(op)) == op

    async def through_sqlite() -> None:
        async with SQLiteSink(tmp_path / f"{op.id}.db") as s:
            await s.deliver([op])
            got = await s.get(op.id)
        assert got is not None
        assert (got.content, got.metadata, got.project) == (op.content, op.metadata, op.project)

    anyio.run(through_sqlite)


# -- categories ---------------------------------------------------------------


class TestCategoryTypos:
    @pytest.mark.parametrize(("typo", "meant"), [("bugs", "bug"), ("erorr", "error"), ("Bugs", "bug"),
                                                 ("usr_feedback", "user_feedback"), ("agents", "agent")])
    def test_one_edit_from_a_known_category_is_refused_with_did_you_mean(self, typo: str, meant: str) -> None:
        with pytest.raises(InvalidOperation, match=rf"^category: '{typo}' is not a known category; did you mean '{meant}'\?"):
            check(category=typo)

    @pytest.mark.parametrize("custom", ["deploy.rollback-v2", "a", "qb", "notes", "bg"])
    def test_other_custom_categories_are_kept(self, custom: str) -> None:
        assert check(category=custom)[0] == custom

    def test_a_registered_custom_category_is_kept(self) -> None:
        rules = CategoryRules(["bugs"])
        assert check(category="bugs", rules=rules)[0] == "bugs"
        assert check(category="BUGS", rules=rules)[0] == "bugs"
        with pytest.raises(InvalidOperation, match="did you mean 'error'"):
            check(category="erorr", rules=rules)

    def test_accept_any_keeps_near_misses(self) -> None:
        assert check(category="erorr", rules=CategoryRules(accept_any=True))[0] == "erorr"

    def test_case_folds_to_the_known_category(self) -> None:
        assert check(category="BUG")[0] == "bug"

    @pytest.mark.anyio
    async def test_the_collector_takes_its_rules_from_config(self, tmp_path: Path) -> None:
        cfg = fast_config(categories={"custom": ["bugs"]})
        async with AsyncMemoryCollector(tmp_path / "j", MemorySink(), config=cfg) as c:
            c.collect("bugs", "kept")
            with pytest.raises(InvalidOperation, match="did you mean 'error'"):
                c.collect("erorr", "refused")
            assert c.journal.counts().pending + c.counters.collected >= 1
            assert c.counters.collected == 1
        any_cfg = fast_config(categories={"accept_any": True})
        async with AsyncMemoryCollector(tmp_path / "k", MemorySink(), config=any_cfg) as c:
            c.collect("erorr", "kept")
            assert c.counters.collected == 1

    def test_config_refuses_a_custom_category_that_could_never_be_collected(self) -> None:
        with pytest.raises(ConfigError, match=r"^categories\.custom: 'Bugs' must be lower-case"):
            load_config({"categories": {"custom": ["Bugs"]}}, env={})


# -- load_config ----------------------------------------------------------------


class TestLoadConfigOddInput:
    @pytest.mark.parametrize("source", [[1, 2], 3, b"memory: {}", 1.5])
    def test_wrong_top_level_types_are_config_errors(self, source: Any) -> None:
        with pytest.raises(ConfigError, match=r"^load_config takes a file path, a mapping or None, got \w+$"):
            load_config(source, env={})

    @pytest.mark.parametrize(("text", "kind"), [
        ("memory:\n  cache:\n    ttl_seconds: 5\n", "YAML"),
        ("cache:\n  max_size: 10", "YAML"),
        ("[cache]\nttl_seconds = 5\n", "TOML"),
        ("[memory.cache]\nmax_size = 1", "TOML"),
    ])
    def test_config_text_instead_of_a_path_says_so_in_one_line(self, text: str, kind: str) -> None:
        with pytest.raises(ConfigError) as err:
            load_config(text, env={})
        msg = str(err.value)
        assert msg.startswith(f"this looks like {kind} text, not a file path") and "\n" not in msg
        assert "ttl_seconds" not in msg and "max_size" not in msg  # the text is not echoed

    def test_a_very_long_path_is_not_echoed_whole(self) -> None:
        with pytest.raises(ConfigError, match="cannot read config file") as err:
            load_config("x" * 5000 + ".yaml", env={})
        assert len(str(err.value)) < 300

    @pytest.mark.parametrize(("source", "path"), [
        ({"cache": {"ttl_seconds": "\ud800"}}, "cache.ttl_seconds"),
        ({"cache": {"\ud800": 1}}, "cache"),
        ({"memory": {"cache": {2: 1}}}, "memory.cache"),
        ({"cache": nest(100)}, "cache" + ".d" * 63),
    ])
    def test_odd_values_in_a_mapping_name_their_key_path(self, source: dict[str, Any], path: str) -> None:
        with pytest.raises(ConfigError) as err:
            load_config(source, env={})
        assert err.value.path == path

    def test_a_lone_surrogate_in_an_environment_value_names_the_variable(self) -> None:
        with pytest.raises(ConfigError) as err:
            load_config(None, env={"MEMWAL_CACHE__MAX_SIZE": "1\udcff"})
        assert err.value.path == "MEMWAL_CACHE__MAX_SIZE"


def test_priority_enum_in_metadata_is_stored_as_its_value() -> None:
    assert check(metadata={"p": Priority.HIGH})[2] == {"p": "high"}
