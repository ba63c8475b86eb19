"""Peers without a coordinator: experiment specs, topologies and mixing weights, the wire format,
the ZeroMQ transport and handshake, discovery, and the loopback launcher.

Imports only firmware_profiles from this project.
"""
