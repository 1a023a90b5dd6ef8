"""Benchmarks: opinionqa-individual (Fermi and its baselines) with report folders."""
