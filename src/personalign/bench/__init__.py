"""Benchmarks: every method through the one protocol, on the same users and questions."""
