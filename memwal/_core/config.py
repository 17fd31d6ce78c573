"""Config: small frozen Structs per concern, profiles, and load_config().

Precedence, lowest first: defaults, the profile preset, the file or mapping, then
``MEMWAL_<SECTION>__<KEY>`` environment variables. Unknown keys and bad values raise
ConfigError naming the key path; nothing is ever silently replaced by a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import ConfigError

__all__ = [
    "PROFILES",
    "AsyncCollectionConfig",
    "CacheConfig",
    "CategoriesConfig",
    "CircuitBreakerConfig",
    "Config",
    "FallbackConfig",
    "HealthConfig",
    "JournalConfig",
    "PerformanceConfig",
    "load_config",
]

Seconds = Annotated[float, Meta(ge=0)]
PositiveSeconds = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]


class AsyncCollectionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The original framework's ``async_collection`` section, plus back-pressure.

    ``batch_timeout`` is the longest an operation waits for its batch to fill; the
    consumer is greedy, so under light load it does not wait at all. While operations
    keep arriving it leases at most once per ``batch_linger`` unless a whole batch
    waits (or a flush does), so batches fill under load and a lone operation after a
    quiet spell still leaves at once; 0 leases whenever a batch settles. The linger
    never exceeds ``batch_timeout``.
    """

    enabled: bool = True
    batch_size: PositiveInt = 500
    batch_timeout: Seconds = 30.0
    batch_linger: Seconds = 0.01
    max_queue_size: PositiveInt = 100_000
    max_retries: Annotated[int, Meta(ge=0)] = 8
    retry_delay: Seconds = 1.0
    max_retry_delay: Seconds = 300.0
    on_full: Literal["block", "reject", "drop_oldest"] = "block"
    collect_timeout: Seconds = 5.0
    rate_limit: Annotated[float, Meta(gt=0)] | None = None
    adaptive_batching: bool = False
    min_batch_size: PositiveInt = 1
    max_batch_size: PositiveInt = 1000

    def __post_init__(self) -> None:
        if self.retry_delay > self.max_retry_delay:
            raise ValueError(
                f"retry_delay: {self.retry_delay} is above max_retry_delay {self.max_retry_delay}"
            )
        if not self.min_batch_size <= self.batch_size <= self.max_batch_size:
            raise ValueError(
                f"batch_size: {self.batch_size} is outside min_batch_size..max_batch_size"
                f" ({self.min_batch_size}..{self.max_batch_size})"
            )


class CacheConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The read cache (LRU with TTL); ``max_bytes`` optionally bounds its footprint."""

    enabled: bool = True
    max_size: PositiveInt = 1000
    ttl_seconds: PositiveSeconds = 300.0
    max_bytes: PositiveInt | None = None


class PerformanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Timeouts and concurrency of sink calls, and the health-check period.

    ``max_inflight_batches`` is how many leased batches the consumer delivers at once:
    more hides a remote sink's round trips (a mem0 lookup plus the adds), fewer keeps
    fewer rows leased. 0 makes this collector collect and read only: another process's
    collector on the same journal delivers (the journal is shared by design), and
    ``flush_queue`` waits for that process. Set on a live collector, 0 stops leasing (a
    batch already leased still goes out).

    ``adaptive_concurrency`` lets a remote sink (Mem0Sink) find how many requests the
    server handles at once from its latency and overload answers, between 1 and
    ``max_concurrent_ops``; off, it keeps ``max_concurrent_ops`` requests in flight.
    """

    operation_timeout: PositiveSeconds = 15.0
    max_concurrent_ops: PositiveInt = 128
    adaptive_concurrency: bool = True
    max_inflight_batches: NonNegativeInt = 4
    health_check_interval: PositiveSeconds = 60.0


class CircuitBreakerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One breaker per sink; defaults are the original framework's."""

    failure_threshold: PositiveInt = 5
    recovery_timeout: PositiveSeconds = 60.0
    test_requests: PositiveInt = 3
    success_threshold: PositiveInt = 2


class JournalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """memwal's own settings for the journal file.

    ``durability``: ``normal`` survives any crash of the process; ``full`` also
    survives power loss (an fsync per commit).
    """

    durability: Literal["normal", "full"] = "normal"
    lease_seconds: PositiveSeconds = 60.0
    busy_timeout: PositiveSeconds = 5.0
    retention_seconds: Seconds = 0.0
    poll_interval: PositiveSeconds = 0.05
    shutdown_timeout: Seconds = 10.0
    max_content_bytes: PositiveInt = 1 << 20
    checkpoint_pages: PositiveInt = 4000


class FallbackConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Re-sending operations held by a fallback sink to the primary once it recovers."""

    reconcile: bool = True
    reconcile_rate: Annotated[float, Meta(gt=0)] = 50.0


class HealthConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds that move health() from ok to degraded or failing and fire alerts."""

    max_pending_age: PositiveSeconds = 300.0
    max_depth_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.8
    max_failure_rate: Annotated[float, Meta(ge=0, le=1)] = 0.5
    alert_on_breaker_open: bool = True
    alert_on_dead: bool = True
    metrics: bool = True
    window_seconds: PositiveSeconds = 60.0


class CategoriesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which custom categories ``collect`` accepts besides the known ones.

    Any category matching ``[a-z0-9_.-]{1,64}`` is kept, except one a single edit away
    from a known category (``bugs``, ``erorr``): that is refused as a likely typo
    ("did you mean 'bug'?") unless listed in ``custom`` or ``accept_any`` is true.
    Categories are lower-cased, so ``Bug`` is ``bug``.
    """

    custom: tuple[str, ...] = ()
    accept_any: bool = False

    def __post_init__(self) -> None:
        for c in self.custom:
            if not _CATEGORY.fullmatch(c):
                raise ValueError(f"custom: {c!r} must be lower-case and match [a-z0-9_.-]{{1,64}}")


_CATEGORY = re.compile(r"[a-z0-9_.-]{1,64}")


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of memwal's settings.

    Example:
        >>> cfg = load_config({"async_collection": {"batch_size": 50}})
        >>> cfg.async_collection.batch_size
        50
    """

    async_collection: AsyncCollectionConfig = AsyncCollectionConfig()
    cache: CacheConfig = CacheConfig()
    performance: PerformanceConfig = PerformanceConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    journal: JournalConfig = JournalConfig()
    fallback: FallbackConfig = FallbackConfig()
    health: HealthConfig = HealthConfig()
    categories: CategoriesConfig = CategoriesConfig()


# Presets sit under the file's values. Why the numbers differ:
# - development: fail fast and see everything: short timeouts, few retries, a health
#   check every 5 s, breaker recovers after 10 s so a restarted local mem0 is used soon.
# - production: the defaults, plus fsync per commit (power loss on a VM is real) and a
#   longer lease so a slow mem0 call is never delivered twice.
# - high-throughput: big batches and more concurrency; adaptive batching finds the
#   sink's sweet spot; WAL checkpoints less often.
# - low-resource: small batches, little concurrency, a small cache, for edge devices.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "development": {
        "async_collection": {"max_retries": 3, "retry_delay": 0.5, "max_retry_delay": 10.0},
        "performance": {"operation_timeout": 5.0, "health_check_interval": 5.0},
        "circuit_breaker": {"recovery_timeout": 10.0},
    },
    "production": {
        "journal": {"durability": "full", "lease_seconds": 120.0},
        "performance": {"health_check_interval": 30.0},
    },
    "high-throughput": {
        "async_collection": {"batch_size": 1000, "max_batch_size": 2000, "adaptive_batching": True},
        "performance": {"max_concurrent_ops": 256},
        "journal": {"checkpoint_pages": 16000},
    },
    "low-resource": {
        "async_collection": {"batch_size": 20, "max_queue_size": 20_000},
        "performance": {"max_concurrent_ops": 8},
        "cache": {"max_size": 200, "max_bytes": 2_000_000},
    },
}

