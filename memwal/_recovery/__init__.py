"""What ``memwal-replay`` calls, one function per subcommand: inspect, requeue, export
and import (``inspect``), redelivery (``redrive``), verify, repair, salvage and compact
(``repair``).

Imports ``_core``, ``_policy``, ``_journal``, ``_sinks``, ``_observe`` and ``_delivery``.
"""
