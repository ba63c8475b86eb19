"""A device profile applied to one agent: threads, kernels, will-it-fit, and (in loopback) emulation.

``DeviceHooks.for_node`` loads the node's profile, sets the BLAS/ORT threads, refuses a model that
does not fit the profile's memory budget (before any socket is opened), and, with ``emulate``,
makes this host behave like the board: each send waits as the board's link would
(``ShapedGossip``, from the real encoded message size), and each step is padded to the time the
board's GFLOPS give (firmware_profiles.emulation).
The profile's preferred kernels apply per device; its dtype does not override the spec's
``train.dtype``, because every agent of a swarm must send the same dtype on the wire (a mismatch
is logged instead).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from agent.algorithms import ALGORITHMS
from agent.model import ModelConfig
from agent.spec import DeviceSection, Spec
from firmware_profiles.apply import apply_threads, check_fits, estimate_memory, estimate_round_time
from firmware_profiles.emulation import LinkShaper, ShapedGossip, compute_pad
from firmware_profiles.profile import Profile, load_profile

log = logging.getLogger("p2pntk.agent")


def device_profile(name: str, device: DeviceSection) -> Profile:
    """The named profile, with the spec's [device] link override (link_mbit, latency_ms) if set."""
    profile = load_profile(name)
    changes = {}
    if device.link_mbit:
        changes["bandwidth_mbit"] = float(device.link_mbit)
    if device.latency_ms:
        changes["latency_ms"] = float(device.latency_ms)
    return dataclasses.replace(profile, **changes) if changes else profile


def workload(cfg: ModelConfig, spec: Spec, n_local: int, n_neighbours: int) -> dict:
    """The per-round workload both estimators take (firmware_profiles.apply)."""
    batch = spec.train.batch
    return {"n_params": cfg.num_params, "width": cfg.width if cfg.hidden_layers else 1, "depth": cfg.hidden_layers,
            "d": cfg.d, "k": cfg.k, "batch": n_local if batch == "full" else min(int(batch), n_local),
            "n_neighbours": n_neighbours, "dtype_bytes": np.dtype(spec.train.dtype).itemsize,
            "messages": len(ALGORITHMS[spec.train.algorithm].messages)}


def params_at_width(cfg: ModelConfig):
    """P of this model as a function of its width (for the memory estimate's suggested fix)."""
    return lambda w: dataclasses.replace(cfg, width=w).num_params


THREAD_CAP_VAR = "P2PNTK_THREAD_CAP"  # set by the loopback launcher: BLAS threads an agent may use


class DeviceHooks:
    """What the agent calls: ``kernel_settings``, ``gossip(inner)`` and ``after_step(seconds)``."""

    def __init__(self, profile: Profile, work: dict, emulate: bool, cfg: ModelConfig | None = None) -> None:
        self.profile, self.emulate = profile, emulate
        cap = int(os.environ.get(THREAD_CAP_VAR, "0"))
        ort = apply_threads(dataclasses.replace(profile, threads=min(profile.threads, cap)) if cap else profile)
        self.kernel_settings = {"threads": ort["intra_op_num_threads"], "providers": ort["providers"]}
        check_fits(profile, estimate_memory(profile, **work), params_at_width(cfg) if cfg else None)
        self.estimate = estimate_round_time(profile, **work)
        self.shaper = LinkShaper.from_profile(profile) if emulate else None

    @classmethod
    def for_node(cls, node, cfg: ModelConfig, n_local: int) -> "DeviceHooks | None":
        if not node.profile:
            return None
        n_neighbours = len(node.peers)
        if node.discovery == "zeroconf":
            from coordinator_free.discovery import topology_neighbours
            n_neighbours = len(topology_neighbours(node.spec.network, node.id))
        profile = device_profile(node.profile, node.spec.device)
        hooks = cls(profile, workload(cfg, node.spec, n_local, n_neighbours), node.emulate, cfg)
        if profile.dtype != node.spec.train.dtype:
            log.warning("node %d: profile %s prefers %s but the swarm spec says train.dtype = %s; using the spec's",
                        node.id, profile.name, profile.dtype, node.spec.train.dtype)
        log.info("node %d: profile %s (%s), estimated %.3f s/round%s", node.id, profile.name,
                 profile.compute_device, hooks.estimate["total_s"], " [emulated]" if node.emulate else "")
        return hooks

    @property
    def kernels(self) -> str:
        return self.profile.kernels

    def gossip(self, inner):
        """``inner`` as the board would see it: sends shaped like its link when emulating."""
        return ShapedGossip(inner, self.shaper) if self.shaper else inner

    def after_step(self, step_seconds: float) -> None:
        if self.emulate and (pad := compute_pad(step_seconds, self.estimate["compute_s"])) > 0:
            time.sleep(pad)
