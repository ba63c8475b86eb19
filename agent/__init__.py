"""The on-device learner: the experiment spec, models and kernel backends, the algorithm registry
(DGD, ATC, CTA, GT), the one round loop, local data, node files, the agent process, the simulator
and the loopback swarm.

Board runtime: imports numpy, scipy, pyzmq, networkx and onnxruntime only, never torch.
"""
