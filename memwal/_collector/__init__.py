"""The collectors users hold: ``AsyncMemoryCollector`` (collect, the consumer's
lifecycle, reads, flush, stats, health, tuning) and ``MemoryCollector``, its thread-safe
synchronous facade.

Imports every layer below it; only ``memwal/__init__.py`` imports it.
"""
