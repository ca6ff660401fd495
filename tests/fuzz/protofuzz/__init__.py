"""A protocol fuzzer for streamlog (issue 8): generators of valid requests for
every method, mutators that break them, and an oracle built on docs/protocol.md.

Run from the pytest suite (tests/fuzz/) or by hand, longer, with a seed:
C{python tests/fuzz/run_fuzz.py --seed 7 --requests 200000} (see its --help).
"""
