"""Operations and memories as msgspec Structs, their validation, ids and the journal codec.

Stored records never forbid unknown fields and every new field gets a default, so a
journal written by a newer memwal still decodes (schema evolution).
"""

from __future__ import annotations

import enum
import math
import os
import random
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .errors import InvalidOperation

__all__ = [
    "KNOWN_CATEGORIES",
    "CategoryRules",
    "IdGenerator",
    "Memory",
    "MemoryCategory",
    "MemoryOperation",
    "Priority",
    "decode_op",
    "encode_op",
    "id_to_seq",
    "validate",
]


class MemoryCategory(enum.StrEnum):
    """Every category the original framework's four vocabularies used.

    Categories are plain lower-case strings (input is lower-cased: ``"Bug"`` is
    ``"bug"``). Any other string matching ``[a-z0-9_.-]{1,64}`` is accepted too, except
    one a single edit away from a member (``bugs``, ``erorr``), which is refused as a
    likely typo with "did you mean 'bug'?" unless the application registers it
    (config ``categories.custom``, or ``categories.accept_any: true``).

    Example:
        >>> MemoryCategory("bug") is MemoryCategory.BUG
        True
        >>> c.collect(MemoryCategory.FEEDBACK, "user prefers short answers")  # or just "feedback"
    """

    AGENT = "agent"
    ARCHITECTURE = "architecture"
    BUG = "bug"
    DECISION = "decision"
    ERROR = "error"
    FEEDBACK = "feedback"
    FRAMEWORK = "framework"
    INTEGRATION = "integration"
    KNOWLEDGE = "knowledge"
    OPERATION = "operation"
    PATTERN = "pattern"
    PERFORMANCE = "performance"
    PROJECT = "project"
    QA = "qa"
    SYSTEM = "system"
    TEAM = "team"
    USER_FEEDBACK = "user_feedback"
    WORKFLOW = "workflow"


class Priority(enum.StrEnum):
    """Delivery priority: the consumer leases higher priorities first, FIFO within one.

    Example:
        >>> collector.collect("decision", "ship on Friday", priority=memwal.Priority.HIGH)
        >>> memwal.Priority("low").rank
        3
    """

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical ... 3 for low: the journal's lease order."""
        return _RANK[self]


_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}
PRIORITY_BY_RANK = (Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW)
# The defaults as plain names: reading an Enum member off its class (``Priority.HIGH``)
# costs Python 3.11 a descriptor call, about as much as the rest of validate's fast path.
_HIGH, _MEDIUM = Priority.HIGH, Priority.MEDIUM
KNOWN_CATEGORIES = frozenset(c.value for c in MemoryCategory)
_CUSTOM_CATEGORY = re.compile(r"[a-z0-9_.-]{1,64}")
_URGENT = frozenset({"bug", "error"})
MAX_TAGS = 64
MAX_TAG_CHARS = 64
MAX_PROJECT_CHARS = 256


