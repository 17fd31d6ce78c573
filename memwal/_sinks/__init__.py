"""Backends that receive delivered operations."""
