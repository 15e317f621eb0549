"""Coverage-guided fuzzing of every parser that reads untrusted bytes (issue #7).

A test and tool folder like ``bench/``, not a production package. Each module in
``fuzz/targets/`` is one target: a ``check(data)`` that feeds the bytes to the real
parser the way the device or the back office does, lets through only the parser's
documented error types (each with a message naming the problem), and raises anything
else — the *defect*. The same ``check`` runs under atheris (``python -m fuzz.run``) and
replays the kept crash inputs in ``make test`` (tests/fuzz/test_fuzz_regressions.py).
See docs/RELIABILITY.md, "Fuzzing".
"""
