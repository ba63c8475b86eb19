"""The NTK predictor: empirical kernels, the linearised dynamics of every registered algorithm
(discrete rounds and the gradient flow with Phi(t, t0)), stability, forecasts and tuning.
"""
