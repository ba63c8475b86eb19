"""A fleet of real boards: bundles from an inventory, and their status from their logs.

``read_inventory`` reads the address list: a text file with one board per line, ``[ID] ADDRESS
[PROFILE]`` (``#`` starts a comment; ADDRESS is ``host`` or ``host:port``, port 5555 by default; ids
are given on every line or on none, then they follow the line order), or a TOML file with
``[[board]]`` tables of ``id``, ``address`` and ``profile``. ``write_bundles`` turns it and a spec into
one self-contained folder per board (docs/deploying.md): its node file, the shared spec, its keypair
and its neighbours' public keys, a slot for its own data, a systemd unit and a README whose start
commands are the ones a rehearsal runs (``start_commands``). ``fleet_status`` reads bundles back: a
rehearsal's directly, real boards' from the logs copied off them.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from agent.node import NodeConfig, load_node, node_table
from agent.roundlog import read_round_log
from agent.spec import Spec
from agent.swarm import Swarm
from common.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_START_TIMED_OUT, UserError
from common.files import read_toml, write_npz, write_text, write_toml
from coordinator_free.keys import new_keypair
from firmware_profiles.profile import profile_path

DEFAULT_PORT = 5555
INSTALL_ROOT = "/opt/p2pntk"  # where the bundle README and the systemd unit put a bundle on its board
SERVICE = "p2pntk-agent.service"
START_HEADING = "## Start it by hand"  # the bundle README's block under this heading is what rehearse runs


@dataclass(frozen=True)
class Board:
    """One line of the inventory."""

    id: int
    host: str
    port: int
    profile: str | None = None

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def _board(where: str, id_: int, address: str, profile: str | None) -> Board:
    m = re.fullmatch(r"([A-Za-z0-9.\-]+)(?::(\d+))?", address)
    if not m:
        raise UserError(f"{where}: address {address!r}: expected host or host:port (e.g. 10.0.0.12:5555)")
    port = int(m.group(2) or DEFAULT_PORT)
    if not 1 <= port <= 65535:
        raise UserError(f"{where}: port {port} is out of range 1-65535")
    if profile is not None:
        try:
            profile_path(profile)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    return Board(id_, m.group(1), port, profile)


def read_inventory(path: str | Path) -> list[Board]:
    """The boards of an inventory file, sorted by id; ids must be 0..N-1, addresses distinct."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"inventory {path} does not exist")
    rows: list[tuple[str, int | None, str, str | None]] = []
    if path.suffix == ".toml":
        table = read_toml(path, f"inventory {path}")
        boards = table.get("board")
        if not isinstance(boards, list) or not boards:
            raise UserError(f"inventory {path}: expected [[board]] tables with id, address and profile")
        for i, b in enumerate(boards):
            where = f"inventory {path}: board {i + 1}"
            unknown = set(b) - {"id", "address", "profile"}
            if unknown or "address" not in b:
                raise UserError(f"{where}: expected keys id, address, profile (got {sorted(b)})")
            if "id" in b and (not isinstance(b["id"], int) or isinstance(b["id"], bool)):
                raise UserError(f"{where}: id = {b['id']!r}: expected an integer")
            rows.append((where, b.get("id"), str(b["address"]), b.get("profile")))
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"inventory {path}, line {n}"
            id_ = int(words.pop(0)) if words[0].isdigit() else None
            if not words or len(words) > 2:
                raise UserError(f"{where}: {line.strip()!r}: expected [ID] ADDRESS [PROFILE]")
            rows.append((where, id_, words[0], words[1] if len(words) > 1 else None))
    if not rows:
        raise UserError(f"inventory {path} lists no boards")
    given = [r[1] is not None for r in rows]
    if any(given) and not all(given):
        raise UserError(f"inventory {path}: give an id on every line or on none (then they follow the line order)")
    boards = [_board(where, i if id_ is None else id_, address, profile)
              for i, (where, id_, address, profile) in enumerate(rows)]
    ids = sorted(b.id for b in boards)
    if ids != list(range(len(boards))):
        raise UserError(f"inventory {path}: ids {ids} must be 0..{len(boards) - 1}, each once")
    seen: dict[str, int] = {}
    for b in boards:
        if b.address in seen:
            raise UserError(f"inventory {path}: boards {seen[b.address]} and {b.id} share the address {b.address}")
        seen[b.address] = b.id
    return sorted(boards, key=lambda b: b.id)


def bundle_dir(root: Path, board_id: int) -> Path:
    return Path(root) / f"board-{board_id}"


