"""Config loading (memwal/_config.py): the original framework's YAML, TOML, env, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from memwal import Config, ConfigError, load_config

SEED_YAML = """\
memory:
  async_collection:
    enabled: true
    batch_size: 10
    batch_timeout: 30
    max_queue_size: 1000
    max_retries: 3
    retry_delay: 1.0

  cache:
    enabled: true
    max_size: 1000
    ttl_seconds: 300

  performance:
    operation_timeout: 15.0
    max_concurrent_ops: 20
    health_check_interval: 60
"""


def test_defaults_need_no_source() -> None:
    assert load_config(env={}) == Config()


def test_the_original_framework_yaml_loads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "memory.yaml"
    path.write_text(SEED_YAML)
    cfg = load_config(path, env={})
    assert cfg.async_collection.batch_size == 10
    assert cfg.async_collection.max_queue_size == 1000
    assert cfg.cache.ttl_seconds == 300.0
    assert cfg.performance.max_concurrent_ops == 20
    assert cfg.performance.health_check_interval == 60.0


def test_the_memory_root_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "memory.yml"
    path.write_text("\n".join(line[2:] for line in SEED_YAML.splitlines()[1:]))
    assert load_config(path, env={}).async_collection.batch_size == 10


def test_toml_loads(tmp_path: Path) -> None:
    path = tmp_path / "memwal.toml"
    path.write_text('[journal]\ndurability = "full"\n[performance]\nhealth_check_interval = 0.2\n')
    cfg = load_config(path, env={})
    assert cfg.journal.durability == "full"
    assert cfg.performance.health_check_interval == 0.2


def test_a_mapping_loads() -> None:
    assert load_config({"cache": {"enabled": False}}, env={}).cache.enabled is False


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"memory": {"async_collection": {"batch_sise": 5}}}, r"^memory\.async_collection\.batch_sise: unknown key$"),
        ({"cach": {}}, r"^cach: unknown key$"),
        ({"cache": {"ttl_seconds": -1}}, r"^cache\.ttl_seconds: Expected `float` > 0"),
        ({"cache": {"ttl_seconds": "300"}}, r"^cache\.ttl_seconds: Expected `float`, got `str`"),
        ({"async_collection": {"on_full": "drop_newest"}}, r"^async_collection\.on_full: Invalid enum value"),
        ({"async_collection": {"retry_delay": 10, "max_retry_delay": 1}},
         r"^async_collection\.retry_delay: 10\.0 is above max_retry_delay 1\.0$"),
        ({"async_collection": {"batch_size": 0}}, r"^async_collection\.batch_size: Expected `int` >= 1"),
        ({"async_collection": {"batch_linger": -0.5}}, r"^async_collection\.batch_linger: Expected `float` >= 0"),
        ({"performance": {"max_inflight_batches": -1}},
         r"^performance\.max_inflight_batches: Expected `int` >= 0"),
        ({"journal": {"durability": "paranoid"}}, r"^journal\.durability: Invalid enum value 'paranoid'"),
        ({"memory": {}, "other": 1}, r"^other: unknown key beside the memory: root$"),
    ],
)
def test_bad_values_name_the_key_path(source: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(source, env={})


def test_environment_overrides_the_file() -> None:
    env = {"MEMWAL_ASYNC_COLLECTION__BATCH_SIZE": "7", "MEMWAL_JOURNAL__DURABILITY": "full"}
    cfg = load_config({"async_collection": {"batch_size": 50}}, env=env)
    assert cfg.async_collection.batch_size == 7
    assert cfg.journal.durability == "full"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEMWAL_CACHE__TTL_SECONDS": "soon"}, r"^MEMWAL_CACHE__TTL_SECONDS: Expected `float`, got `str`"),
        ({"MEMWAL_CACHE__NOPE": "1"}, r"^MEMWAL_CACHE__NOPE: unknown key"),
        ({"MEMWAL_NOPE__X": "1"}, r"^MEMWAL_NOPE__X: unknown section 'nope'"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_missing_file_and_bad_suffix_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", env={})
    ini = tmp_path / "x.ini"
    ini.write_text("")
    with pytest.raises(ConfigError, match=r"x\.ini: config files must end in \.yaml, \.yml or \.toml"):
        load_config(ini, env={})


def test_malformed_yaml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("memory: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path, env={})


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_config({"x": 1}, env={})
