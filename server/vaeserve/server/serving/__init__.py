"""A served model: an engine with its limits, defaults and batching, on the process-wide work queue."""
