"""utcp's benchmarks: the emulated links (:mod:`bench.netem`) and the harness on top."""
