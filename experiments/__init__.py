"""The project's studies: benchmarks and pilots that measure what the ``nas`` package does
(latency tables, proxy training, the supernet, the samplers, NetAdapt), one module per study,
their committed results under ``experiments/results/``. It is a package of the checkout, not
of the wheel (``pyproject.toml`` installs ``nas`` only); run a study from the checkout root
as ``python -m experiments.<study> --help``, e.g. ``python -m experiments.proxy_benchmark``.
Shared plumbing (options, set-up, result rows, summaries) lives in :mod:`experiments.harness`.
"""
