"""A whole swarm set up from a spec: data split, graph, W, model config and theta_0.

``Swarm.from_spec`` is the single place where a spec becomes arrays; simulate, predict and
loopback all start here, so they train on exactly the same problem.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from agent.data import Problem, make_problem, save_problem
from agent.kernels import make_kernels
from agent.local import LocalLearner, model_config
from agent.model import ModelConfig, init_params
from agent.algorithms import ALGORITHMS
from agent.spec import Spec
from firmware_profiles.apply import check_host_fits
from coordinator_free.topology import swarm_mixing


@dataclass
class Swarm:
    spec: Spec
    problem: Problem
    graph: nx.Graph
    W: np.ndarray          # (N, N) float64
    cfg: ModelConfig
    theta0: np.ndarray     # (P,) float64, the exact draw

    @classmethod
    def from_spec(cls, spec: Spec) -> "Swarm":
        problem = make_problem(spec.data, spec.network.agents)
        graph, W = swarm_mixing(spec.network)
        cfg = model_config(spec.model, problem.X_train.shape[1], problem.Y_train.shape[1])
        check_host_fits(4 * 8 * cfg.num_params, f"model.width = {spec.model.width}, model.depth = {spec.model.depth} "
                                                f"(P = {cfg.num_params:,} parameters)")
        return cls(spec, problem, graph, W, cfg, init_params(cfg, np.float64))

    def check_memory(self) -> None:
        """Refuse a swarm whose N agents' states and messages do not fit this host (simulate holds them all)."""
        itemsize = self.dtype.itemsize
        arrays = len(ALGORITHMS[self.spec.train.algorithm].messages)
        degree = max((d for _, d in self.graph.degree()), default=0)
        check_host_fits(self.n_agents * self.cfg.num_params * itemsize * (3 + arrays * (1 + degree)),
                        f"{self.n_agents} agents x P = {self.cfg.num_params:,} parameters in one process")

    @property
    def n_agents(self) -> int:
        return self.W.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.train.dtype)

    def learners(self, kernels=None) -> list[LocalLearner]:
        """One LocalLearner per agent, in the spec's dtype and kernel backend."""
        train = self.spec.train
        kernels = kernels or make_kernels(train.kernels, self.cfg, self.dtype)
        return [LocalLearner(q, kernels, *self.problem.agent_data(q), self.problem.X_test, self.problem.Y_test,
                             batch=train.batch, seed=self.spec.data.seed)
                for q in range(self.n_agents)]

    def rows(self) -> list[dict[int, float]]:
        """Each agent's mixing row {r: w_qr} (itself and its neighbours), as an agent computes it."""
        return [{r: float(self.W[q, r]) for r in [q, *self.graph.neighbors(q)]} for q in range(self.n_agents)]

    def save_problem(self, path) -> None:
        save_problem(path, self.problem, self.theta0, self.W)
