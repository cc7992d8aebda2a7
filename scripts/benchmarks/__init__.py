"""The CPU benchmarks of scripts/benchmark.py, one module per section, and what they share
(common.py); scripts/device_check/ reuses common.py and the plain loops."""
