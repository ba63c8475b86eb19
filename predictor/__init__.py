"""The NTK predictor: empirical kernels, the linearised dynamics of every registered algorithm
(discrete rounds and the gradient flow with Phi(t, t0)), stability, forecasts and tuning; also the
``p2pntk`` CLI (``cli.py`` and one module per command in ``commands/``).
"""
