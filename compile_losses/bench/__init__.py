"""Benchmarks tooling: run the pytest-benchmark suite in ``tests/benchmarks`` (:mod:`.runner`),
read its JSON and the ratios measured within a run (:mod:`.results`), write the summary table and
the plot (:mod:`.report`), and gate a run against a baseline (:mod:`.gate`). ``compile-losses
bench`` is the command-line face of all four."""
