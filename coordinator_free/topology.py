"""Communication graphs and mixing weights for the swarm, as two registries keyed by spec name.

To add a topology, write one function ``f(n[, arg], seed=0) -> nx.Graph`` decorated with
``@topology("name")`` (or ``@topology("name", arg="X", parse=...)``); to add a weight rule, one
function ``f(degree, neighbour_degree, n_agents) -> float`` decorated with ``@weight_rule("name")``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import numpy as np

from common.errors import UserError


@dataclass(frozen=True)
class Topology:
    """A registered topology: spec ``name``, graph builder, argument name (e.g. "P") and its parser."""
    name: str
    build: Callable[..., nx.Graph]
    arg: str | None = None
    parse: Callable[[str], Any] | None = None  # text -> value, ValueError("what it must be") if bad

    @property
    def form(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


TOPOLOGIES: dict[str, Topology] = {}
WeightRule = Callable[[int, int, int | None], float]
RULES: dict[str, WeightRule] = {}


def topology(name: str, arg: str | None = None,
             parse: Callable[[str], Any] | None = None) -> Callable[[Callable[..., nx.Graph]], Callable[..., nx.Graph]]:
    """Register ``fn`` as topology ``name`` (``name:ARG`` if ``arg``; ``parse`` validates the argument)."""
    if (arg is None) != (parse is None):
        raise TypeError("a topology argument needs both a name and a parser")

    def register(fn: Callable[..., nx.Graph]) -> Callable[..., nx.Graph]:
        TOPOLOGIES[name] = Topology(name, fn, arg, parse)
        return fn
    return register


def weight_rule(name: str) -> Callable[[WeightRule], WeightRule]:
    """Register ``fn(degree, neighbour_degree, n_agents) -> w_qr`` as mixing-weight rule ``name``."""
    def register(fn: WeightRule) -> WeightRule:
        RULES[name] = fn
        return fn
    return register


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        p = math.nan
    if not 0 < p <= 1:
        raise ValueError("a number in (0, 1]")
    return p


def _positive_int(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise ValueError("an integer >= 1")
    return int(text)


def _nonempty_path(text: str) -> str:
    if not text:
        raise ValueError("a non-empty path")
    return text


@topology("cycle")
def cycle(n: int, seed: int = 0) -> nx.Graph:
    """Ring 0-1-...-(n-1)-0, a path if n < 3.  Example: cycle(4).edges -> (0,1) (0,3) (1,2) (2,3).
    Parameters: n agents; seed unused.  Returns: nx.Graph, n edges (n - 1 if n < 3).  Raises: nothing."""
    return nx.cycle_graph(n) if n >= 3 else nx.path_graph(n)


@topology("star")
def star(n: int, seed: int = 0) -> nx.Graph:
    """Hub 0 linked to every other agent.
    Parameters: n agents; seed unused.  Returns: nx.Graph, n - 1 edges.  Raises: nothing."""
    return nx.star_graph(n - 1)


@topology("complete")
def complete(n: int, seed: int = 0) -> nx.Graph:
    """Every pair of agents linked.
    Parameters: n agents; seed unused.  Returns: nx.Graph, n (n - 1) / 2 edges.  Raises: nothing."""
    return nx.complete_graph(n)


@topology("path")
def path(n: int, seed: int = 0) -> nx.Graph:
    """The line 0-1-...-(n-1).
    Parameters: n agents; seed unused.  Returns: nx.Graph, n - 1 edges.  Raises: nothing."""
    return nx.path_graph(n)


@topology("grid")
def grid(n: int, seed: int = 0) -> nx.Graph:
    """The most nearly square r x c grid with r * c = n, row-major.  Example: grid(6) is 2 x 3, 7 edges.
    Parameters: n agents; seed unused.  Returns: nx.Graph (a path if n is prime).  Raises: nothing."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, n // rows), ordering="sorted")


@topology("exponential")
def exponential(n: int, seed: int = 0) -> nx.Graph:
    """Node q links to q +- 2^i mod n for 2^i < n.  Example: in exponential(8), 0 links to 1 2 4 6 7.
    Parameters: n agents; seed unused.  Returns: nx.Graph.  Raises: nothing."""
    G = nx.empty_graph(n)
    hop = 1
    while hop < n:
        G.add_edges_from((q, (q + hop) % n) for q in range(n) if (q + hop) % n != q)
        hop *= 2
    return G


@topology("erdos-renyi", arg="P", parse=_probability)
def erdos_renyi(n: int, p: float, seed: int = 0, tries: int = 1000) -> nx.Graph:
    """G(n, p) drawn again with seeds seed, seed+1, ... until it is connected.
    Parameters: n agents; p edge probability in (0, 1]; seed of the first draw; tries draws at most.
    Returns: a connected nx.Graph.  Raises: UserError if no draw is connected."""
    for t in range(tries):
        G = nx.gnp_random_graph(n, p, seed=seed + t)
        if n == 1 or nx.is_connected(G):
            return G
    raise UserError(f"network.topology = erdos-renyi:{p}: no connected graph on {n} agents in {tries} draws; "
                    "raise P")


