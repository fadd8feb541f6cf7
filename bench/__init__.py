"""Benchmarks, run by hand with ``make bench`` (never part of CI's pass/fail).

Each ``bench/bench_*.py`` module has a ``main()`` that prints its figures, with ratios against
a baseline measured in the same run where possible.
"""
