"""The protocol layer (coordinator_free.protocol) driven by a fake clock over an in-process link: no sockets, no
sleeps, so the timing rules of docs/design.md, 7. "Membership" are asserted exactly, in deadlines.

``FakeLink`` is a link layer whose ``receive(timeout)`` advances the fake clock instead of waiting, and whose
neighbours are scripts: callables that see every message this agent sent and answer with frames. The real-socket
behaviour of the same code is in tests/test_transport.py.
"""
import logging

import numpy as np
import pytest

from common.errors import StartTimedOut
from coordinator_free.protocol import SENT, Protocol
from coordinator_free.wire import encode

D = 1.0
P = 4
KW = dict(model_hash="m0", spec_hash="s0", algorithm="dgd", dtype="float64", shape=(P,))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeLink:
    """A link whose neighbours answer by script: ``script(pid, header, now) -> list of headers`` to deliver."""

    def __init__(self, clock: Clock, script) -> None:
        self.clock, self.script, self.inbox, self.sent = clock, script, [], []
        self.endpoint = "inproc://fake"

    def connect(self, pid: int) -> None:
        pass

    def send(self, pid: int, frames: list, track: bool = False):
        import json
        header = json.loads(bytes(frames[0]))
        self.sent.append((self.clock.now, pid, header))
        self.inbox += [self._frames(h) for h in self.script(pid, header, self.clock.now)]
        return SENT

    @staticmethod
    def _frames(h: dict) -> list:
        if h["type"] == "params":
            return [bytes(f) for f in encode(h, np.full(P, float(h["sender"])))]
        return [bytes(f) for f in encode(h)]

    def deliver(self, h: dict) -> None:
        self.inbox.append(self._frames(h))

    def receive(self, timeout: float):
        if not self.inbox:
            self.clock.now += max(timeout, 1e-3)  # nothing came: the time passes
            return []
        got, self.inbox = self.inbox, []
        return [(f, None) for f in got]

    def close(self) -> None:
        pass


def hello(sender: int, round_: int = 0, *, starting: bool = False, heard=(1,), reply: bool = True) -> dict:
    return {"type": "hello", "sender": sender, "model_hash": "m0", "spec_hash": "s0", "degree": 1,
            "round": round_, "heard": list(heard), "reply": reply, "starting": starting}


def params(sender: int, round_: int) -> dict:
    return {"type": "params", "sender": sender, "round": round_, "algorithm": "dgd", "model_hash": "m0"}


def agent(script, peers=(0, 2)) -> tuple[Protocol, FakeLink, Clock]:
    clock = Clock()
    link = FakeLink(clock, script)
    proto = Protocol(1, {p: f"tcp://10.0.0.{p}:5555" for p in peers}, link, deadline=D, clock=clock, **KW)
    return proto, link, clock


def echo(starting_until: float = -1.0, dead=()):
    """Neighbours that answer every HELLO and every round at once, ``starting`` until a time; the ones in the
    (mutable) set ``dead`` are silent."""
    def script(pid, h, now):
        if pid in dead:
            return []
        if h["type"] == "hello":
            return [hello(pid, h["round"], starting=now < starting_until)]
        if h["type"] == "params":
            return [params(pid, h["round"])]
        return []
    return script


def test_a_start_waits_without_limit_for_a_late_neighbour_naming_it_and_then_trains_with_it(caplog):
    up_at = 500 * D  # neighbour 2 comes up long after every timeout of old

    def script(pid, h, now):
        if pid == 2 and now < up_at:
            return []
        return echo(starting_until=up_at + 1)(pid, h, now)  # neighbour 0 is starting too: a fresh swarm

    proto, link, clock = agent(script)
    caplog.set_level(logging.WARNING)
    hellos = proto.handshake(2, timeout=None, warn_after=60 * D)
    assert sorted(hellos) == [0, 2] and clock.now >= up_at
    waits = [r.getMessage() for r in caplog.records if "to start" in r.getMessage()]
    assert waits and all("no HELLO from peer 2" in w for w in waits)
    assert 5 <= len(waits) <= 20  # every 5 s, then every 60 s after the first minute
    assert any("after 60 s (handshake_timeout); still waiting" in r.getMessage() for r in caplog.records)
    assert sorted(proto.exchange(0, np.zeros(P))) == [0, 2] and proto.rounds_alone == 0


