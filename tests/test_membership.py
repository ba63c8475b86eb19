"""Unit tests of coordinator_free.membership: the peer table driven by a fake clock, with no sockets and no sleeps.

Each test walks one row (or a few) of the transition table in the module docstring, with times in deadlines.
"""
import pytest

from coordinator_free import membership as m

D = 2.0  # the round deadline, seconds
ME = 1


def hello(round_: int = 0, *, starting: bool = False, heard=(ME,)) -> dict:
    return {"round": round_, "starting": starting, "heard": list(heard), "degree": 2}


def started(ids=(0, 2), round_: int = 0, now: float = 0.0) -> m.PeerTable:
    """A table whose start is done, every neighbour LIVE at ``round_``."""
    t = m.PeerTable(list(ids), D)
    for pid in ids:
        t.on_hello(pid, hello(round_), ME, round_, now)
        t[pid].told = True
    t.start_done(now)
    assert t.in_state(m.LIVE) == set(ids)
    return t


def test_a_silent_peer_on_probation_beside_a_confirmed_neighbour_is_suspected_within_six_deadlines():
    """The bug of issue 19: node 1 of the path 0-1-2 holds peer 2 on probation while 0 is confirmed and 2 stays
    silent. Before, probation peers were left out of the round's wait whenever a confirmed neighbour existed,
    and so never reached the check that expires them: `suspected: [] probation: [2]` after 100 deadlines."""
    t = started()
    t[2].state = m.SUSPECTED
    assert t.on_hello(2, hello(5), ME, our_round=5, now=0.0) == "readmitted"
    assert t[2].state == m.PROBATION and t[2].confirm == 7
    now, k = 0.0, 5
    suspected_at = None
    while now < 100 * D:
        assert t.awaited(k) == {0}  # the confirmed neighbour paces the rounds; 2 is not waited for
        t.on_params(0, k, now)
        expired, _, _ = t.on_tick(now)
        if expired:
            suspected_at = now
            break
        now, k = now + 0.1 * D, k + 1
    assert expired == [2] and t[2].state == m.SUSPECTED
    assert suspected_at == pytest.approx(6 * D, abs=0.11 * D)


def test_probation_ends_with_params_two_rounds_past_both_rounds():
    t = started()
    t[0].state = m.SUSPECTED
    t.on_hello(0, hello(3), ME, our_round=9, now=0.0)
    assert t[0].confirm == 11
    assert t.on_params(0, 10, 0.5) is None and t[0].state == m.PROBATION  # may have sat in a queue
    assert t.on_params(0, 11, 0.6) == "confirmed" and t[0].state == m.LIVE


def test_an_awaited_peer_is_suspected_only_after_a_deadline_of_silence_and_a_heard_one_is_waited_for():
    t = started()
    t.on_params(0, 4, 0.0)
    t.on_heard(2, 0.0)
    missing = {0, 2}
    assert t.overdue(4, missing, start=0.0, now=0.9 * D) == ([], {0, 2})  # before the deadline: wait
    t.on_heard(2, 0.9 * D)  # a heartbeat: 2 waits on someone itself
    suspect, wait = t.overdue(4, {2}, start=0.0, now=1.2 * D)
    assert suspect == [] and wait == {2}
    suspect, wait = t.overdue(4, {2}, start=0.0, now=1.95 * D)  # silent one deadline since its heartbeat
    assert suspect == [2] and wait == set() and t[2].state == m.SUSPECTED


def test_a_heard_live_peer_that_never_sends_the_round_is_suspected_at_max_wait():
    t = started()
    for step in range(1, 60):
        now = step * 0.25 * D
        t.on_heard(0, now)  # heartbeats every deadline/4, never its params
        suspect, wait = t.overdue(0, {0}, start=0.0, now=now)
        if suspect:
            break
    assert suspect == [0] and now == pytest.approx(m.MAX_WAIT * D)


def test_a_starting_peer_is_never_suspected_while_it_is_heard():
    """A neighbour that restarts (kill -9, then systemd) says so in its HELLO: the round waits for it as long as
    its HELLOs keep coming, far past MAX_WAIT, and suspects it only once it falls silent."""
    t = started(round_=60)
    assert t.on_hello(2, hello(50, starting=True), ME, 61, now=0.0) == "restarted"
    assert t[2].state == m.STARTING and t[2].round == 50  # its resume point, not its old round
    assert 2 in t.awaited(61)
    for step in range(1, 200):
        now = step * 0.1 * D
        t.on_hello(2, hello(50, starting=True), ME, 61, now)
        assert t.overdue(61, {2}, start=0.0, now=now) == ([], {2})
    suspect, _ = t.overdue(61, {2}, start=0.0, now=now + 1.01 * D)
    assert suspect == [2]


