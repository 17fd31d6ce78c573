"""Reading memories back: the LRU+TTL cache and the reader that merges undelivered
journal rows (read-your-writes) with the sink's answers.

Imports ``_core``, ``_journal`` and ``_sinks``.
"""
