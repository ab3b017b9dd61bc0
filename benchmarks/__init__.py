"""Reproducible benchmarks for GoLedger; ``python -m benchmarks`` runs them all.

Not part of the test suite. Every script pins the server under test to CPU 0 and
the load generator to CPU 1, alternates candidate and baseline runs, and bounds
every run in time. See ``benchmarks/README.md``.
"""
