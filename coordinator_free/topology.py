"""Communication graphs and mixing weights: plain functions of a networkx graph.

``build_graph(name, n, seed)`` parses the spec's topology string; ``mixing_matrix(G, rule)``
builds W from the per-node rule ``mixing_row``, the same function an agent calls with only its
neighbours' degrees (so the swarm and every device agree on W bit for bit).
"""
from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np

from coordinator_free.common.errors import UserError

WEIGHT_RULES = ("metropolis", "max-degree", "lazy-metropolis")


def exponential_graph(n: int) -> nx.Graph:
    """Each node q links to the nodes 2^i hops away (q +- 2^i mod n), for 2^i < n."""
    G = nx.empty_graph(n)
    hop = 1
    while hop < n:
        G.add_edges_from((q, (q + hop) % n) for q in range(n) if (q + hop) % n != q)
        hop *= 2
    return G


def grid_graph(n: int) -> nx.Graph:
    """The most nearly square r x c grid with r * c = n, nodes numbered row-major."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    G = nx.grid_2d_graph(rows, n // rows)
    return nx.convert_node_labels_to_integers(G, ordering="sorted")


def erdos_renyi_connected(n: int, p: float, seed: int, tries: int = 1000) -> nx.Graph:
    """G(n, p) drawn again with seeds seed, seed+1, ... until it is connected."""
    for t in range(tries):
        G = nx.gnp_random_graph(n, p, seed=seed + t)
        if n == 1 or nx.is_connected(G):
            return G
    raise UserError(f"network.topology = erdos-renyi:{p}: no connected graph on {n} agents in {tries} draws; "
                    "raise P")


def graph_from_file(path: str, n: int) -> nx.Graph:
    """An edge list (``u v`` per line, # comments) or a GraphML file, nodes relabelled 0..n-1."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"network.topology = file:{path}: file does not exist")
    try:
        if p.suffix.lower() in (".graphml", ".xml"):
            G = nx.Graph(nx.read_graphml(p))
        else:
            G = nx.read_edgelist(p, nodetype=int, comments="#", data=False)
    except Exception as err:  # networkx raises many types for malformed files
        raise UserError(f"network.topology = file:{path}: cannot read graph ({err})") from None
    try:
        G = nx.relabel_nodes(G, {v: int(v) for v in G.nodes})
    except (TypeError, ValueError):
        G = nx.convert_node_labels_to_integers(G, ordering="sorted")
    if sorted(G.nodes) != list(range(len(G))):
        G = nx.convert_node_labels_to_integers(G, ordering="sorted")
    if G.number_of_nodes() != n:
        raise UserError(f"network.topology = file:{path}: graph has {G.number_of_nodes()} nodes "
                        f"but network.agents = {n}")
    return G


def build_graph(topology: str, n: int, seed: int = 0) -> nx.Graph:
    """The spec's topology string -> a connected, undirected graph on nodes 0..n-1.

    Raises UserError if the graph cannot be built or is not connected.
    """
    name, _, arg = topology.partition(":")
    if name == "cycle":
        G = nx.cycle_graph(n) if n >= 3 else nx.path_graph(n)
    elif name == "star":
        G = nx.star_graph(n - 1)
    elif name == "complete":
        G = nx.complete_graph(n)
    elif name == "path":
        G = nx.path_graph(n)
    elif name == "grid":
        G = grid_graph(n)
    elif name == "exponential":
        G = exponential_graph(n)
    elif name == "erdos-renyi":
        G = erdos_renyi_connected(n, float(arg), seed)
    elif name == "random-regular":
        d = int(arg)
        if d >= n or (n * d) % 2:
            raise UserError(f"network.topology = {topology}: a {d}-regular graph on {n} agents does not exist "
                            "(need D < agents and agents * D even)")
        G = nx.random_regular_graph(d, n, seed=seed)
        tries = 1
        while not nx.is_connected(G) and tries < 1000:
            G = nx.random_regular_graph(d, n, seed=seed + tries)
            tries += 1
    elif name == "file":
        G = graph_from_file(arg, n)
    else:
        raise UserError(f"network.topology = {topology!r}: unknown topology")
    G.remove_edges_from(nx.selfloop_edges(G))
    if n > 1 and not nx.is_connected(G):
        raise UserError(f"network.topology = {topology}: the graph on {n} agents is not connected")
    return G


def mixing_row(rule: str, degree: int, neighbour_degrees: dict[int, int], self_id: int,
               n_agents: int | None = None) -> dict[int, float]:
    """Agent ``self_id``'s row of W from its own and its neighbours' degrees: {r: w_qr}, rows sum to 1.

    metropolis:      w_qr = 1 / (1 + max(deg_q, deg_r)), remainder on the diagonal (symmetric).
    lazy-metropolis: half of metropolis off the diagonal (all eigenvalues >= 0).
    max-degree:      w_qr = 1 / n_agents (needs ``n_agents``, symmetric; the diagonal takes the rest).
    """
    if rule == "metropolis":
        off = {r: 1.0 / (1 + max(degree, dr)) for r, dr in neighbour_degrees.items()}
    elif rule == "lazy-metropolis":
        off = {r: 0.5 / (1 + max(degree, dr)) for r, dr in neighbour_degrees.items()}
    elif rule == "max-degree":
        if not n_agents:
            raise ValueError("max-degree weights need the number of agents")
        off = {r: 1.0 / n_agents for r in neighbour_degrees}
    else:
        raise UserError(f"network.weights = {rule!r}: expected one of {', '.join(WEIGHT_RULES)}")
    row = {self_id: 1.0 - math.fsum(off.values())}
    row.update(off)
    return row


def mixing_matrix(G: nx.Graph, rule: str = "metropolis") -> np.ndarray:
    """The N x N float64 mixing matrix W of graph G, built row by row with ``mixing_row``."""
    n = G.number_of_nodes()
    W = np.zeros((n, n))
    deg = dict(G.degree())
    for q in range(n):
        for r, w in mixing_row(rule, deg[q], {r: deg[r] for r in G.neighbors(q)}, q, n).items():
            W[q, r] = w
    return W


def live_row(row: dict[int, float], live: set[int], self_id: int) -> dict[int, float]:
    """Move the weight of suspected neighbours (not in ``live``) to self.

    If both ends of every dead edge do this, W stays symmetric and doubly stochastic on the live graph.
    """
    out = {r: w for r, w in row.items() if r == self_id or r in live}
    out[self_id] = out.get(self_id, 0.0) + math.fsum(w for r, w in row.items() if r != self_id and r not in live)
    return out


def check_mixing(W: np.ndarray, G: nx.Graph | None = None, doubly: bool = True, atol: float = 1e-12) -> dict:
    """Validate W and return its properties.

    Checks rows sum to 1, entries >= 0, support within the graph's edges + diagonal and, if
    ``doubly``, symmetry and columns summing to 1. Raises ValueError on a violation.
    Returns {"row_stochastic", "doubly_stochastic", "symmetric", "spectral_gap"}.
    """
    n = W.shape[0]
    if W.shape != (n, n):
        raise ValueError(f"W must be square, got {W.shape}")
    if np.any(W < -atol):
        raise ValueError("W has negative entries")
    if not np.allclose(W.sum(axis=1), 1.0, atol=atol, rtol=0):
        raise ValueError("W is not row-stochastic")
    if G is not None:
        allowed = nx.to_numpy_array(G, nodelist=range(n)) + np.eye(n)
        if np.any((W > atol) & (allowed == 0)):
            raise ValueError("W puts weight on a pair that is not an edge of the graph")
    symmetric = bool(np.allclose(W, W.T, atol=atol, rtol=0))
    doubly_stochastic = bool(np.allclose(W.sum(axis=0), 1.0, atol=atol, rtol=0))
    if doubly and not (symmetric and doubly_stochastic):
        raise ValueError("W was claimed doubly stochastic and symmetric but is not")
    return {"row_stochastic": True, "doubly_stochastic": doubly_stochastic, "symmetric": symmetric,
            "spectral_gap": spectral_gap(W)}


def spectral_gap(W: np.ndarray) -> float:
    """1 - |lambda_2(W)|, with eigenvalues sorted by modulus (1 for a single agent)."""
    if W.shape[0] == 1:
        return 1.0
    moduli = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    return float(1.0 - moduli[1])


def swarm_mixing(network: dict) -> tuple[nx.Graph, np.ndarray]:
    """Graph and validated W for a spec's [network] section."""
    G = build_graph(network["topology"], network["agents"], network["seed"])
    W = mixing_matrix(G, network["weights"])
    check_mixing(W, G, doubly=True)
    return G, W
