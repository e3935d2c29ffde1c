"""The benchmark suite, imported as ``sadp_data.bench`` and run by ``sadp-data bench [SUITE ...]``.

Every figure the project claims comes from a suite here (``loader``, ``kernels``, ``store``,
``score``, ``train``; ``suite`` runs them and records the machine and command with each result,
``report`` turns a folder of results into ``REPORT.md`` with plots); results of real runs live in
``bench/results/``.
"""
