"""Device profiles for edge boards (Raspberry Pi, Jetson, x86 host) and the code that applies them.

The lowest layer of p2p-ntk: it imports nothing from the other packages.
"""
from firmware_profiles.errors import UserError

__all__ = ["UserError"]
