"""Graphs and mixing weights against closed forms."""
import networkx as nx
import numpy as np
import pytest

from coordinator_free import topology as topo_mod
from coordinator_free.topology import (TOPOLOGIES, WEIGHT_RULES, build_graph, check_mixing, check_topology,
                                       check_weights, live_row, mixing_matrix, mixing_row, spectral_gap,
                                       swarm_mixing, topology, topology_forms)
from common.errors import UserError


@pytest.mark.parametrize("name,n,edges", [
    ("cycle", 6, 6), ("star", 6, 5), ("complete", 5, 10), ("path", 7, 6), ("grid", 6, 7),
    ("exponential", 8, 8 + 8 + 4), ("random-regular:3", 8, 12),
])
def test_graph_edge_counts(name, n, edges):
    G = build_graph(name, n, seed=1)
    assert G.number_of_nodes() == n and G.number_of_edges() == edges and nx.is_connected(G)


def test_exponential_links_powers_of_two():
    G = build_graph("exponential", 8)
    assert sorted(G.neighbors(0)) == [1, 2, 4, 6, 7]


def test_erdos_renyi_is_seeded_and_connected():
    a, b = build_graph("erdos-renyi:0.3", 16, seed=4), build_graph("erdos-renyi:0.3", 16, seed=4)
    assert nx.is_connected(a) and sorted(a.edges) == sorted(b.edges)


def test_graph_from_edge_list_and_graphml(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("# a triangle plus a tail\n0 1\n1 2\n2 0\n2 3\n")
    assert sorted(build_graph(f"file:{f}", 4).edges) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    g = tmp_path / "g.graphml"
    nx.write_graphml(nx.path_graph(4), g)
    assert build_graph(f"file:{g}", 4).number_of_edges() == 3
    with pytest.raises(UserError, match="5"):
        build_graph(f"file:{f}", 5)
    disconnected = tmp_path / "d.txt"
    disconnected.write_text("0 1\n2 3\n")
    with pytest.raises(UserError, match="not connected"):
        build_graph(f"file:{disconnected}", 4)


def test_metropolis_closed_form_on_star():
    # star with centre 0 and 3 leaves: w_0r = 1/(1+3) = 1/4, diag(0) = 1/4, leaves keep 3/4
    W = mixing_matrix(build_graph("star", 4), "metropolis")
    expected = np.array([[0.25, 0.25, 0.25, 0.25], [0.25, 0.75, 0, 0], [0.25, 0, 0.75, 0], [0.25, 0, 0, 0.75]])
    np.testing.assert_allclose(W, expected, atol=1e-15)


@pytest.mark.parametrize("rule", ["metropolis", "max-degree", "lazy-metropolis"])
@pytest.mark.parametrize("topo", ["cycle", "star", "grid", "erdos-renyi:0.4", "exponential"])
def test_weights_are_doubly_stochastic(rule, topo):
    G = build_graph(topo, 9, seed=2)
    W = mixing_matrix(G, rule)
    props = check_mixing(W, G, doubly=True)
    assert props["doubly_stochastic"] and props["symmetric"]
    assert 0 < props["spectral_gap"] <= 1


def test_spectral_gap_of_cycle_closed_form():
    # cycle, metropolis: W = I/3 + shifts/3, eigenvalues (1 + 2 cos(2 pi j / n)) / 3
    n = 8
    W = mixing_matrix(build_graph("cycle", n))
    lam = sorted(abs((1 + 2 * np.cos(2 * np.pi * j / n)) / 3) for j in range(n))[::-1]
    assert spectral_gap(W) == pytest.approx(1 - lam[1], abs=1e-12)
    assert spectral_gap(mixing_matrix(build_graph("complete", 5))) == pytest.approx(1.0)


def test_check_mixing_rejects_bad_matrices():
    G = build_graph("path", 3)
    with pytest.raises(ValueError, match="row-stochastic"):
        check_mixing(np.eye(3) * 0.5, G)
    W = np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]])
    with pytest.raises(ValueError, match="not an edge"):
        check_mixing(W, G, doubly=False)


