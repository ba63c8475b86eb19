"""The on-device learner: models, kernel backends, the DGD/ATC/CTA rules, local data and the training loop.

Board runtime: imports numpy, scipy, pyzmq, networkx and onnxruntime only, never torch.
"""
