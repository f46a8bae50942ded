"""Reproducible performance measurements (`make bench`); results in results/*.json and docs/benchmarks.md."""
