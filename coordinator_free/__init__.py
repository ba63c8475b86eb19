"""Peers without a coordinator, and the common base of the project: ``common/`` (typed errors, file
I/O, the config schema), topologies and mixing weights, the wire format, the gossip interface and
its ZeroMQ transport, CurveZMQ keys and allow-lists, discovery, and the process launcher behind loopback.

The lowest layer: it imports nothing from the other packages (docs/design.md, "Layers").
"""
