"""The NTK predictor: empirical kernels, linearised DGD/ATC/CTA dynamics (discrete rounds and the
gradient flow with Phi(t, t0)), stability, forecasts and tuning; also the ``p2pntk`` CLI.
"""
