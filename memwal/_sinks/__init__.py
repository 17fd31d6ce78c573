"""Where memories go: the ``Sink`` contract and ``DeliveryReport``, ``SQLiteSink``,
``Mem0Sink`` (aiohttp, loaded on first use) and ``FallbackSink``.

Imports ``_core`` and ``_policy``.
"""
