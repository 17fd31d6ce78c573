"""The public surface: memwal.__all__ is sorted, complete and importable."""

from __future__ import annotations

import memwal


def test_all_is_sorted_and_every_name_exists() -> None:
    assert memwal.__all__ == sorted(memwal.__all__)
    for name in memwal.__all__:
        assert hasattr(memwal, name), name


def test_every_public_name_is_in_all() -> None:
    public = {n for n in vars(memwal) if not n.startswith("_") and not isinstance(getattr(memwal, n), type(memwal))}
    public.discard("annotations")
    assert public <= set(memwal.__all__)


def test_py_typed_ships() -> None:
    from importlib.resources import files

    assert files("memwal").joinpath("py.typed").is_file()
