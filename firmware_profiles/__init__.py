"""Device profiles for edge boards (Raspberry Pi, Jetson, x86 host) and the code that applies them.

``profile`` loads and validates the TOML profiles in ``profiles/``; ``apply`` sets threads and
estimates memory and time per round; ``emulation`` makes a host behave like a board (link
shaping from the real message sizes, compute padding); ``calibrate`` measures this machine.
Stands on coordinator_free (docs/design.md, "Layers").
"""
from firmware_profiles.apply import (apply_threads, check_fits, estimate_memory,
                                     estimate_round_time)
from firmware_profiles.emulation import ComputeThrottle, LinkShaper, compute_pad, host_gflops
from firmware_profiles.profile import Profile, list_profiles, load_profile

__all__ = ["Profile", "load_profile", "list_profiles", "apply_threads",
           "estimate_memory", "check_fits", "estimate_round_time", "LinkShaper",
           "ComputeThrottle", "compute_pad", "host_gflops"]
