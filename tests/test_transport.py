"""Tests of the board transports over real sockets on 127.0.0.1 (threads, no mocks).

The protocol tests run on both transports, ZeroMQ (coordinator_free.transport) and plain TCP
(coordinator_free.tcp_transport), which share the protocol and membership code and differ only in their
link layer; the tests that forge frames with raw ZeroMQ sockets, or use CURVE, run on ZeroMQ.
"""
import logging
import threading
import time

import numpy as np
import pytest
import zmq

from coordinator_free.gossip import transports
from coordinator_free.transport import Transport, free_tcp_port
from coordinator_free.wire import encode
from common.errors import UserError

P = 1000
KW = dict(model_hash="m0", spec_hash="s0", algorithm="dgd", shape=(P,))


def value(node: int, rnd: int, dtype) -> np.ndarray:
    """The params node `node` sends in round `rnd`: distinct, full-precision values."""
    return np.random.default_rng(1000 * node + rnd).standard_normal(P).astype(dtype)


def run_all(*fns, timeout: float = 20.0) -> tuple[list, list]:
    """Run each fn in its own thread; return (results, exceptions), one entry per fn."""
    results, errors = [None] * len(fns), [None] * len(fns)

    def target(i):
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - handed back to the test thread
            errors[i] = e

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a transport thread hung"
    return results, errors


def _factory(cls):
    """Factory for transports of ``cls`` that are all closed at teardown, even when the test fails (an
    unclosed zmq.Context collected in a garbage cycle can hang the interpreter)."""
    made = []

    def factory(*args, **kw):
        made.append(cls(*args, **{**KW, "dtype": "float32", **kw}))
        return made[-1]

    return made, factory


@pytest.fixture
def make():
    """ZeroMQ transports."""
    made, factory = _factory(Transport)
    yield factory
    for t in made:
        t.close()


@pytest.fixture(params=["zmq", "tcp"])
def make_any(request):
    """Transports of each registered kind: the same protocol tests pass over either link."""
    made, factory = _factory(transports()[request.param])
    yield factory
    for t in made:
        t.close()


@pytest.fixture
def raw():
    """Factory for raw zmq sockets (PUSH connects, PULL binds), closed at teardown."""
    ctx = zmq.Context()
    socks = []

    def factory(kind: int, endpoint: str) -> zmq.Socket:
        socks.append(ctx.socket(kind))
        socks[-1].connect(endpoint) if kind == zmq.PUSH else socks[-1].bind(endpoint)
        return socks[-1]

    yield factory
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


def path_graph(make, n: int = 3, dtype: str = "float32") -> list[Transport]:
    """Transports for the path 0-1-...-(n-1) on free loopback ports."""
    addr = {i: f"tcp://127.0.0.1:{free_tcp_port()}" for i in range(n)}
    nbrs = {i: [j for j in (i - 1, i + 1) if 0 <= j < n] for i in range(n)}
    return [make(i, addr[i], {j: addr[j] for j in nbrs[i]}, dtype=dtype) for i in range(n)]