def write_bundles(boards: list[Board], spec: Spec, root: str | Path, *, rehearsal_data: bool = False,
                  round_deadline: float = 10.0, discovery: str = "static") -> tuple[Spec, list[Path]]:
    """One bundle folder per board under ``root``; returns the spec they share and the bundle folders.

    The swarm's size is the inventory's (``network.agents`` is set to it). With ``rehearsal_data``, each
    board's data slot holds its slice of the spec's data set, as ``simulate`` splits it, and the
    shared test set; otherwise the slot is empty and its README says what to put there. With
    ``discovery = "zeroconf"`` boards find their neighbours over mDNS, each advertising its inventory
    address (the static peer table stays in the node file, unused, as a record of the plan).
    """
    root = Path(root)
    if spec.network.agents != len(boards):
        spec = spec.updated({"network.agents": len(boards)})
    swarm = Swarm.from_spec(spec)
    keys = root / ".keys"
    for b in boards:
        new_keypair(keys, f"board-{b.id}")
    folders = []
    for b in boards:
        folder = bundle_dir(root, b.id)
        neighbours = sorted(swarm.graph.neighbors(b.id))
        (folder / "keys").mkdir(parents=True, exist_ok=True)
        for name in [f"board-{b.id}.key", f"board-{b.id}.key_secret"] + [f"board-{j}.key" for j in neighbours]:
            shutil.copy2(keys / name, folder / "keys" / name)
        write_toml(folder / "spec.toml", spec.to_dict())
        test = None
        if rehearsal_data:
            X, Y = swarm.problem.agent_data(b.id)
            write_npz(folder / "data" / "own.npz", X=X, Y=Y)
            write_npz(folder / "data" / "test.npz", X=swarm.problem.X_test, Y=swarm.problem.Y_test)
            test = "data/test.npz"
        node = NodeConfig(id=b.id, bind=f"tcp://0.0.0.0:{b.port}", data="data/own.npz", test=test, spec="spec.toml",
                          out="results.json", log="agent.jsonl", checkpoint="checkpoint.npz",
                          round_deadline=round_deadline, profile=b.profile, discovery=discovery,
                          advertise=b.host if discovery == "zeroconf" and _is_ipv4(b.host) else None,
                          peers={j: boards[j].address for j in neighbours},
                          secret_key=f"keys/board-{b.id}.key_secret",
                          peer_keys={j: f"keys/board-{j}.key" for j in neighbours})
        write_toml(folder / "node.toml", node_table(node))
        write_text(folder / "data" / "README.md", _data_readme(spec, rehearsal_data))
        write_text(folder / SERVICE, systemd_unit(b.id))
        write_text(folder / "README.md", _bundle_readme(b, neighbours, boards, spec))
        folders.append(folder)
    shutil.rmtree(keys)
    return spec, folders


def _is_ipv4(host: str) -> bool:
    return re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", host) is not None


def systemd_unit(board_id: int) -> str:
    """The service that runs a bundle on its board: restarts after a crash or a reboot (the agent resumes
    from its checkpoint), but not after a bad config (exit 2) or a diverged run (exit 4)."""
    folder = f"{INSTALL_ROOT}/board-{board_id}"
    return f"""[Unit]
Description=p2p-ntk agent, board {board_id}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=p2pntk
WorkingDirectory={folder}
ExecStart={INSTALL_ROOT}/venv/bin/p2pntk agent node.toml
# a crash or a reboot restarts it, and it resumes from checkpoint.npz; so does a start_timeout that
# passed (exit {EXIT_START_TIMED_OUT}: a late neighbour may be up by then); a bad node file, spec or data
# file (exit {EXIT_BAD_INPUT}) or a diverged run (exit {EXIT_DIVERGED}) would only fail again: fix it first
Restart=on-failure
RestartSec=15
RestartPreventExitStatus={EXIT_BAD_INPUT} {EXIT_DIVERGED}
# systemctl stop sends SIGTERM: the agent says BYE, checkpoints, writes its results and exits 143
KillSignal=SIGTERM
SuccessExitStatus=143
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
"""


def _data_readme(spec: Spec, rehearsal: bool) -> str:
    classes = spec.data.classes
    have = ("It holds this board's slice of the spec's data set, for a rehearsal. On a real board, replace it "
            "with the board's own data.\n") if rehearsal else "It is empty: put the board's own data here.\n"
    return f"""# This board's data

`own.npz` is this board's training data; it never leaves the board. {have}
Format: a NumPy `.npz` with
- `X`: float array (n, d), one row per sample, d features as in the spec's data set
  (`{spec.data.name}`); a board whose X has another d is refused at start with one line;
- `y`: labels (n,), each one of the spec's classes {classes}, or `Y`: targets (n, k) as the spec encodes them.

Write it with `numpy.savez("own.npz", X=X, y=y)`. An optional shared test set goes in `test.npz`, same
format; add `test = "data/test.npz"` to `node.toml` to have the board report test loss and accuracy.
"""


