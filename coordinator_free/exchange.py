"""The rounds of the gossip protocol: exchange, the wait for awaited neighbours, isolation, listen, catch-up.

A mixin of ``coordinator_free.protocol.Protocol``, which supplies the peer table, the link, the clock and
the message plumbing; membership (coordinator_free.membership) decides who is awaited and for how long
(docs/design.md, 7. "Membership").
"""
from __future__ import annotations

import numpy as np

from coordinator_free import membership as m
from coordinator_free.wire import message

SNAPSHOTS = 3  # snapshot buffers kept for reuse once the link is done sending them


class Exchange:
    """Synchronous rounds over the protocol's links."""

    def next_round(self, round: int) -> int:
        """The round to run instead of ``round``: later if every live neighbour is two or more rounds past it
        (we fell behind: paused, cut off), or, on our first round, if the neighbours we started with are all
        past it (we resumed from a checkpoint); agent.rounds then enters through ``listen``."""
        join, self._join = self._join, None
        return max(self.table.catch_up(round), join if join is not None and join > round else round)

    def exchange(self, round: int, arrays, deadline: float | None = None, *, copy: bool | None = None
                 ) -> dict[int, tuple[np.ndarray, ...]]:
        """Send ``arrays`` (the algorithm's messages, or one array) as round ``round`` to every live neighbour;
        return the awaited neighbours' round-``round`` arrays (membership: who is awaited, and for how long).
        An agent cut off from every neighbour trains on alone, one round per deadline, probing for them.
        With ``copy`` (default ``copy_sends``) the arrays are snapshot first, so the caller may overwrite them."""
        if self._closed:
            raise RuntimeError(f"node {self.node_id}: exchange on a closed transport")
        if not isinstance(round, int) or round < self._round:
            raise ValueError(f"round {round!r}: rounds must be ints >= {self._round}")
        arrays = (arrays,) if isinstance(arrays, np.ndarray) else tuple(arrays)
        if len(arrays) != self.arrays or any(a.dtype != self.dtype or a.shape != self.shape for a in arrays):
            raise ValueError(f"exchange got {[(a.dtype.name, list(a.shape)) for a in arrays]}, transport carries "
                             f"{self.arrays} x {self.dtype} {list(self.shape)}")
        deadline = self.deadline if deadline is None else deadline
        self._round, self._starting = round, False
        start = self.clock()
        for old in [r for r in self._pending if r < round]:
            del self._pending[old]
        self._tick()
        if self.table.isolated:
            self._alone(round, start, deadline)
        trackers = None
        if self.copy_sends if copy is None else copy:
            arrays, trackers = self._snapshot(arrays)
        self._pay_owed()
        frames = self._params(round, arrays)
        self._sent = {r: f for r, f in self._sent.items() if r == round - 1}
        self._sent[round] = frames
        for pid in sorted(self.table.live):
            self._send(pid, frames, trackers=trackers)
        self._wait(round, start, deadline)
        got = {p: a for p, a in sorted(self._pending.pop(round, {}).items()) if p not in self.suspected}
        if self.peers and not got:
            self.rounds_alone += 1
        if self._isolated_at is not None and not self.table.isolated:
            self.log.warning("node %d: no longer isolated at round %d (%s back) after %d rounds alone", self.node_id,
                             round, self._names(self.table.live), round - self._isolated_at)
            self._isolated_at = None
        return got

    def _alone(self, round: int, start: float, deadline: float) -> None:
        """Cut off: every neighbour suspected or departed. Wait out one deadline, probing, so that we neither
        race to the last round alone nor stall; a neighbour that comes back ends the wait."""
        if self._isolated_at is None:
            self._isolated_at = round
            self.log.warning("node %d: isolated at round %d: %s; training alone, one round per %.3g s deadline, "
                             "probing for them", self.node_id, round, self._names(self.suspected), deadline)
        t0 = self.clock()
        while self.table.isolated and (now := self.clock()) < start + deadline:
            self._tick()
            self._pump(min(start + deadline - now, self.deadline * m.PROBE))
        self.wait_seconds += self.clock() - t0

    def _wait(self, round: int, start: float, deadline: float) -> None:
        """Pump until every awaited neighbour's round-``round`` params are in, or membership gives up on them."""
        got, beat = self._pending[round], max(deadline * m.HEARTBEAT, 0.01)
        t0 = now = self.clock()
        next_beat, gave_up = start + beat, set()
        while missing := self.table.awaited(round) - got.keys() - gave_up:
            self._tick()
            if now - start >= deadline:
                self._pump(0)  # take what has arrived before deciding
                missing -= got.keys()
                suspect, wait = self.table.overdue(round, missing, start, self.clock(), deadline)
                for pid in suspect:
                    self.log.warning("node %d: peer %d (%s) missed the %.3g s deadline of round %d; suspected from "
                                     "now on", self.node_id, pid, self.peers[pid], deadline, round)
                gave_up |= missing - wait
                if not wait:
                    continue
            if now >= next_beat:
                for pid in sorted(self.table.live):
                    self._say_hello(pid, reply=True)
                self._pay_owed()
                next_beat = now + beat
            until = min(next_beat, start + deadline) if now - start < deadline else next_beat
            self._pump(max(0.0, until - now))
            now = self.clock()
        self.wait_seconds += self.clock() - t0

    def listen(self, round: int, deadline: float | None = None) -> dict[int, tuple[np.ndarray, ...]]:
        """Live neighbours' round-``round`` params, collected for at most ``deadline`` (default: the round
        deadline, within which a neighbour sends its next round) without sending ours: a rejoiner hears the
        swarm before it speaks (agent.rounds.rejoin). Returns copies; they stay buffered for ``exchange(round)``."""
        if round < self._round:
            raise ValueError(f"round {round!r}: rounds must be ints >= {self._round}")
        self._round = round
        end = self.clock() + (self.deadline if deadline is None else deadline)
        got = self._pending[round]
        while (self.table.live - got.keys() - self.table.ahead(round)) and (now := self.clock()) < end:
            self._pay_owed()
            self._pump(min(0.05, end - now))
        return {p: tuple(np.array(a) for a in arrays) for p, arrays in sorted(got.items()) if p not in self.suspected}

    def _params(self, round: int, arrays: tuple[np.ndarray, ...]) -> list:
        return message("params", sender=self.node_id, model_hash=self.model_hash, arrays=arrays, round=round,
                       algorithm=self.algorithm)

    def message_bytes(self, round: int, arrays: tuple[np.ndarray, ...]) -> int:
        """The exact bytes one round-``round`` params message with ``arrays`` puts on the wire."""
        return sum(len(f) for f in self._params(round, arrays))

    def _snapshot(self, arrays: tuple[np.ndarray, ...]) -> tuple[tuple[np.ndarray, ...], list]:
        """Copy ``arrays`` into a buffer the link no longer reads (warm buffers are reused)."""
        for buf, trackers in self._snapshots:
            if all(t.done for t in trackers):
                break
        else:
            buf, trackers = np.empty((self.arrays, *self.shape), self.dtype.newbyteorder("<")), []
            if len(self._snapshots) < SNAPSHOTS:
                self._snapshots.append((buf, trackers))
        for i, a in enumerate(arrays):
            np.copyto(buf[i], a)
        trackers.clear()
        return tuple(buf), trackers
