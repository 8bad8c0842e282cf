"""Benchmarks: `python -m benchmarks.run`; workload definitions in benchmarks.workloads."""
