"""Operations, validation and ids (memwal/_records.py)."""

from __future__ import annotations

import math
import os
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwal import InvalidOperation, Memory, MemoryCategory, MemoryOperation, Priority
from memwal._core import records
from memwal._core.records import (
    KNOWN_CATEGORIES,
    IdGenerator,
    decode_op,
    encode_op,
    id_to_seq,
    seq_to_id,
    validate,
)

MAX = 1 << 20


def check(category="bug", content="text", metadata=None, priority=None, tags=(), project=None, max_bytes=MAX):
    return validate(category, content, metadata, priority, tags, project, max_content_bytes=max_bytes)


class TestCategories:
    def test_every_vocabulary_of_the_original_framework_is_known(self) -> None:
        """All four Claude PM category enums' values are accepted as they are."""
        vocabularies = {
            "project", "pattern", "team", "error", "bug", "user_feedback", "system", "framework", "qa",
            "integration", "performance", "feedback", "architecture", "operation", "agent", "workflow",
            "decision", "knowledge",
        }
        assert vocabularies == KNOWN_CATEGORIES
        for c in vocabularies:
            assert check(category=c)[0] == c

    def test_categories_are_normalised_to_lower_case(self) -> None:
        assert check(category="User_Feedback")[0] == "user_feedback"
        assert check(category=MemoryCategory.QA)[0] == "qa"

    def test_custom_category_matching_the_pattern_is_kept(self) -> None:
        assert check(category="deploy.rollback-v2")[0] == "deploy.rollback-v2"

    @pytest.mark.parametrize("bad", ["has space", "", "x" * 65, "émoji", "semi;colon"])
    def test_unknown_category_is_an_error_never_a_default(self, bad: str) -> None:
        with pytest.raises(InvalidOperation, match=r"^category: .* is not a known category"):
            check(category=bad)

    def test_category_must_be_a_string(self) -> None:
        with pytest.raises(InvalidOperation, match="category: must be a str, got int"):
            check(category=3)


class TestPriority:
    def test_default_is_high_for_bug_and_error_medium_otherwise(self) -> None:
        assert check(category="bug")[3] is Priority.HIGH
        assert check(category="error")[3] is Priority.HIGH
        assert check(category="feedback")[3] is Priority.MEDIUM

    def test_priority_accepts_enum_and_any_case(self) -> None:
        assert check(priority="CRITICAL")[3] is Priority.CRITICAL
        assert check(priority=Priority.LOW)[3] is Priority.LOW

    @pytest.mark.parametrize("bad", ["urgent", 1, ""])
    def test_unknown_priority_is_an_error(self, bad: object) -> None:
        with pytest.raises(InvalidOperation, match=r"priority: .* is not one of critical, high, medium, low"):
            check(priority=bad)

    def test_ranks_order_critical_first(self) -> None:
        assert [p.rank for p in (Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW)] == [0, 1, 2, 3]


class TestContent:
    @pytest.mark.parametrize("bad", ["", "   \n\t"])
    def test_empty_content_is_an_error(self, bad: str) -> None:
        with pytest.raises(InvalidOperation, match="content: must not be empty"):
            check(content=bad)

    def test_content_must_be_str(self) -> None:
        with pytest.raises(InvalidOperation, match="content: must be a str, got bytes"):
            check(content=b"x")

    def test_content_limit_counts_utf8_bytes(self) -> None:
        check(content="é" * 50, max_bytes=100)  # 100 bytes: at the limit
        with pytest.raises(InvalidOperation, match="content: is 102 bytes in UTF-8, more than max_content_bytes 100"):
            check(content="é" * 51, max_bytes=100)


class TestMetadata:
    def test_plain_json_metadata_is_accepted_and_copied(self) -> None:
        md = {"a": 1, "b": [1.5, None, True, {"c": "d"}]}
        out = check(metadata=md)[2]
        assert out == md and out is not md

    @pytest.mark.parametrize(
        ("md", "message"),
        [
            ({"s": {1, 2}}, r"metadata\.s: set is not JSON"),
            ({"o": object()}, r"metadata\.o: object is not JSON"),
            ({"n": math.nan}, r"metadata\.n: nan is not a finite number"),
            ({"x": {"deep": [1, math.inf]}}, r"metadata\.x\.deep\[1\]: inf is not a finite number"),
            ({1: "v"}, r"metadata\[1\]: keys must be str"),
            ({"big": 2**70}, r"metadata\.big: integer .* does not fit in 64 bits"),
        ],
    )
    def test_non_json_metadata_names_the_key_path(self, md: dict, message: str) -> None:
        with pytest.raises(InvalidOperation, match=message):
            check(metadata=md)

    def test_metadata_must_be_a_mapping(self) -> None:
        with pytest.raises(InvalidOperation, match="metadata: must be a mapping, got list"):
            check(metadata=[("a", 1)])


