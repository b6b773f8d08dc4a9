"""vaeserve benchmarks: `python -m bench` (or `make bench`) prints a table measured in one run."""
