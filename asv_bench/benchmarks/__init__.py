"""asv benchmark suites for fastxent (see docs/benchmarking.md).

``cases.py`` is the one table of functions, implementations, shapes and dtypes;
the pytest-benchmark suite in ``benchmarks/`` loads the same file."""