class TestTagsAndProject:
    def test_tags_become_a_tuple(self) -> None:
        assert check(tags=["a", "b"])[4] == ("a", "b")

    @pytest.mark.parametrize(
        ("tags", "message"),
        [
            ("abc", "tags: must be a sequence of str, got str"),
            (["ok", ""], r"tags\[1\]: must be a non-empty str"),
            (["x" * 65], r"tags\[0\]: must be a non-empty str of at most 64"),
            ([1], r"tags\[0\]: must be a non-empty str"),
            (["t"] * 65, "tags: has 65 tags, at most 64 allowed"),
        ],
    )
    def test_bad_tags_are_errors(self, tags: object, message: str) -> None:
        with pytest.raises(InvalidOperation, match=message):
            check(tags=tags)

    def test_bad_project_is_an_error(self) -> None:
        with pytest.raises(InvalidOperation, match="project: must be None or a non-empty str"):
            check(project="")

    def test_invalid_operation_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            check(category="no such category!")


class TestIds:
    def test_two_generators_drawing_the_same_sequence_give_different_ids(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Two journals on one file in one process: rows of different priorities get
        # different keys even for one sequence, so only the ids' random bits keep a
        # sink (idempotent on the id) from dropping one of them.
        monkeypatch.setattr(records, "_getrandbits", lambda bits: 0)
        a, b = IdGenerator(lambda: 1_700_000_000.0), IdGenerator(lambda: 1_700_000_000.0)
        (id_a, seq_a), (id_b, seq_b) = a.next(), b.next()
        assert seq_a == seq_b and id_to_seq(id_a) == id_to_seq(id_b)
        assert id_a != id_b

    def test_ids_sort_like_their_sequence(self) -> None:
        gen = IdGenerator()
        pairs = [gen.next() for _ in range(500)]
        assert sorted(pairs) == sorted(pairs, key=lambda p: p[1])

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(min_value=-3_000, max_value=3_000), min_size=1, max_size=300))
    def test_ids_stay_ordered_and_decodable_when_the_clock_jumps(self, steps: list[int]) -> None:
        # Steps in microseconds, backwards too, across millisecond edges: the id of
        # each sequence (its cached millisecond prefix included) must decode to it.
        now = [1_700_000_000_000_000]

        def clock() -> float:
            return now[0] / 1_000_000

        gen = IdGenerator(clock)
        pairs = []
        for step in steps:
            now[0] += step
            pairs.append(gen.next())
        seqs = [seq for _, seq in pairs]
        assert seqs == sorted(set(seqs))  # strictly increasing
        assert [id_to_seq(op_id) for op_id, _ in pairs] == seqs
        assert sorted(op_id for op_id, _ in pairs) == [op_id for op_id, _ in pairs]

    def test_ids_are_uuid_v7(self) -> None:
        import uuid

        op_id, _ = IdGenerator().next()
        u = uuid.UUID(op_id)
        assert u.version == 7 and u.variant == uuid.RFC_4122

    def test_a_forked_child_draws_new_per_process_bits(self) -> None:
        # Parent and child share a clock and a last sequence after fork: their ids
        # must still differ, so the child gets its own last 56 bits.
        gen = IdGenerator()
        parent_id, _ = gen.next()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (the child)
            os.close(read_end)
            os.write(write_end, gen.next()[0].encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as f:
            child_id = f.read()
        os.waitpid(pid, 0)
        assert uuid.UUID(child_id).version == 7
        assert child_id[-12:] != parent_id[-12:] and gen.next()[0][-12:] == parent_id[-12:]

    @given(st.integers(min_value=0, max_value=(1 << 60) - 1), st.integers(min_value=0, max_value=(1 << 56) - 1))
    def test_the_sequence_is_recoverable_from_the_id(self, seq: int, rnd: int) -> None:
        assert id_to_seq(seq_to_id(seq, rnd)) == seq

    @pytest.mark.parametrize("bad", ["", "not-an-id", "00000000-0000-4000-8000-000000000000", 5])
    def test_foreign_ids_are_rejected(self, bad: object) -> None:
        with pytest.raises(ValueError, match="not a memwal operation id"):
            id_to_seq(bad)  # type: ignore[arg-type]


class TestCodec:
    def test_round_trip(self) -> None:
        op = MemoryOperation(id="a", category="bug", content="c", metadata={"k": [1]}, priority=Priority.LOW,
                             tags=("t",), project="p", created_at=1.5)
        assert decode_op(encode_op(op)) == op

    def test_unknown_fields_from_a_newer_writer_are_ignored(self) -> None:
        payload = b'{"id":"a","category":"bug","content":"c","added_in_v9":{"x":1}}'
        assert decode_op(payload).content == "c"

    def test_a_payload_missing_required_fields_fails_to_decode(self) -> None:
        with pytest.raises(msgspec.ValidationError):
            decode_op(b'{"id":"a"}')


def test_operations_and_memories_are_not_tracked_by_the_cyclic_gc() -> None:
    import gc

    op = MemoryOperation(id="x", category="bug", content="c", metadata={"a": [1]})
    assert not gc.is_tracked(op) and not gc.is_tracked(Memory(id="x", category="bug", content="c"))
