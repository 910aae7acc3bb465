"""Drivers of real `ecad serve` processes, shared by the tests, the benchmarks and the load tests.

Not part of serving and not installed: run from the repository root (`python -m ...`, pytest).
"""
