"""Benchmarks for the performance targets in DESIGN.md section 6 (`python -m bench.<name>`)."""
