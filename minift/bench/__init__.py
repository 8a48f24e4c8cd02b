"""Benchmarks: tables of measured time, printed by ``minift bench ...``; never timed tests."""
