"""jobworker's benchmarks: ``scripts/bench`` (``python -m benchmarks``)."""
