"""One module per fuzz target; each exposes ``check(data)`` (see fuzz/harness.py)."""
