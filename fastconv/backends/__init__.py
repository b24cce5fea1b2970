"""Backends: one module per backend, each implementing the same eight primitives.

See :mod:`fastconv.backends.reference` for the primitive set and their contracts.
"""
