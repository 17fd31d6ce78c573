"""The SQLite WAL journal: its schema and migrations, and ``Journal``, one class composed
of its jobs (append and back-pressure on the caller's thread; lease and settle; maintenance;
reads) around a shared connection holder (``base``) and the row codec (``rows``).

Imports only ``_core``.
"""