def test_suspected_neighbour_weight_moves_to_self_and_stays_doubly_stochastic():
    G = build_graph("cycle", 5)
    W = mixing_matrix(G)
    deg = dict(G.degree())
    dead = (0, 1)  # the edge both ends stop using
    Wl = np.zeros_like(W)
    for q in range(5):
        row = mixing_row("metropolis", deg[q], {r: deg[r] for r in G.neighbors(q)}, q)
        live = {r for r in G.neighbors(q) if {q, r} != set(dead)}
        for r, w in live_row(row, live, q).items():
            Wl[q, r] = w
    assert Wl[0, 1] == 0 and Wl[0, 0] == pytest.approx(W[0, 0] + W[0, 1])
    np.testing.assert_allclose(Wl.sum(0), 1)
    np.testing.assert_allclose(Wl, Wl.T)


# --- registries -------------------------------------------------------------------------------------

EXAMPLE_ARGS = {"erdos-renyi": "0.5", "random-regular": "2"}


def test_forms_are_generated_from_the_registry():
    assert topology_forms() == ["cycle", "star", "complete", "path", "grid", "exponential", "erdos-renyi:P",
                                "random-regular:D", "file:PATH"]
    assert set(WEIGHT_RULES) == {"metropolis", "lazy-metropolis", "max-degree"}


@pytest.mark.parametrize("name", [n for n in TOPOLOGIES if n != "file"])
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_every_registered_topology_builds_a_connected_graph(name, n):
    spec = name if TOPOLOGIES[name].arg is None else f"{name}:{EXAMPLE_ARGS[name]}"
    if name == "random-regular" and n < 3:
        with pytest.raises(UserError, match="does not exist"):  # a 2-regular graph needs 3 agents
            build_graph(spec, n, seed=3)
        return
    G = build_graph(spec, n, seed=3)
    assert sorted(G.nodes) == list(range(n)) and nx.number_of_selfloops(G) == 0
    assert n == 1 or nx.is_connected(G)
    assert check_topology(spec) == spec


def test_file_topology_is_registered_and_builds(tmp_path):
    f = tmp_path / "ring.txt"
    nx.write_edgelist(nx.cycle_graph(5), f, data=False)
    assert nx.is_connected(build_graph(f"file:{f}", 5)) and check_topology(f"file:{f}") == f"file:{f}"


@pytest.mark.parametrize("value,why", [
    ("ring", "unknown topology"), ("", "unknown topology"), (3, "unknown topology"),
    ("cycle:3", "takes no argument"), ("star:", "takes no argument"),
    ("erdos-renyi", "P must be"), ("erdos-renyi:0", "P must be"), ("erdos-renyi:1.5", "P must be"),
    ("erdos-renyi:abc", "P must be"), ("erdos-renyi:nan", "P must be"),
    ("random-regular:0", "D must be"), ("random-regular:2.5", "D must be"), ("random-regular:-2", "D must be"),
    ("file:", "PATH must be"), ("file", "PATH must be"),
])
def test_check_topology_rejects_bad_values(value, why):
    with pytest.raises(UserError) as err:
        check_topology(value)
    msg = str(err.value)
    assert msg.startswith(f"network.topology = {value!r}: ") and why in msg and "\n" not in msg
    assert msg.endswith("expected one of " + ", ".join(topology_forms()))
    with pytest.raises(UserError):
        build_graph(value, 6)


def test_check_topology_accepts_good_arguments():
    for value in ("cycle", "erdos-renyi:1", "erdos-renyi:0.05", "random-regular:4", "file:no/such/file.txt"):
        assert check_topology(value) == value  # the file is not opened


