"""What runs on a board: the experiment spec, models and kernel backends, the algorithm registry
(DGD, ATC, CTA, GT), the one round loop, local data and its summaries, node files, the agent process,
its progress report, and the simulator. ``python -m agent NODE.toml`` starts one.

Board runtime: imports numpy, scipy, pyzmq, networkx and onnxruntime only, never torch.
"""
