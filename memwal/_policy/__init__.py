"""Pure delivery policies, each with an injected clock: retry backoff, the circuit
breaker (a state table), the token bucket, adaptive batch sizing, live config changes.

Imports only ``_core``.
"""