def test_a_suspected_peer_that_says_it_is_starting_comes_back_starting_not_on_probation():
    t = started()
    t[0].state = m.SUSPECTED
    assert t.on_hello(0, hello(58, starting=True), ME, 64, now=1.0) == "readmitted"
    assert t[0].state == m.STARTING and 0 in t.awaited(64)
    assert t.on_hello(0, hello(64), ME, 64, now=1.5) is None and t[0].state == m.LIVE


def test_a_peer_past_our_round_is_not_waited_for_and_all_ahead_means_catch_up():
    t = started(round_=10)
    t.on_params(0, 11, 0.0)  # one round past ours: it sent round 10 already, if at all
    assert t.awaited(10) == {2}
    assert t.catch_up(10) == 10  # 2 is level with us
    t.on_hello(2, hello(30), ME, 10, 0.0)
    t.on_hello(0, hello(29), ME, 10, 0.0)
    assert t.catch_up(10) == 30  # every live neighbour is two or more rounds past: we are the one behind,
    # and join at the round after the lowest of theirs, whose messages are yet to be sent


def test_a_restarting_neighbour_behind_us_keeps_a_healthy_board_where_it_is():
    """The restart bug of issue 19: a healthy board must not adopt a returning board's round and parameters."""
    t = started(round_=73)
    t[0].state = m.SUSPECTED
    t.on_hello(0, hello(75, starting=False), ME, 73, 0.0)  # the returning board, which jumped ahead
    assert t.catch_up(73) == 73  # neighbour 2 is level with us: we are not behind


def test_isolation_is_every_neighbour_suspected_or_departed_with_one_suspected():
    t = started()
    assert not t.isolated
    t[0].state, t[2].state = m.SUSPECTED, m.DEPARTED
    assert t.isolated
    t[0].state = m.DEPARTED
    assert not t.isolated  # everybody finished: nobody to wait for


def test_probes_every_deadline_and_a_reconnect_after_four_silent_deadlines():
    t = started()
    t[2].state = m.SUSPECTED
    t[2].heard_at = 0.0
    t.on_connected(2, 0.0)
    times = [i * 0.5 * D for i in range(12)]
    probes = [t.on_tick(now)[1:] for now in times]
    assert [now for now, (probe, _) in zip(times, probes) if probe] == [0.0, D, 2 * D, 3 * D, 4 * D, 5 * D]
    assert [now for now, (_, rec) in zip(times, probes) if rec] == [4 * D, 5 * D]  # silent 4 deadlines


def test_a_start_waits_for_every_neighbour_until_one_is_training():
    t = m.PeerTable([0, 2], D)
    t.on_hello(0, hello(0, starting=True), ME, 0, 0.0)
    t[0].told = True
    for now in (1.0, 100.0, 10_000.0):  # a late board delays the start, however late
        assert not t.training_neighbour() and not t.start_ready(now, None)
    t.on_hello(2, hello(0, starting=True), ME, 0, 10_001.0)
    t[2].told = True
    assert t.start_ready(10_001.0, None)
    t.start_done(10_001.0)
    assert t.in_state(m.STARTING) == {0, 2}  # both still starting: awaited, never suspected while heard


def test_a_start_beside_a_running_swarm_goes_on_without_a_silent_neighbour():
    t = m.PeerTable([0, 2], D)
    t.on_hello(0, hello(40), ME, 12, 0.0)  # training at round 40
    t[0].told = True
    assert t.training_neighbour()
    assert not t.start_ready(0.5 * D, since_training=0.0)
    assert t.start_ready(1.0 * D, since_training=0.0)  # 2 never heard for START_GRACE
    t.start_done(1.0 * D)
    assert t[0].state == m.LIVE and t[2].state == m.SUSPECTED


def test_bye_departs_from_any_state_but_the_start_where_the_peer_is_waited_for_again():
    t = started()
    for state in (m.LIVE, m.SUSPECTED, m.PROBATION, m.STARTING):
        t[0].state = state
        assert t.on_bye(0, 1.0) == "departed" and t[0].state == m.DEPARTED
    assert t.on_bye(0, 2.0) is None
    s = m.PeerTable([0, 2], D)
    for pid in (0, 2):
        s.on_hello(pid, hello(0, starting=True), ME, 0, 0.0)
        s[pid].told = True
    assert s.on_bye(2, 1.0) == "left during start" and s[2].state == m.HANDSHAKE and not s[2].confirmed
    assert not s.start_ready(2.0, None)  # it is waited for, as one not yet up
