"""Backends: one module per backend, each implementing the same seven primitives.

See :mod:`fastconv.backends.reference` for the primitive set and their contracts.
"""
