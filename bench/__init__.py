"""Benchmarks and the fleet simulator: programs that print their figures (not tests)."""
