"""Observation: in-process counters and the ``stats()`` snapshot, ``health()`` and
alerts, Prometheus text.

Imports ``_core``, ``_policy``, ``_journal``, ``_sinks`` and ``_reads``.
"""
