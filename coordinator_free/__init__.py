"""Peers without a coordinator: topologies and mixing weights, the wire format, the gossip interface and
its ZeroMQ transport, CurveZMQ keys and allow-lists, and discovery.

Second floor, on ``common`` only (docs/design.md, "Layers"). Board runtime: never imports torch.
"""
