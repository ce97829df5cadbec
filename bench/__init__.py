"""Benchmarks: programs that print their figures (not tests)."""