class MemoryOperation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One collected memory on its way to a sink.

    Not tracked by Python's cyclic garbage collector (``gc=False``): its fields hold
    only strings, numbers and JSON-shaped metadata, so it cannot be part of a cycle
    unless code stores an operation inside its own metadata. Untracked, the batches
    the consumer decodes do not trigger collections inside ``collect()`` (its p99
    beside a draining consumer: 62-66 us tracked, 50-55 us untracked).

    Example:
        >>> op = MemoryOperation(id="0190...", category="bug", content="NPE in parser")
    """

    id: str
    category: str
    content: str
    metadata: dict[str, Any] = {}
    priority: Priority = Priority.MEDIUM
    tags: tuple[str, ...] = ()
    project: str | None = None
    created_at: float = 0.0


class Memory(MemoryOperation, frozen=True, kw_only=True):
    """A memory as a sink holds it: the operation plus when it was stored.

    ``stored_at`` (Unix seconds) is None for an operation still in the journal, not
    yet delivered (reads see your writes before the sink has them).

    Example:
        >>> m = await collector.get(op_id)
        >>> "delivered" if m.stored_at is not None else "still in the journal"
    """

    stored_at: float | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MemoryOperation)


def encode_op(op: MemoryOperation) -> bytes:
    """The journal payload of ``op`` (JSON, readable with the sqlite3 shell)."""
    return _encoder.encode(op)


def decode_op(payload: bytes) -> MemoryOperation:
    """Decode a journal payload; raises ``msgspec.DecodeError`` or ``ValidationError``."""
    return _decoder.decode(payload)


# -- ids ---------------------------------------------------------------------------
# An id is an RFC 9562 UUIDv7 whose top bits carry a 60-bit sequence number
# (microseconds << 8 | 8 random bits). The journal's integer key is rank << 60 | seq,
# so the one B-tree that stores the rows is already in lease order (priority, then
# time) and an append touches only that tree. The seq is recoverable from the id.


class IdGenerator:
    """Time-ordered ids, strictly increasing for one generator (one journal).

    An id is a UUIDv7 whose 60 bits after the version hold the sequence (milliseconds,
    sub-millisecond microseconds, 8 random bits) and whose last 56 bits are random
    per generator (fresh in a forked child). The sequence orders a generator's ids;
    the random bits keep two generators that draw the same sequence apart: two
    processes, or two journals on one file in one process, whose rows may differ in
    priority and so not collide on the journal's key. ``next`` formats an id from a
    per-millisecond prefix and two table lookups.

    Not thread-safe by itself: callers serialize ``next`` (the journal draws ids
    under the writer lock that orders its commits, so one lock serves both).
    """

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self._last = 0
        self._ms_us = -1000  # the current millisecond, in microseconds
        self._prefix = ""  # the id's first 15 characters for that millisecond
        self._tails = _new_tails()
        _GENERATORS.add(self)

    def reseed(self) -> None:
        """New random tails (a child after fork() must not repeat its parent's ids)."""
        self._tails = _new_tails()

    def next(self) -> tuple[str, int]:
        """Return ``(id, seq)`` for a new operation."""
        clock = self._clock
        us = _time_ns() // 1000 if clock is None else int(clock() * 1_000_000)
        r8 = _getrandbits(8)
        seq = us << 8 | r8
        if seq <= self._last:
            seq = self._last + 1
            us, r8 = seq >> 8, seq & 0xFF
        self._last = seq
        sub = us - self._ms_us  # microseconds into the cached millisecond; never < 0, seq only grows
        if sub >= 1000:
            ms = us // 1000
            self._ms_us, self._prefix = ms * 1000, f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
            sub = us - ms * 1000
        return f"{self._prefix}{_HEX3[sub << 2 | r8 >> 6]}{self._tails[r8 & 0x3F]}", seq

    @property
    def last(self) -> int:
        """The newest sequence this generator handed out (0 before the first)."""
        return self._last

    @property
    def suffix(self) -> str:
        """The last 15 characters every id of this generator ends with (its 56 random bits)."""
        return self._tails[0][-15:]


_getrandbits = random.getrandbits
_time_ns = time.time_ns
_HEX3 = [f"{i:03x}" for i in range(4096)]
_GENERATORS: weakref.WeakSet[IdGenerator] = weakref.WeakSet()


def _new_tails() -> list[str]:
    """The 64 possible last 18 characters of a generator's ids ("-", variant, 6 bits, 56 random)."""
    rnd56 = int.from_bytes(os.urandom(7), "big")
    return [seq_to_id(r, rnd56)[18:] for r in range(64)]


def _after_fork_in_child() -> None:
    for gen in list(_GENERATORS):
        gen.reseed()


def seq_to_id(seq: int, rnd56: int) -> str:
    """The UUIDv7 holding ``seq`` (see IdGenerator) with ``rnd56`` as its last 56 bits."""
    us, r8 = seq >> 8, seq & 0xFF
    ms, sub = divmod(us, 1000)
    n = (ms << 80) | (0x7 << 76) | (((sub << 2) | (r8 >> 6)) << 64)
    n |= (0b10 << 62) | ((r8 & 0x3F) << 56) | rnd56
    h = n.to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


os.register_at_fork(after_in_child=_after_fork_in_child)


def id_to_seq(op_id: str) -> int:
    """The sequence number inside a memwal id; ``ValueError`` if it is not one."""
    h = op_id.replace("-", "") if isinstance(op_id, str) and len(op_id) == 36 else ""
    try:
        n = int(h, 16) if len(h) == 32 else -1
    except ValueError:
        n = -1
    rand_a = (n >> 64) & 0xFFF
    if n < 0 or (n >> 76) & 0xF != 7 or (n >> 62) & 0b11 != 0b10 or rand_a >> 2 >= 1000:
        raise ValueError(f"not a memwal operation id: {op_id!r}")
    us = (n >> 80) * 1000 + (rand_a >> 2)
    return (us << 8) | ((rand_a & 3) << 6) | ((n >> 56) & 0x3F)


# -- validation --------------------------------------------------------------------
# Every string collect() stores must encode to UTF-8: a lone surrogate ("\ud800") is
# refused here, naming its field, rather than failing inside the journal's encoder.
# ``str.isascii`` answers for almost every string at memory speed; only non-ASCII
# text is encoded to find out.
MAX_METADATA_DEPTH = 64  # containers nested deeper than this inside metadata are refused


def _surrogate_free(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(value: str, field: str) -> None:
    """Refuse a str that cannot be stored as UTF-8 (a lone surrogate)."""
    if not value.isascii() and not _surrogate_free(value):
        pos = next(i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff")
        raise InvalidOperation(field, f"has a lone surrogate {value[pos]!r} at index {pos}, which UTF-8 cannot store")


def _one_edit(a: str, b: str) -> bool:
    """True when ``a`` becomes ``b`` by one insertion, deletion, substitution or swap of neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    return a[i + 1 :] == b[i + 1 :] or (a[i + 2 :] == b[i + 2 :] and a[i : i + 2] == b[i : i + 2][::-1])


def near_known_category(category: str) -> str | None:
    """The known category one edit away from ``category`` (a likely typo), or None.

    Only names of three or more letters count on either side: "qa" is one edit from
    every one- and two-letter name, which are more likely meant as they are.
    """
    if len(category) < 3:
        return None
    return next((k for k in _TYPO_TARGETS if _one_edit(category, k)), None)


_TYPO_TARGETS = sorted(k for k in KNOWN_CATEGORIES if len(k) >= 3)


class CategoryRules:
    """Which categories collect() accepts: the known ones, the ``custom`` ones the
    application registered, and any other matching ``[a-z0-9_.-]{1,64}`` unless it is
    one edit away from a known one (``bugs``, ``erorr``: a typo, refused with "did you
    mean"); ``accept_any`` accepts those too. Input is lower-cased first.

    Example:
        >>> CategoryRules(custom=["bugs"]).normalise("Bugs")
        'bugs'
    """

    __slots__ = ("accept_any", "known")
    _BOUND = 4096  # custom categories remembered as accepted (the fast path's set)

    def __init__(self, custom: Sequence[str] = (), *, accept_any: bool = False) -> None:
        self.accept_any = accept_any
        # Grows with custom categories once accepted (up to _BOUND), so a repeated
        # custom category costs one set lookup, like a known one.
        self.known: set[str] = set(KNOWN_CATEGORIES)
        for c in custom:
            self.known.add(_shape(c, "categories.custom"))

    def normalise(self, category: object) -> str:
        """The stored form of ``category``; InvalidOperation naming it if refused."""
        c = _shape(category, "category")
        if c in self.known:
            return c
        if not self.accept_any and (near := near_known_category(c)) is not None:
            raise InvalidOperation(
                "category",
                f"{category!r} is not a known category; did you mean {near!r}? (to keep it as a"
                " custom category, list it in categories.custom or set categories.accept_any)",
            )
        if len(self.known) < len(KNOWN_CATEGORIES) + self._BOUND and c == category:
            self.known.add(c)
        return c


def _shape(category: object, field: str) -> str:
    if isinstance(category, MemoryCategory):
        return category.value
    if type(category) is not str:
        what = "a str subclass" if isinstance(category, str) else type(category).__name__
        raise InvalidOperation(field, f"must be a str, got {what}")
    c = category.lower()
    if c in KNOWN_CATEGORIES or _CUSTOM_CATEGORY.fullmatch(c):
        return c
    raise InvalidOperation(
        field, f"{category!r} is not a known category and does not match [a-z0-9_.-]{{1,64}}"
    )


def normalise_category(category: object) -> str:
    """Lower-case ``category`` and check its shape (a read's filter: no typo check)."""
    return _shape(category, "category")


DEFAULT_CATEGORIES = CategoryRules()
ANY_CATEGORY = CategoryRules(accept_any=True)

_PRIORITY_BY_NAME: dict[object, Priority] = {p.value: p for p in Priority}


def normalise_priority(priority: object, category: str) -> Priority:
    if priority is None:
        return _HIGH if category in _URGENT else _MEDIUM
    # StrEnum members hash and compare like their values, so one lookup serves both.
    found = _PRIORITY_BY_NAME.get(priority) if isinstance(priority, str) else None
    if found is None and isinstance(priority, str):
        found = _PRIORITY_BY_NAME.get(priority.lower())
    if found is not None:
        return found
    raise InvalidOperation(
        "priority", f"{priority!r} is not one of critical, high, medium, low"
    )


def check_content(content: object, max_bytes: int) -> None:
    if type(content) is not str:
        what = "a str subclass" if isinstance(content, str) else type(content).__name__
        raise InvalidOperation("content", f"must be a str, got {what}")
    if not content or content.isspace():
        raise InvalidOperation("content", "must not be empty")
    _check_text(content, "content")
    # A str of n code points is at most 4n UTF-8 bytes: encode only near the limit.
    if len(content) * 4 > max_bytes:
        size = len(content.encode("utf-8"))
        if size > max_bytes:
            raise InvalidOperation(
                "content", f"is {size} bytes in UTF-8, more than max_content_bytes {max_bytes}"
            )


def check_json(value: object, path: str, depth: int = 0) -> Any:
    """``value`` as plain JSON (dicts, lists, finite numbers, str keys), or InvalidOperation.

    Mappings become dicts and tuples lists (what the journal gives back); a str
    subclass other than an enum member is refused, as is nesting deeper than
    MAX_METADATA_DEPTH (also what stops a structure that contains itself). A plain
    dict or list whose items need no change is returned as it is, not copied.
    """
    t = type(value)
    if t is str:
        _check_text(value, path)  # type: ignore[arg-type]  # a str, by its type
        return value
    if value is None or t is bool:
        return value
    if t is int:
        if not -(2**63) <= value < 2**64:  # type: ignore[operator]  # an int, by its type
            raise InvalidOperation(path, f"integer {value} does not fit in 64 bits")
        return value
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]  # a float, by its type
            raise InvalidOperation(path, f"{value} is not a finite number")
        return value
    if t is dict or t is list or isinstance(value, (Mapping, list, tuple)):
        if depth >= MAX_METADATA_DEPTH:
            raise InvalidOperation(path, f"is nested more than {MAX_METADATA_DEPTH} deep")
        if isinstance(value, Mapping):
            return _check_mapping(value, path, depth)
        seq: Sequence[Any] = value  # type: ignore[assignment]  # a list or tuple, checked above
        items = [check_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(seq)]
        same = t is list and all(a is b for a, b in zip(items, seq, strict=True))
        return value if same else items
    return _check_other(value, path, depth)


def _check_mapping(value: Mapping[Any, Any], path: str, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    same = type(value) is dict
    for k, v in value.items():
        if type(k) is not str:
            if not isinstance(k, enum.Enum) or not isinstance(k, str):
                raise InvalidOperation(f"{path}[{k!r}]", "keys must be str")
            k, same = str.__str__(k), False
        _check_text(k, f"{path}[{k!r}]")
        out[k] = c = check_json(v, f"{path}.{k}", depth + 1)
        same = same and c is v
    return value if same else out  # type: ignore[return-value]  # a dict[str, Any] when same


def _check_other(value: object, path: str, depth: int) -> Any:
    """Subclasses of the JSON types: enum members as their values, others refused or converted."""
    if isinstance(value, enum.Enum) and type(value.value) in (str, int):
        return check_json(value.value, path, depth)
    if isinstance(value, str):
        raise InvalidOperation(path, f"{type(value).__name__} is a str subclass; pass str(value)")
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return check_json(int(value), path, depth)
    if isinstance(value, float):
        return check_json(float(value), path, depth)
    raise InvalidOperation(path, f"{type(value).__name__} is not JSON (use str, number, bool, None, list, dict)")


def _flat_json(metadata: dict[Any, Any]) -> bool:
    """True for the common shape: plain ASCII-or-UTF-8 str keys, plain scalar values."""
    for k, v in metadata.items():
        t = type(v)
        if type(k) is not str or not (k.isascii() or _surrogate_free(k)):
            return False
        if t is str:
            if v.isascii() or _surrogate_free(v):
                continue
            return False
        if t is bool or v is None:
            continue
        if t is int and -(2**63) <= v < 2**64:
            continue
        if t is float and math.isfinite(v):
            continue
        return False
    return True


def check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if type(metadata) is dict and _flat_json(metadata):
        return dict(metadata)
    if not isinstance(metadata, Mapping):
        raise InvalidOperation("metadata", f"must be a mapping, got {type(metadata).__name__}")
    out: dict[str, Any] = check_json(metadata, "metadata")
    return dict(out) if out is metadata else out  # the caller's dict is never the one stored


def check_tags(tags: object) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (Sequence, set, frozenset)):
        raise InvalidOperation("tags", f"must be a sequence of str, got {type(tags).__name__}")
    out = tuple(tags)
    if len(out) > MAX_TAGS:
        raise InvalidOperation("tags", f"has {len(out)} tags, at most {MAX_TAGS} allowed")
    for i, t in enumerate(out):
        if type(t) is not str or not t or len(t) > MAX_TAG_CHARS:
            raise InvalidOperation(f"tags[{i}]", f"must be a non-empty str of at most {MAX_TAG_CHARS} characters, got {t!r}")
        _check_text(t, f"tags[{i}]")
    return out


def check_project(project: object) -> str | None:
    if project is None:
        return None
    if type(project) is not str or not project or len(project) > MAX_PROJECT_CHARS:
        raise InvalidOperation("project", f"must be None or a non-empty str of at most {MAX_PROJECT_CHARS} characters, got {project!r}")
    _check_text(project, "project")
    return project


def validate(
    category: object,
    content: object,
    metadata: object,
    priority: object,
    tags: object,
    project: object,
    max_content_bytes: int,
    categories: CategoryRules = DEFAULT_CATEGORIES,
) -> tuple[str, str, dict[str, Any], Priority, tuple[str, ...], str | None]:
    """Check and normalise collect()'s arguments; raise InvalidOperation naming the field.

    The checks are the ``check_*`` functions; the conditions inline here only pick
    the common case (a known category, short ASCII content) that needs none of them.
    """
    cat = category if type(category) is str and category in categories.known else categories.normalise(category)
    if (type(content) is not str or not content or len(content) * 4 > max_content_bytes
            or not content.isascii() or content.isspace()):
        check_content(content, max_content_bytes)
    return (
        cat,
        content,  # type: ignore[return-value]  # checked above
        {} if metadata is None else check_metadata(metadata),
        # the default inline (as in normalise_priority): this is collect()'s hot path
        (_HIGH if cat in _URGENT else _MEDIUM) if priority is None
        else normalise_priority(priority, cat),
        () if tags == () else check_tags(tags),
        None if project is None else check_project(project),
    )
