"""A power-loss simulator for the test suite: an LD_PRELOAD shim (shim.c) and its undo (undo.py)."""