def test_registering_a_topology_is_the_only_edit_needed():
    def parse_k(text: str) -> int:
        if not text.isdecimal():
            raise ValueError("an integer")
        return int(text)

    @topology("ladder", arg="K", parse=parse_k)
    def ladder(n: int, k: int, seed: int = 0) -> nx.Graph:
        """Path with chords q -- q+k (plus a self loop build_graph must remove)."""
        G = nx.path_graph(n)
        G.add_edges_from((q, q + k) for q in range(n - k))
        G.add_edge(0, 0)
        return G

    try:
        assert "ladder:K" in topology_forms()
        assert check_topology("ladder:2") == "ladder:2"
        G = build_graph("ladder:2", 6)
        assert G.number_of_edges() == 5 + 4 and nx.number_of_selfloops(G) == 0
        with pytest.raises(UserError, match=r"^network.topology = 'ladder:x': K must be an integer; .*ladder:K"):
            check_topology("ladder:x")
    finally:
        del TOPOLOGIES["ladder"]
    with pytest.raises(UserError, match="unknown topology"):
        check_topology("ladder:2")


def test_build_graph_matches_the_registered_functions():
    assert sorted(build_graph("exponential", 8).edges) == sorted(topo_mod.exponential(8).edges)
    assert sorted(build_graph("erdos-renyi:0.3", 10, seed=7).edges) == \
        sorted(topo_mod.erdos_renyi(10, 0.3, seed=7).edges)
    assert sorted(build_graph("cycle", 2).edges) == [(0, 1)]  # cycle on n < 3 is a path


def test_check_weights():
    for rule in WEIGHT_RULES:
        assert check_weights(rule) == rule
    for bad in ("metropolis-hastings", "", None):
        with pytest.raises(UserError) as err:
            check_weights(bad)
        assert str(err.value) == f"network.weights = {bad!r}: expected one of {', '.join(WEIGHT_RULES)}"
    with pytest.raises(UserError, match="network.weights = 'uniform'"):
        mixing_row("uniform", 1, {1: 1}, 0, 2)


def _graphs():
    return [nx.path_graph(4), nx.star_graph(5), build_graph("grid", 12), build_graph("erdos-renyi:0.3", 11, seed=5),
            nx.barbell_graph(4, 2)]


@pytest.mark.parametrize("rule", WEIGHT_RULES)
def test_every_rule_is_symmetric_and_doubly_stochastic(rule):
    for G in _graphs():
        W = mixing_matrix(G, rule)
        np.testing.assert_array_equal(W, W.T)
        np.testing.assert_allclose(W.sum(axis=0), 1, atol=1e-14)
        np.testing.assert_allclose(W.sum(axis=1), 1, atol=1e-14)
        assert np.all(W >= 0)


def test_metropolis_weights_equal_the_closed_form():
    for G in _graphs():
        n, deg = G.number_of_nodes(), dict(G.degree())
        expected = np.zeros((n, n))
        for q, r in G.edges:
            expected[q, r] = expected[r, q] = 1 / (1 + max(deg[q], deg[r]))
        np.fill_diagonal(expected, 1 - expected.sum(axis=1))
        np.testing.assert_allclose(mixing_matrix(G, "metropolis"), expected, atol=1e-15)
        np.testing.assert_allclose(mixing_matrix(G, "lazy-metropolis"), (np.eye(n) + expected) / 2, atol=1e-15)
        off = nx.to_numpy_array(G, nodelist=range(n)) / n
        np.testing.assert_allclose(mixing_matrix(G, "max-degree"), off + np.diag(1 - off.sum(1)), atol=1e-15)


def test_swarm_mixing_takes_a_dict_or_an_object():
    from types import SimpleNamespace
    section = {"topology": "grid", "agents": 6, "seed": 0, "weights": "lazy-metropolis"}
    G1, W1 = swarm_mixing(section)
    G2, W2 = swarm_mixing(SimpleNamespace(**section))
    assert sorted(G1.edges) == sorted(G2.edges)
    np.testing.assert_array_equal(W1, W2)
