"""Peers without a coordinator: topologies and mixing weights, the wire format, the gossip interface, and a
board transport in three layers: the peer table (``membership``, no socket, no clock), the protocol over any
link (``protocol``, ``exchange``, ``flooding``, ``drops``) and the links (``transport``: ZeroMQ with CurveZMQ
keys and allow-lists; ``tcp_transport``: plain TCP); and discovery.

On ``common`` only (docs/design.md, "Layers"). Board runtime: never imports torch.
"""