def _bundle_readme(b: Board, neighbours: list[int], boards: list[Board], spec: Spec) -> str:
    folder = f"{INSTALL_ROOT}/board-{b.id}"
    peers = "\n".join(f"- board {j} at `{boards[j].address}`" for j in neighbours)
    return f"""# Board {b.id} of a {len(boards)}-board p2p-ntk swarm

This folder is everything board {b.id} needs: `node.toml` (its id, the port it listens on, its
neighbours), `spec.toml` (the experiment every board shares), `keys/` (its own keypair and its
neighbours' public keys: keep `keys/board-{b.id}.key_secret` on this board only), `data/` (its own data:
see `data/README.md`) and `{SERVICE}` (a systemd unit). It listens on port {b.port} and talks to
{peers}

## Copy it onto the board

    scp -r board-{b.id} pi@{b.host}:/tmp/ && ssh pi@{b.host} 'sudo mkdir -p {INSTALL_ROOT} && sudo mv /tmp/board-{b.id} {INSTALL_ROOT}/'

Install p2p-ntk on the board first (docs/deploying.md: `python3 -m venv {INSTALL_ROOT}/venv` and
`{INSTALL_ROOT}/venv/bin/pip install p2p-ntk`), and put its data in `data/own.npz`.

{START_HEADING}

```sh
cd {folder}
p2pntk agent node.toml
```

It prints a progress line every few seconds and a summary at the end; `-v` prints every round.
Results go to `results.json`, the trained parameters to `results.params.npz`, a line per round to
`agent.jsonl`, and a checkpoint every 10 rounds to `checkpoint.npz`: started again, it resumes.

## Run it as a service

    sudo useradd --system p2pntk; sudo chown -R p2pntk {folder}
    sudo cp {folder}/{SERVICE} /etc/systemd/system/ && sudo systemctl daemon-reload
    sudo systemctl enable --now {SERVICE}
    journalctl -u {SERVICE} -f

## Collect its log for `p2pntk fleet status`

    scp pi@{b.host}:{folder}/agent.jsonl pi@{b.host}:{folder}/results.json board-{b.id}/
"""


def start_commands(bundle: str | Path) -> list[list[str]]:
    """The commands under the bundle README's start heading (``cd`` lines left out: they are run in the
    bundle folder), each split into words: what a rehearsal runs, so the README is what gets tested."""
    text = (Path(bundle) / "README.md").read_text()
    block = text.split(START_HEADING, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.split() for line in block.strip().splitlines() if line.strip() and not line.startswith("cd ")]


def fleet_status(bundles: list[Path], now: float | None = None) -> list[dict]:
    """One row per bundle: its state, round, losses, pace and suspected peers, from its log and results."""
    now = time.time() if now is None else now
    rows = []
    for folder in bundles:
        folder = Path(folder)
        node = load_node(folder / "node.toml")  # the agent's own reading, defaults included (agentID.jsonl ...)
        log, out = node.log, node.out
        records = read_round_log(log)
        last = records[max(records)] if records else {}
        results = json.loads(out.read_text()) if out.exists() else None
        recent = [records[k].get("round_s", 0.0) for k in sorted(records)[-10:] if k > 0]
        if results is not None and "stopped" in results:
            state = f"stopped ({results['stopped']['reason']})"
        elif results is not None:
            state = "finished"
        elif not records:
            state = "not started"
        else:
            state = f"running (last line {now - log.stat().st_mtime:.0f} s ago)"
        rows.append({"board": node.id, "state": state, "round": last.get("round"), "rounds": node.spec.train.rounds,
                     "train_loss": last.get("train_loss"), "test_loss": last.get("test_loss"),
                     "round_s": sum(recent) / len(recent) if recent else None,
                     "suspected": last.get("suspected", []), "folder": str(folder)})
    return rows


def status_table(rows: list[dict]) -> str:
    """The rows of ``fleet_status`` as a text table."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)
    lines = [f"{'board':>5}  {'round':>9}  {'train loss':>10}  {'test loss':>9}  {'s/round':>7}  "
             f"{'suspected':<9}  state"]
    for r in rows:
        rnd = "-" if r["round"] is None else f"{r['round']}/{r['rounds']}"
        lines.append(f"{r['board']:>5}  {rnd:>9}  {fmt(r['train_loss'], '.4g'):>10}  {fmt(r['test_loss'], '.4g'):>9}  "
                     f"{fmt(r['round_s'], '.3f'):>7}  {','.join(map(str, r['suspected'])) or '-':<9}  {r['state']}")
    return "\n".join(lines)
