"""The round log (docs/design.md, section 6, "Round log"): one JSON line per round, written and read back.

``RoundLog`` appends the lines as an agent runs; ``log_lines``, ``read_round_log`` and ``history_from_log``
read them: a resumed agent its earlier life, the loopback swarm an agent that died before writing its
results, ``fleet status`` a board, ``tune --observed`` the rounds a board has trained.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

HISTORY_KEYS = ("round", "train_loss", "test_loss", "test_accuracy")  # an agent's per-round lists; "round": entry i is that round's


class RoundLog:
    """Appends one JSON line per round and flushes it, so a crash loses at most one line. The file is
    only ever appended to: each start of the agent adds an ``{"event": "start", "run": n}`` line (n counts
    the starts), and a resumed agent continues it (a round logged twice: the later line counts)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run = 1 + sum(1 for r in log_lines(path) if r.get("event") == "start")
        cut = _ends_mid_line(path)
        self.fh = open(path, "a", buffering=1)  # noqa: SIM115 - closed by __exit__
        if cut:  # the last run died mid-line: end that line, or our first one would be glued to it and lost
            self.fh.write("\n")

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")

    def __enter__(self) -> "RoundLog":
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def _ends_mid_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) != b"\n"


def log_lines(path: Path) -> list[dict]:
    """Every JSON object line of a round log, rounds and events, in order; a line cut short by a crash
    is skipped."""
    out = []
    for line in (Path(path).read_text().splitlines() if Path(path).exists() else []):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def read_round_log(path: Path) -> dict[int, dict]:
    """The round log as {round: record}: the last line of each round counts; event lines are skipped."""
    return {r["round"]: r for r in log_lines(path) if "train_loss" in r}


def history_from_log(path: Path, before: float = math.inf) -> dict[str, list]:
    """The results' per-round lists (``HISTORY_KEYS``) of the rounds logged before ``before`` (default: all),
    in round order: a resumed agent's earlier life, or all of an agent that died before writing its results."""
    records = [r for k, r in sorted(read_round_log(path).items()) if k < before]
    return {key: [r[key] for r in records if key in r] for key in HISTORY_KEYS}
