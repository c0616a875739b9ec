"""Benchmark scripts (not part of the library or the default test run); see benchmarks/README.md."""
