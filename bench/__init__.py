"""The benchmark suite, imported as ``sadp_data.bench`` and run by ``sadp-data bench <suite>``.

Every figure the project claims comes from a suite here; results of real runs live in
``bench/results/``.
"""