@topology("random-regular", arg="D", parse=_positive_int)
def random_regular(n: int, d: int, seed: int = 0) -> nx.Graph:
    """A random d-regular graph, redrawn with seeds seed+1, ... (1000 draws at most) until connected.
    Parameters: n agents; d degree >= 1; seed of the first draw.  Returns: nx.Graph, n d / 2 edges.
    Raises: UserError if d >= n or n d is odd (no such graph)."""
    if d >= n or (n * d) % 2:
        raise UserError(f"network.topology = random-regular:{d}: a {d}-regular graph on {n} agents does not "
                        "exist (need D < agents and agents * D even)")
    G = nx.random_regular_graph(d, n, seed=seed)
    tries = 1
    while not nx.is_connected(G) and tries < 1000:
        G = nx.random_regular_graph(d, n, seed=seed + tries)
        tries += 1
    return G


@topology("file", arg="PATH", parse=_nonempty_path)
def from_file(n: int, path: str, seed: int = 0) -> nx.Graph:
    """An edge list (``u v`` per line, # comments) or a GraphML file, nodes relabelled 0..n-1.
    Parameters: n agents; path of the file (.graphml/.xml is GraphML); seed unused.  Returns: nx.Graph.
    Raises: UserError if the file is missing, unreadable or has other than n nodes."""
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


def topology_forms() -> list[str]:
    """The spec forms of the registered topologies, e.g. ["cycle", ..., "erdos-renyi:P", ...]."""
    return [t.form for t in TOPOLOGIES.values()]


def _parse_topology(value: Any) -> tuple[Topology, Any]:
    name, _, text = value.partition(":") if isinstance(value, str) else ("", "", "")
    entry, problem = TOPOLOGIES.get(name), "unknown topology"
    if entry is not None and entry.parse is None:
        if ":" not in value:
            return entry, None
        problem = f"{name} takes no argument"
    elif entry is not None and entry.parse is not None:
        try:
            return entry, entry.parse(text)
        except ValueError as err:
            problem = f"{entry.arg} must be {err}"
    raise UserError(f"network.topology = {value!r}: {problem}; expected one of {', '.join(topology_forms())}")


def check_topology(value: Any) -> str:
    """Validate a spec's topology string (without building the graph) and return it; UserError if bad."""
    _parse_topology(value)
    return value


def build_graph(topology: str, n: int, seed: int = 0) -> nx.Graph:
    """The spec's topology string -> a connected, undirected graph on nodes 0..n-1, self loops removed.

    Raises UserError if the string is not a registered form, or the graph cannot be built or is not connected.
    """
    entry, arg = _parse_topology(topology)
    G = entry.build(n, seed=seed) if entry.parse is None else entry.build(n, arg, seed=seed)
    G.remove_edges_from(nx.selfloop_edges(G))
    if n > 1 and not nx.is_connected(G):
        raise UserError(f"network.topology = {topology}: the graph on {n} agents is not connected")
    return G


@weight_rule("metropolis")
def metropolis(degree: int, neighbour_degree: int, n_agents: int | None = None) -> float:
    """w_qr = 1 / (1 + max(deg_q, deg_r)); symmetric, the diagonal takes the rest."""
    return 1.0 / (1 + max(degree, neighbour_degree))


@weight_rule("max-degree")
def max_degree(degree: int, neighbour_degree: int, n_agents: int | None = None) -> float:
    """w_qr = 1 / n_agents (needs ``n_agents``); symmetric, the diagonal takes the rest."""
    if not n_agents:
        raise ValueError("max-degree weights need the number of agents")
    return 1.0 / n_agents


@weight_rule("lazy-metropolis")
def lazy_metropolis(degree: int, neighbour_degree: int, n_agents: int | None = None) -> float:
    """w_qr = 1 / (2 (1 + max(deg_q, deg_r))), half of metropolis: all eigenvalues of W are >= 0."""
    return 0.5 / (1 + max(degree, neighbour_degree))


WEIGHT_RULES: tuple[str, ...] = tuple(RULES)  # rules registered above this line


def check_weights(value: Any) -> str:
    """Validate a spec's mixing-weight rule name and return it; UserError if it is not registered."""
    if not isinstance(value, str) or value not in RULES:
        raise UserError(f"network.weights = {value!r}: expected one of {', '.join(RULES)}")
    return value


def mixing_row(rule: str, degree: int, neighbour_degrees: dict[int, int], self_id: int,
               n_agents: int | None = None) -> dict[int, float]:
    """Agent ``self_id``'s row of W from its own and its neighbours' degrees: {r: w_qr}, rows sum to 1.

    Off-diagonal weights come from the registered ``rule``; the diagonal takes 1 - their sum.
    """
    weight = RULES[check_weights(rule)]
    off = {r: weight(degree, dr, n_agents) for r, dr in neighbour_degrees.items()}
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


def _field(section: Any, key: str) -> Any:
    """``section[key]`` for a dict, ``section.key`` for a (data)class instance."""
    return section[key] if isinstance(section, Mapping) else getattr(section, key)


def swarm_mixing(network: Any) -> tuple[nx.Graph, np.ndarray]:
    """Graph and validated W for a spec's [network] section (a dict or an object with attributes
    topology, agents, seed, weights)."""
    G = build_graph(_field(network, "topology"), _field(network, "agents"), _field(network, "seed"))
    W = mixing_matrix(G, _field(network, "weights"))
    check_mixing(W, G, doubly=True)
    return G, W
