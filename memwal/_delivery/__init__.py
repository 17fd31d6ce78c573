"""The background consumer: lease ready rows, deliver them grouped by category, decide
each row's fate in plain functions (``plan``), settle; housekeeping and reconciliation.

Imports ``_core``, ``_policy``, ``_journal``, ``_sinks`` and ``_observe``.
"""
