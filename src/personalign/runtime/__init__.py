"""Shared runtime: data records and loaders, LLM backends, metrics, storage, embedded models."""
