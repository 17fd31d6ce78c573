"""Foundations, no I/O: the error tree, configuration, and operations and memories
(validation, ids, the journal codec).

Imports nothing else of memwal; every other layer may import it.
"""