def params(sender: int, rnd: int, array: np.ndarray, **kw) -> list:
    header = {"type": "params", "sender": sender, "round": rnd, "algorithm": "dgd",
              "model_hash": "m0", **kw}
    return [bytes(f) for f in encode(header, array)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_path_graph_handshake_and_five_rounds_exact(make_any, dtype):
    ts = path_graph(make_any, 3, dtype)

    def agent(t: Transport):
        with t:
            hellos = t.handshake(len(t.peers), timeout=5, extra={"spec_keys": {"device": f"board{t.node_id}"}})
            got = []
            for k in range(5):
                if t.node_id == 2:
                    time.sleep(0.05)  # node 1 waits for 2 while 0 already sends round k+1
                got.append(t.exchange(k, value(t.node_id, k, dtype), deadline=5))
            return hellos, got, t.suspected

    results, errors = run_all(*[lambda t=t: agent(t) for t in ts])
    assert errors == [None] * 3
    for i, (hellos, got, suspected) in enumerate(results):
        nbrs = [j for j in (i - 1, i + 1) if 0 <= j < 3]
        assert sorted(hellos) == nbrs and not suspected
        for j in nbrs:
            assert hellos[j]["degree"] == len([n for n in (j - 1, j + 1) if 0 <= n < 3])
            assert hellos[j]["spec_keys"] == {"device": f"board{j}"}
        for k in range(5):
            assert sorted(got[k]) == nbrs
            for j in nbrs:
                assert got[k][j][0].dtype == np.dtype(dtype)
                assert got[k][j][0].tobytes() == value(j, k, dtype).tobytes()
        payload = P * np.dtype(dtype).itemsize
        assert ts[i].bytes_sent >= 5 * len(nbrs) * payload and ts[i].rounds_alone == 0
        assert ts[i].bytes_received >= 5 * len(nbrs) * payload


def test_early_message_is_buffered_and_delivered(make, raw):
    t = make(1, "tcp://127.0.0.1:*", {0: f"tcp://127.0.0.1:{free_tcp_port()}"})
    push = raw(zmq.PUSH, t.endpoint)  # impersonates node 0
    push.send_multipart(params(0, 0, value(0, 0, np.float32)))
    push.send_multipart(params(0, 1, value(0, 1, np.float32)))  # round 1 before we are in round 1
    got0 = t.exchange(0, value(1, 0, np.float32), deadline=5)
    got1 = t.exchange(1, value(1, 1, np.float32), deadline=0)  # no waiting: already buffered
    assert got0[0][0].tobytes() == value(0, 0, np.float32).tobytes()
    assert got1[0][0].tobytes() == value(0, 1, np.float32).tobytes()
    assert not t.suspected


def test_caller_may_overwrite_array_right_after_exchange(make, raw):
    n = 1_000_000  # big enough that ZeroMQ is still sending when exchange returns
    peer = f"tcp://127.0.0.1:{free_tcp_port()}"
    pull = raw(zmq.PULL, peer)  # plays node 1
    t = make(0, "tcp://127.0.0.1:*", {1: peer}, shape=(n,))
    raw(zmq.PUSH, t.endpoint).send_multipart(encode(
        {"type": "hello", "sender": 1, "model_hash": "m0", "spec_hash": "s0", "degree": 1, "round": 0,
         "heard": [0], "reply": True}))
    t.handshake(1, timeout=5)
    a = np.arange(n, dtype=np.float32)
    t.exchange(0, a, deadline=0)
    a[:] = -1.0  # the snapshot, not this buffer, is on the wire
    while len(frames := pull.recv_multipart()) != 2:
        pass  # skip HELLOs
    np.testing.assert_array_equal(np.frombuffer(frames[1], np.float32), np.arange(n))


def test_silent_peer_is_suspected_and_others_continue(make_any):
    ts = path_graph(make_any, 3)

    def agent(t: Transport):
        with t:
            t.handshake(len(t.peers), timeout=5)
            got = []
            for k in range(5):
                if t.node_id == 2 and k == 2:
                    time.sleep(0.6)  # stops sending; stays up until node 1 has given up
                    t.close()  # gone without a BYE, as a crash would
                    return got, set()
                waited = t.wait_seconds
                got.append(t.exchange(k, value(t.node_id, k, np.float32), deadline=0.3 if k else 5))
                got[-1] = (sorted(got[-1]), t.wait_seconds - waited)
            return got, set(t.suspected)


    results, errors = run_all(*[lambda t=t: agent(t) for t in ts])
    assert errors == [None] * 3
    (got0, sus0), (got1, sus1), _ = results
    assert [g[0] for g in got0] == [[1]] * 5 and not sus0
    assert [g[0] for g in got1] == [[0, 2], [0, 2], [0], [0], [0]] and sus1 == {2}


def test_peer_still_in_handshake_is_not_suspected(make_any):
    """Node 2 starts late: node 1 stays in its handshake, node 0 (done) waits in round 0 past
    its deadline because node 1's handshake heartbeats show it is alive."""
    ts = path_graph(make_any, 3)

    def agent(t: Transport):
        if t.node_id == 2:
            time.sleep(0.7)
        t.handshake(len(t.peers), timeout=5)
        got = t.exchange(0, value(t.node_id, 0, np.float32), deadline=0.5)
        return sorted(got), set(t.suspected)

    results, errors = run_all(*[lambda t=t: agent(t) for t in ts])
    assert errors == [None] * 3
    assert results == [([1], set()), ([0, 2], set()), ([1], set())]


def test_malformed_messages_are_dropped_and_logged(make, raw, caplog):
    addr2 = f"tcp://127.0.0.1:{free_tcp_port()}"  # node 2 is impersonated by raw sockets
    t1 = make(1, "tcp://127.0.0.1:*", {0: f"tcp://127.0.0.1:{free_tcp_port()}", 2: addr2})
    t0 = make(0, t1.peers[0], {1: t1.endpoint})
    raw(zmq.PULL, addr2)  # so that t1 can deliver its HELLOs to "node 2"
    push = raw(zmq.PUSH, t1.endpoint)
    push.send_multipart(encode({"type": "hello", "sender": 2, "model_hash": "m0", "spec_hash": "s0",
                                "degree": 1, "round": 0, "heard": [1], "reply": True}))
    _, errors = run_all(lambda: t0.handshake(1, timeout=5), lambda: t1.handshake(2, timeout=5))
    assert errors == [None, None]
    good = value(2, 0, np.float32)
    push.send(b"\x00\xffgarbage")
    push.send_multipart(params(2, 0, np.full(P, np.nan, np.float32)))
    push.send_multipart(params(2, 0, np.zeros(P + 1, np.float32)))
    push.send_multipart(params(2, 0, good, model_hash="evil"))
    push.send_multipart(params(7, 0, good))
    push.send_multipart(params(2, 0, good))  # the real one, last: ZeroMQ keeps order per pipe

    caplog.set_level(logging.WARNING, logger="coordinator_free.protocol")
    results, errors = run_all(lambda: t0.exchange(0, value(0, 0, np.float32), deadline=5),
                              lambda: t1.exchange(0, value(1, 0, np.float32), deadline=5))
    assert errors == [None, None] and not t0.suspected
    assert results[0][1][0].tobytes() == value(1, 0, np.float32).tobytes()
    assert results[1][0][0].tobytes() == value(0, 0, np.float32).tobytes()
    assert results[1][2][0].tobytes() == good.tobytes()
    assert t1.drop_counts["invalid"] == 5 and not t1.suspected
    reasons = [r for _, r in t1.dropped]
    for part in ["not valid UTF-8", f"{P} non-finite values", f"shape [{P + 1}] != model shape",
                 "model hash 'evil' != ours 'm0'", "sender 7 is not a neighbour"]:
        assert any(part in r for r in reasons), part
        assert any(part in rec.getMessage() and rec.levelno == logging.WARNING
                   for rec in caplog.records), part


@pytest.mark.parametrize("which", ["model_hash", "spec_hash"])
def test_hash_mismatch_at_handshake_is_a_user_error(make_any, which):
    a0, a1 = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    t0, t1 = make_any(0, a0, {1: a1}), make_any(1, a1, {0: a0}, **{which: "other"})
    _, errors = run_all(lambda: t0.handshake(1), lambda: t1.handshake(1))  # no start_timeout: both must see it
    label = which.replace("_", " ")
    for e in errors:
        assert isinstance(e, UserError)
        assert f"{label} 'other'" in str(e) or f"{label} 'm0'" in str(e) or \
            f"{label} 's0'" in str(e)
        assert "ours is" in str(e)
    assert "peer 1" in str(errors[0]) and "'other'" in str(errors[0])


def test_a_start_timeout_names_the_missing_peer_and_is_not_bad_input(make_any):
    from common.errors import StartTimedOut, exit_status
    missing = f"tcp://127.0.0.1:{free_tcp_port()}"
    t = make_any(0, "tcp://127.0.0.1:*", {3: missing})
    with pytest.raises(StartTimedOut, match=rf"no HELLO from peer 3 \({missing}\)") as err:
        t.handshake(1, timeout=0.3)
    assert exit_status(err.value) == 6 and not isinstance(err.value, UserError)


def test_bye_removes_peer_without_suspicion(make_any):
    ts = path_graph(make_any, 3)

    def agent(t: Transport):
        with t:
            t.handshake(len(t.peers), timeout=5)
            for k in range(4):
                if t.node_id == 2 and k == 2:
                    t.bye()
                    return None
                got = t.exchange(k, value(t.node_id, k, np.float32), deadline=5)
                if k == 2:
                    state = sorted(got), set(t.departed), set(t.suspected), set(t.live)
            return state

    results, errors = run_all(*[lambda t=t: agent(t) for t in ts])
    assert errors == [None] * 3
    assert results[1] == ([0], {2}, set(), {0})  # round 2: 2 has left, nobody suspected
    assert results[0] == ([1], set(), set(), {1})


def test_bad_inputs_are_user_errors(make):
    with pytest.raises(UserError, match="lists itself"):
        make(0, "tcp://127.0.0.1:*", {0: "tcp://127.0.0.1:1"})
    with pytest.raises(UserError, match="bad address 'nonsense' for peer 1"):
        make(0, "tcp://127.0.0.1:*", {1: "nonsense"})
    with pytest.raises(UserError, match="dtype 'float16'"):
        make(0, "tcp://127.0.0.1:*", {}, dtype="float16")
    t = make(0, "tcp://127.0.0.1:*", {})
    with pytest.raises(UserError, match=f"cannot bind {t.endpoint}"):
        make(1, t.endpoint, {})
    with pytest.raises(ValueError, match="float64"):
        t.exchange(0, np.zeros(P), deadline=0)


def test_board_transports_are_a_registry_and_a_second_one_is_one_file_with_only_a_link(tmp_path):
    """Both transports are found by scanning the package; the TCP one is a link layer over the shared protocol,
    importing neither zmq nor the ZeroMQ link module (its protocol tests above are the ZeroMQ ones)."""
    import ast
    from pathlib import Path
    from agent.node import load_node
    from coordinator_free import tcp_transport
    from coordinator_free.protocol import Protocol
    found = transports()
    assert found["zmq"] is Transport and found["tcp"] is tcp_transport.TcpTransport
    assert issubclass(found["tcp"], Protocol) and issubclass(Transport, Protocol)
    tree = ast.parse(Path(tcp_transport.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"zmq", "coordinator_free.transport", "coordinator_free.keys"} & imported
    own = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not own & {"exchange", "handshake", "listen", "agree", "flood"}  # nothing of the protocol again
    (tmp_path / "spec.toml").write_text("[network]\nagents = 2\n")
    node = tmp_path / "node.toml"
    body = 'id = 0\nbind = "tcp://127.0.0.1:5555"\ndata = "a.npz"\nspec = "spec.toml"\ntransport = "{}"\n' \
           '[peers]\n1 = "tcp://127.0.0.1:5556"\n'
    node.write_text(body.format("pigeon"))
    with pytest.raises(UserError, match="node file .*: transport = 'pigeon': expected one of tcp, zmq"):
        load_node(node)
    node.write_text(body.format("tcp"))
    assert load_node(node).transport == "tcp"
    with pytest.raises(UserError, match="transport = 'tcp' has no encryption"):
        tcp_transport.TcpTransport(0, "tcp://127.0.0.1:*", {1: "tcp://127.0.0.1:9"}, curve=object(),
                                   **{**KW, "dtype": "float32"})


def test_a_float64_model_larger_than_a_header_crosses_a_curve_link(make, tmp_path):
    """The receive limit admits a whole float64 model with CurveZMQ's per-frame overhead (it once did not:
    every width-512 float64 swarm suspected every neighbour at round 0)."""
    from coordinator_free.keys import Curve, new_keypair
    from coordinator_free.wire import MAX_HEADER_BYTES
    n = MAX_HEADER_BYTES  # 8n bytes per frame: far above the header limit
    keys = {i: new_keypair(tmp_path, f"a{i}") for i in (0, 1)}
    addr = {i: f"tcp://127.0.0.1:{free_tcp_port()}" for i in (0, 1)}
    ts = [make(i, addr[i], {1 - i: addr[1 - i]}, dtype="float64", shape=(n,),
               curve=Curve(keys[i][1], {1 - i: keys[1 - i][0]})) for i in (0, 1)]
    sent = {i: np.random.default_rng(i).standard_normal(n) for i in (0, 1)}

    def agent(t: Transport):
        t.handshake(1, timeout=10)
        return [t.exchange(k, sent[t.node_id], deadline=10) for k in range(3)]

    results, errors = run_all(*[lambda t=t: agent(t) for t in ts], timeout=60)
    assert errors == [None, None]
    for i, got in enumerate(results):
        assert [sorted(g) for g in got] == [[1 - i]] * 3 and not ts[i].suspected
        assert all(g[1 - i][0].tobytes() == sent[1 - i].tobytes() for g in got)


def test_an_agent_cut_off_from_every_neighbour_trains_alone_one_round_per_deadline_and_rejoins(make_any):
    """Node 1 of the path 0-1 goes silent for 1.5 s (a partition): node 0 suspects it, and then, isolated, trains
    on alone at one round per deadline (neither racing to the last round nor stalling), probing; node 1 comes
    back, is re-admitted, and the two train together again."""
    ts = path_graph(make_any, 2)
    ts[0].deadline = ts[1].deadline = 0.4

    def agent(t: Transport):
        with t:
            t.handshake(1, timeout=5)
            t.exchange(0, value(t.node_id, 0, np.float32))
            if t.node_id == 1:
                time.sleep(1.5)
                k = 1
                while k < 30:
                    k = t.next_round(k)
                    t.exchange(k, value(1, k, np.float32))
                    k += 1
                return None
            t.exchange(1, value(0, 1, np.float32))  # node 1 is silent: suspected
            suspected_after, rounds, k = set(t.suspected), [], 2
            while k < 30:
                k = t.next_round(k)
                t0 = time.monotonic()
                got = sorted(t.exchange(k, value(0, k, np.float32)))
                rounds.append((time.monotonic() - t0, got))
                k += 1
            return suspected_after, rounds, dict(t.rejoined), t.rounds_alone

    results, errors = run_all(*[lambda t=t: agent(t) for t in ts])
    assert errors == [None, None]
    suspected_after, rounds, rejoined, alone = results[0]
    assert suspected_after == {1} and rejoined.get(1, 0) >= 1
    solo = [seconds for seconds, got in rounds if not got]
    assert 2 <= len(solo) <= 6 and alone == len(solo) + 1  # round 1 too: it mixed nobody
    # the pace (one deadline a round) is asserted exactly with a fake clock in tests/test_protocol.py
    assert [1] in [got for _, got in rounds] and rounds[-1][1] == [1]  # training together again


def test_a_peer_heard_again_in_one_direction_only_is_on_probation_not_waited_for_or_suspected_again(make_any):
    """After a partition one direction of a link can come back seconds before the other (TCP backoff). Here
    node 2's HELLO reaches node 1 while node 2 reads nothing: node 1 re-admits it on probation and keeps
    training with node 0 without waiting for it or suspecting it again (before probation it waited a deadline
    and suspected it a second time, a flap). Once node 2 reads and sends fresh params, it is confirmed."""
    ts = path_graph(make_any, 3)
    for t in ts:
        t.deadline = 0.4

    def middle(t: Transport):
        with t:
            t.handshake(2, timeout=5)
            rounds = []
            for k in range(ROUNDS):
                t0 = time.monotonic()
                got = sorted(t.exchange(k, value(1, k, np.float32)))
                rounds.append((time.monotonic() - t0, got, set(t.suspected), set(t.probation)))
                time.sleep(COMPUTE)
            return rounds

    def end(t: Transport):
        with t:
            t.handshake(1, timeout=5)
            for k in range(ROUNDS):
                t.exchange(k, value(0, k, np.float32))
                time.sleep(COMPUTE)

    def far(t: Transport):
        with t:
            t.handshake(1, timeout=5)
            t.exchange(0, value(2, 0, np.float32))
            time.sleep(0.8)  # silent: node 1 suspects us; we suspect it too and probe it
            t._say_hello(1, reply=False)
            time.sleep(3.0)  # reading nothing: node 1's direction is still down
            k = 1
            while k < ROUNDS:
                k = t.next_round(k)
                t.exchange(k, value(2, k, np.float32))
                time.sleep(COMPUTE)
                k += 1

    ROUNDS, COMPUTE = 60, 0.1  # rounds paced like training, so that the swarm outlasts the partition
    results, errors = run_all(lambda: end(ts[0]), lambda: middle(ts[1]), lambda: far(ts[2]), timeout=40)
    assert errors == [None, None, None]
    rounds = results[1]
    assert rounds[1][2] == {2}  # node 2 silent in round 1: suspected
    start = next(k for k, r in enumerate(rounds) if r[3] == {2})  # its HELLO came: on probation
    one_way = rounds[start + 1:start + 6]
    assert all(got == [0] and suspected == set() and probation == {2} for _, got, suspected, probation in one_way)
    assert [0, 2] in [got for _, got, *_ in rounds[start:]]  # training with it again
    assert rounds[-1][2:] == (set(), set())  # confirmed once its fresh params came; nobody suspected


def test_a_spec_mismatch_names_the_keys_that_differ(make_any):
    a0, a1 = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    t0, t1 = make_any(0, a0, {1: a1}), make_any(1, a1, {0: a0}, spec_hash="s1")
    ours = {"data.classes": "aa", "model.width": "bb", "train.algorithm": "cc"}
    theirs = {"data.classes": "ab", "model.width": "bc", "train.algorithm": "cc"}
    _, errors = run_all(lambda: t0.handshake(1, timeout=5, extra={"spec_keys": ours}),
                        lambda: t1.handshake(1, timeout=5, extra={"spec_keys": theirs}))
    for e in errors:
        assert isinstance(e, UserError) and "data.classes, model.width differ" in str(e), e


def test_agree_floods_the_minimum_of_the_proposals_in_diameter_steps(make_any):
    """Path 0-1-2-3 (diameter 3): each agent ends with the minimum lr and rounds of all four, though 0 and 3
    never talk directly."""
    ts = path_graph(make_any, 4)
    proposals = [{"lr": 0.5, "rounds": 60}, {"lr": 0.45, "rounds": 80}, {"lr": 0.6, "rounds": 70},
                 {"lr": 0.3, "rounds": 90}]

    def agent(t: Transport):
        with t:
            t.handshake(len(t.peers), timeout=5)
            return t.agree(proposals[t.node_id], steps=3)

    results, errors = run_all(*[lambda t=t: agent(t) for t in ts])
    assert errors == [None] * 4 and results == [{"lr": 0.3, "rounds": 60.0}] * 4
    def one_step(t: Transport):
        t.handshake(len(t.peers), timeout=5)
        return t.agree(proposals[t.node_id], steps=1)

    short, _ = run_all(*[lambda t=t: one_step(t) for t in path_graph(make_any, 4)])
    assert short[0]["lr"] == 0.45  # one step only reaches the neighbours: agent 3's 0.3 needs three
