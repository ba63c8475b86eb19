"""Who is in the swarm, from one agent's side: a socket-free peer table with one state per neighbour.

The table owns no socket and reads no clock: every event takes ``now`` (seconds, any monotonic origin)
and returns what changed, so the protocol layer (coordinator_free.protocol) acts on it and the tests
drive it with a fake clock. docs/design.md, 7. "Membership" holds the same table.

States: HANDSHAKE (not yet confirmed at start), STARTING (alive, but its HELLO says it has not begun
its rounds: it is waited for and never suspected while it is heard), LIVE, PROBATION (re-admitted,
not yet proven to hear us), SUSPECTED, DEPARTED (said BYE).

  state      event                                   next state   effect
  HANDSHAKE  start done, its last HELLO starting     STARTING     awaited from our first round on
  HANDSHAKE  start done, otherwise                   LIVE
  HANDSHAKE  start done while it was never heard     SUSPECTED    (a start beside training peers)
  LIVE       HELLO with starting (it restarted)      STARTING     "restarted": resend our last rounds
  STARTING   params, or a HELLO without starting     LIVE
  SUSPECTED  HELLO with starting                     STARTING     "readmitted": new connection, resend
  DEPARTED   HELLO with starting                     STARTING     "readmitted"
  SUSPECTED  HELLO                                   PROBATION    "readmitted"; confirm = max(ours, its round) + 2
  DEPARTED   HELLO                                   PROBATION    "readmitted"
  PROBATION  HELLO with starting                     STARTING
  PROBATION  params for a round >= confirm           LIVE         "confirmed"
  PROBATION  tick, PROBATION deadlines since         SUSPECTED    "expired"
  LIVE       round overdue: silent SILENCE           SUSPECTED    "silent"
  STARTING   round overdue: silent SILENCE           SUSPECTED    "silent"
  LIVE       round overdue: heard, MAX_WAIT passed   SUSPECTED    "stuck"
  HANDSHAKE  BYE                                     HANDSHAKE    unconfirmed again: waited for
  any        BYE before our first round              SUSPECTED    it stopped in its start: probed
  any other  BYE                                     DEPARTED

A round waits for LIVE and STARTING neighbours that are not past it (one past it has sent its message
for the round, if it ever will: a link keeps order); with none of those it waits for PROBATION ones up to
a deadline. Past the round's deadline, an awaited neighbour is suspected if it has been silent for
SILENCE; a LIVE one that is heard (it is waiting on someone itself) is waited for up to MAX_WAIT from the
round's start. A neighbour AHEAD (two or more rounds past us) moved on without us: when every live one
is, we are the one behind, and skip to the round after the lowest of theirs (``catch_up``).

Timing constants, in round deadlines (``deadline`` seconds each):
  HEARTBEAT = 1/4   while waiting, a HELLO to every live neighbour (its silence clock restarts)
  SILENCE   = 1     an awaited neighbour silent this long, past the round's deadline, is suspected
  MAX_WAIT  = 10    a heard LIVE neighbour that sends nothing for our round is suspected after this
  PROBE     = 1     a HELLO to every SUSPECTED and PROBATION neighbour
  RECONNECT = 4     a SUSPECTED neighbour silent this long (and since our last connection) gets a new one
  PROBATION = 6     a re-admitted neighbour not confirmed within this is suspected again
  START_GRACE = 1   at start, once a confirmed neighbour is training, a never-heard one gets this long
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

HANDSHAKE, STARTING, LIVE, PROBATION, SUSPECTED, DEPARTED = (
    "handshake", "starting", "live", "probation", "suspected", "departed")
HEARTBEAT = 0.25
SILENCE = 1.0
MAX_WAIT = 10.0
PROBE = 1.0
RECONNECT = 4.0
PROBATION_DEADLINES = 6.0
START_GRACE = 1.0
AHEAD = 2  # a neighbour this many rounds past ours moved on without us: not waited for


@dataclass
class Peer:
    """One neighbour as this agent sees it."""

    state: str = HANDSHAKE
    since: float = -math.inf  # when it entered ``state``
    heard_at: float = -math.inf  # its last valid message
    connected_at: float = -math.inf  # our last (re)connection to it
    round: int = -1  # its latest known round (from HELLOs and params)
    hello: dict | None = None  # its latest valid HELLO header
    starting: bool = False  # its latest HELLO said it has not begun its rounds
    acked: bool = False  # its HELLO lists us
    told: bool = False  # we have sent it a HELLO listing it
    confirm: int = 0  # PROBATION: params for a round >= this confirm it
    rejoined: int = 0  # re-admissions
    mismatch: str | None = None  # a hash or version mismatch seen at start (a UserError there)

    @property
    def confirmed(self) -> bool:
        """Handshake done both ways: we hold its HELLO, it lists us, and we told it."""
        return self.hello is not None and self.acked and self.told


@dataclass
class PeerTable:
    """Every neighbour's record, and the transitions of the table in the module docstring."""

    ids: list[int]
    deadline: float
    peers: dict[int, Peer] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = sorted(int(p) for p in self.ids)
        self.peers = {p: Peer() for p in self.ids}
        self._next_probe = -math.inf

    def __getitem__(self, pid: int) -> Peer:
        return self.peers[pid]

    def in_state(self, *states: str) -> set[int]:
        return {p for p, r in self.peers.items() if r.state in states}

    @property
    def live(self) -> set[int]:
        """Neighbours sent to: all but the suspected and departed ones."""
        return self.in_state(HANDSHAKE, STARTING, LIVE, PROBATION)

    @property
    def isolated(self) -> bool:
        """Every neighbour suspected or departed, and at least one suspected: we are the one cut off."""
        return bool(self.ids) and not self.live and bool(self.in_state(SUSPECTED))

    def _move(self, pid: int, state: str, now: float) -> None:
        self.peers[pid].state, self.peers[pid].since = state, now

    # -- events --------------------------------------------------------------------------------
    def on_hello(self, pid: int, hello: dict, me: int, our_round: int, now: float) -> str | None:
        """A valid HELLO from ``pid``. Returns "readmitted" (it was suspected or departed), "restarted" (it
        was live and says it is starting again) or None."""
        p = self.peers[pid]
        p.heard_at, p.hello, p.starting = now, hello, hello.get("starting") is True
        p.acked = p.acked or me in (hello.get("heard") or ())
        p.round = int(hello["round"]) if p.starting else max(p.round, int(hello["round"]))
        if p.state in (SUSPECTED, DEPARTED):
            p.rejoined += 1
            if p.starting:
                self._move(pid, STARTING, now)
            else:
                self._move(pid, PROBATION, now)
                p.confirm = max(our_round, p.round) + 2
            return "readmitted"
        if p.starting and p.state in (LIVE, PROBATION):
            was = p.state
            self._move(pid, STARTING, now)
            return "restarted" if was == LIVE else None
        if not p.starting and p.state == STARTING:
            self._move(pid, LIVE, now)
        return None

    def on_params(self, pid: int, round: int, now: float) -> str | None:
        """Params of ``round`` from ``pid``. Returns "confirmed" when they end its probation."""
        p = self.peers[pid]
        p.heard_at, p.round = now, max(p.round, round)
        if p.state == STARTING:
            self._move(pid, LIVE, now)
        elif p.state == PROBATION and round >= p.confirm:
            self._move(pid, LIVE, now)
            return "confirmed"
        return None

    def on_heard(self, pid: int, now: float) -> None:
        """Any other valid message from ``pid`` (agree, share, shared): it is alive."""
        self.peers[pid].heard_at = now

    def on_bye(self, pid: int, now: float, starting: bool = False) -> str | None:
        """``pid`` said BYE: "departed" if that is news, None if not. Before our first round (``starting``) it
        is "left during start": a board stopped in its start (a mismatch, its operator) is restarted, so it
        is waited for again while our start lasts, and SUSPECTED (probed, re-admitted) once it is over: we
        never train on as if it had finished."""
        p = self.peers[pid]
        p.heard_at = now
        if starting and p.state in (STARTING, LIVE, PROBATION):
            self._move(pid, SUSPECTED, now)
            return "left during start"
        if p.state == HANDSHAKE and p.mismatch:  # it stopped on the mismatch: both sides know of it
            p.acked = p.told = True
            return None
        if p.state == HANDSHAKE:
            p.hello, p.acked, p.told, p.starting = None, False, False, False
            return "left during start"
        if p.state == DEPARTED:
            return None
        self._move(pid, DEPARTED, now)
        return "departed"

    def start_done(self, now: float) -> None:
        """The start is over: confirmed neighbours become LIVE (STARTING if they still are), the others
        SUSPECTED, to be probed and re-admitted when they come."""
        for pid, p in self.peers.items():
            if p.state == HANDSHAKE:
                self._move(pid, (STARTING if p.starting else LIVE) if p.confirmed else SUSPECTED, now)

    def start_ready(self, now: float, since_training: float | None) -> bool:
        """Whether the start may end: every neighbour confirmed; or, once a confirmed neighbour is training
        (``since_training``: when we first saw one), every unconfirmed one never heard for START_GRACE."""
        waiting = [p for p in self.peers.values() if p.state == HANDSHAKE and not p.confirmed]
        if not waiting:
            return True
        if since_training is None or now - since_training < START_GRACE * self.deadline:
            return False
        return all(now - p.heard_at >= START_GRACE * self.deadline for p in waiting)

    def training_neighbour(self) -> bool:
        """A confirmed neighbour that is past its start (its HELLO does not say starting)."""
        return any(p.confirmed and not p.starting for p in self.peers.values())

    def on_tick(self, now: float) -> tuple[list[int], list[int], list[int]]:
        """The clock's transitions: (expired, probe, reconnect). ``expired``: PROBATION neighbours not
        confirmed within PROBATION deadlines, now SUSPECTED. Every PROBE deadline, ``probe`` lists the
        SUSPECTED and PROBATION neighbours to send a HELLO, and ``reconnect`` the SUSPECTED ones silent for
        RECONNECT deadlines since our last connection (the protocol reconnects them and records it with
        ``on_connected``)."""
        expired = sorted(p for p in self.in_state(PROBATION)
                         if now - self.peers[p].since >= PROBATION_DEADLINES * self.deadline)
        for pid in expired:
            self._move(pid, SUSPECTED, now)
        if now < self._next_probe:
            return expired, [], []
        self._next_probe = now + PROBE * self.deadline
        probe = sorted(self.in_state(SUSPECTED, PROBATION))
        reconnect = [p for p in probe if self.peers[p].state == SUSPECTED and
                     now - max(self.peers[p].connected_at, self.peers[p].heard_at) >= RECONNECT * self.deadline]
        return expired, probe, reconnect

    def on_connected(self, pid: int, now: float) -> None:
        self.peers[pid].connected_at = now

    # -- rounds --------------------------------------------------------------------------------
    def ahead(self, round: int) -> set[int]:
        """Live neighbours AHEAD or more rounds past ``round``: they moved on without us and will not send it."""
        return {p for p in self.live if self.peers[p].round >= round + AHEAD}

    def awaited(self, round: int) -> set[int]:
        """The neighbours round ``round`` waits for: LIVE and STARTING ones not past it; with none of those,
        the PROBATION ones not past it (see ``overdue`` for how long). A neighbour past ``round`` has sent
        its round-``round`` message already, if it ever will (a link keeps order): it arrived or was lost."""
        past = {p for p in self.live if self.peers[p].round > round}
        return (self.in_state(HANDSHAKE, LIVE, STARTING) - past) or (self.in_state(PROBATION) - past)

    def overdue(self, round: int, missing: set[int], start: float, now: float, deadline: float | None = None
                ) -> tuple[list[int], set[int]]:
        """Past round ``round``'s deadline (it began at ``start``), what to do about the ``missing`` awaited
        neighbours: (suspect, keep waiting for). Suspected now: a neighbour silent for SILENCE, and a LIVE
        one heard but sending nothing for MAX_WAIT; no longer waited for: PROBATION ones, and neighbours
        already past this round. The suspected ones are moved to SUSPECTED here. ``deadline``: this round's, if
        not the table's."""
        deadline = self.deadline if deadline is None else deadline
        if now - start < deadline:
            return [], set(missing)
        suspect, wait = [], set()
        for pid in sorted(missing):
            p = self.peers[pid]
            if p.state == PROBATION or p.round > round:
                continue
            if now - p.heard_at >= SILENCE * deadline or (p.state == LIVE and now - start >= MAX_WAIT * deadline):
                suspect.append(pid)
            else:
                wait.add(pid)
        for pid in suspect:
            self._move(pid, SUSPECTED, now)
        return suspect, wait

    def catch_up(self, round: int) -> int:
        """The round to run instead of ``round``: the round after the lowest round of our live neighbours if
        every one of them is AHEAD or more past it (we are the one left behind: paused, cut off), else
        ``round``. The round after: they are in the lowest one already, and do not wait for us, so its
        messages may have gone before they took us back; the next one's are yet to be sent, and we hear them.
        A neighbour behind us or level with us (one that is restarting, say) keeps us where we are."""
        rounds = [self.peers[p].round for p in self.in_state(LIVE, STARTING, PROBATION)]
        low = min(rounds, default=-1)
        return low + 1 if low >= round + AHEAD else round
