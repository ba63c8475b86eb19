"""Graphs and mixing weights against closed forms."""
import networkx as nx
import numpy as np
import pytest

from coordinator_free.topology import (build_graph, check_mixing, live_row, mixing_matrix, mixing_row,
                                       spectral_gap)
from coordinator_free.common.errors import UserError


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