def test_a_start_timeout_is_a_start_timed_out_error_at_that_time():
    proto, link, clock = agent(lambda pid, h, now: echo(starting_until=1e9)(pid, h, now) if pid == 0 else [])
    with pytest.raises(StartTimedOut, match=r"after 30 s: no HELLO from peer 2 \(tcp://10.0.0.2:5555\)"):
        proto.handshake(2, timeout=30 * D)
    assert 30 * D <= clock.now < 30.5 * D


def test_an_isolated_agent_trains_one_round_per_deadline_and_warns_once_each_way(caplog):
    dead = set()
    proto, link, clock = agent(echo(dead=dead))
    proto.handshake(2, timeout=None)
    caplog.set_level(logging.WARNING)
    starts, got = [], []
    for k in range(12):
        if k == 3:
            dead |= {0, 2}  # both neighbours die
        starts.append(clock.now)
        got.append(sorted(proto.exchange(k, np.zeros(P))))
        clock.now += 0.01 * D  # the local step
    assert got[:3] == [[0, 2]] * 3 and got[-1] == []
    alone = [k for k, g in enumerate(got) if not g]
    pace = np.diff(starts)[alone[1]:]  # once isolated: one deadline a round (plus the step)
    assert np.allclose(pace, 1.01 * D, atol=0.02 * D), pace
    assert proto.rounds_alone == len(alone) and proto.suspected == {0, 2}
    assert sum("isolated at round" in r.getMessage() for r in caplog.records) == 1
    probes = [t for t, pid, h in link.sent if h["type"] == "hello" and pid == 0 and t > starts[alone[1]]]
    assert len(probes) >= 7 and np.diff(probes).min() >= 0.99 * D  # probing on the clock, one a deadline


def test_a_neighbour_that_restarts_is_waited_for_while_it_starts_then_rejoins_without_suspicion(caplog):
    restart = (5.0 * D, 40.0 * D)  # neighbour 2 is down, then starting (its HELLOs say so) for 35 deadlines

    answered = set()

    def script(pid, h, now):
        if pid == 2 and restart[0] <= now < restart[1]:
            if now < restart[0] + 0.5 * D or h["type"] != "hello":
                return []
            return [hello(2, 3, starting=True)]  # it resumes from its round-3 checkpoint
        if pid == 2 and now >= restart[1] and h["type"] == "hello" and h["round"] not in answered:
            answered.add(h["round"])  # up again: it joins at our round and sends its params for it
            return [hello(2, h["round"]), params(2, h["round"])]
        return echo()(pid, h, now)

    proto, link, clock = agent(script)
    proto.handshake(2, timeout=None)
    rounds = []
    for k in range(8):
        rounds.append(sorted(proto.exchange(k, np.zeros(P))))
        clock.now += 1.0 * D
    assert proto.suspected == set() and proto.rounds_alone == 0
    assert all(r == [0, 2] for r in rounds), rounds
    assert clock.now > restart[1]  # it waited out the restart instead of suspecting
    owed = [h["round"] for t, pid, h in link.sent if pid == 2 and h["type"] == "params" and t >= restart[0]]
    assert any(owed.count(r) == 2 for r in owed), owed  # a round sent again, for its new life


def test_a_probation_peer_that_never_confirms_beside_a_confirmed_neighbour_is_suspected_in_six_deadlines():
    """Issue 19's probation bug, through the protocol: peer 2 comes back with a HELLO and stays silent."""
    def script(pid, h, now):
        return echo()(pid, h, now) if pid == 0 else []

    proto, link, clock = agent(script)
    for pid in (0, 2):  # a start done with both
        link.deliver(hello(pid))
    proto._pump(0)
    for pid in (0, 2):
        proto.table[pid].told = True
    proto.table.start_done(clock.now)
    k = 0
    while 2 not in proto.suspected:  # silent: suspected at the end of its first overdue round
        proto.exchange(k, np.zeros(P))
        k, clock.now = k + 1, clock.now + 0.05 * D
    link.deliver(hello(2, k, reply=False))
    proto.exchange(k, np.zeros(P))
    back = clock.now
    assert proto.probation == {2}
    while 2 in proto.probation:
        k, clock.now = k + 1, clock.now + 0.05 * D
        proto.exchange(k, np.zeros(P))
    assert 2 in proto.suspected and clock.now - back == pytest.approx(6 * D, abs=0.1 * D)
