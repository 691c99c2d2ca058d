"""Measurement and proof: `make bench` (BENCHMARKS.md) and `make pi-check`.

Kept out of the installed wheel: users get train, export and edge; these
modules time and prove them and run from a checkout (`python -m bench`).
"""
