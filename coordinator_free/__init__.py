"""Peers without a coordinator, and the common base of the project: ``common/`` (typed errors, file
I/O, the config schema), experiment specs, topologies and mixing weights, the wire format, the
gossip interface and its ZeroMQ transport, discovery, and the process launcher behind loopback.

The lowest layer: it imports nothing from the other packages (docs/design.md, "Layers").
"""
