"""Benchmarks for the LLM Gateway; run them as scripts, e.g. `python bench/overhead.py`."""
