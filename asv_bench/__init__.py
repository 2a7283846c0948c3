"""asv benchmark root (benchmark_dir in asv.conf.json); the suites are in benchmarks/."""