_SECTIONS = tuple(Config.__struct_fields__)
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`")
_FIELD = re.compile(r"^(?P<key>[a-z_]+): (?P<msg>.*)$", re.DOTALL)  # from __post_init__


def translate_error(exc: msgspec.ValidationError, root: str) -> ConfigError:
    m = _AT.match(str(exc))
    assert m is not None
    msg, path = m["msg"], (m["path"] or "").lstrip(".")
    unknown = _UNKNOWN.match(msg)
    if unknown:
        path, msg = ".".join(p for p in (path, unknown["key"]) if p), "unknown key"
    elif field := _FIELD.match(msg):
        path, msg = ".".join(p for p in (path, field["key"]) if p), field["msg"]
    full = ".".join(p for p in (root, path) if p)
    return ConfigError(msg, path=full)


def _check_plain(value: Any, path: str, depth: int = 0) -> None:
    """ConfigError naming the key path of a non-str key, a lone surrogate or runaway nesting."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError("has a lone surrogate, which UTF-8 cannot store", path=path or "(top level)") from None
    elif isinstance(value, Mapping | list | tuple):
        if depth >= 64:
            raise ConfigError("is nested more than 64 deep", path=path or "(top level)")
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for k, v in items:
            if isinstance(value, Mapping):
                if not isinstance(k, str):
                    raise ConfigError(f"keys must be str, got {k!r}", path=path or "(top level)")
                _check_plain(k, path, depth + 1)
            _check_plain(v, ".".join(p for p in (path, str(k)) if p), depth + 1)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


# Text, not a path: a line break, a YAML "key:" or TOML "[section]" / "key =" at the start.
_LOOKS_LIKE = (
    ("YAML", re.compile(r"^\s*(memory|[a-z_]+)\s*:(\s|$)")),
    ("TOML", re.compile(r"^\s*(\[[A-Za-z_.]+\]|[A-Za-z_]+\s*=)")),
)


def _as_path(source: str | os.PathLike[str]) -> Path:
    """``source`` as a Path; ConfigError in one line when it is config text, not a path."""
    if isinstance(source, str) and not os.path.exists(source):
        if "\x00" in source:
            raise ConfigError("a config file path cannot contain a NUL character")
        for kind, pattern in _LOOKS_LIKE:
            if pattern.match(source):
                raise ConfigError(
                    f"this looks like {kind} text, not a file path: pass a path to a .yaml/.toml"
                    f" file, or the parsed mapping ({'yaml.safe_load' if kind == 'YAML' else 'tomllib.loads'}(text))"
                )
        if "\n" in source:
            raise ConfigError("a config file path cannot contain a line break (was config text passed?)")
    return Path(source)


def _read_file(path: Path) -> Any:
    try:
        text = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a path the OS cannot take at all
        shown = str(path) if len(str(path)) <= 200 else str(path)[:200] + "..."
        raise ConfigError(f"cannot read config file: {getattr(exc, 'strerror', None) or exc}", path=shown) from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return _toml_loads(text.decode("utf-8"))
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
    except Exception as exc:
        raise ConfigError(f"not valid {suffix[1:].upper()}: {exc}", path=str(path)) from exc
    raise ConfigError("config files must end in .yaml, .yml or .toml", path=str(path))


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith("MEMWAL_") or "__" not in name:
            continue
        section, _, key = name[len("MEMWAL_") :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section {section!r}", path=name)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse {raw!r}", path=name) from exc
        _check_plain(value, name)
        out.setdefault(section, {})[key] = value
    return out


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build a Config from a YAML or TOML file, a mapping, or nothing.

    The original framework's tree loads as it is, with or without its ``memory:`` root.
    ``profile`` (or ``MEMWAL_PROFILE``) applies one of PROFILES under the given values.

    Example:
        >>> load_config({"memory": {"cache": {"ttl_seconds": 60}}}).cache.ttl_seconds
        60.0
    """
    env = os.environ if env is None else env
    if source is None:
        data: Any = {}
    elif isinstance(source, Mapping):
        data = source
    elif isinstance(source, str | os.PathLike):
        data = _read_file(_as_path(source))
    else:
        raise ConfigError(
            f"load_config takes a file path, a mapping or None, got {type(source).__name__}"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(f"the top level must be a mapping, got {type(data).__name__}")
    root = ""
    if "memory" in data:
        if len(data) != 1:
            extra = sorted(k for k in data if k != "memory")
            raise ConfigError("unknown key beside the memory: root", path=str(extra[0]))
        root, data = "memory", data["memory"] or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping, got {type(data).__name__}", path="memory")
    profile = profile if profile is not None else env.get("MEMWAL_PROFILE")
    merged: dict[str, Any] = {}
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}", path="profile")
        merged = _deep_merge(merged, PROFILES[profile])
    _check_plain(data, root)
    merged = _deep_merge(merged, data)
    try:
        config = msgspec.convert(merged, Config)
    except msgspec.ValidationError as exc:
        raise translate_error(exc, root) from exc
    overrides = _env_overrides(env)
    if not overrides:
        return config
    try:
        return msgspec.convert(_deep_merge(msgspec.to_builtins(config), overrides), Config)
    except msgspec.ValidationError as exc:
        err = translate_error(exc, "")
        var = "MEMWAL_" + err.path.upper().replace(".", "__", 1)
        raise ConfigError(f"{err.reason} (overrides {err.path})", path=var) from exc


def _toml_loads(text: str) -> Any:
    import tomllib  # here, not at import: `import memwal` stays light

    return tomllib.loads(text)
