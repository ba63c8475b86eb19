"""The README cannot rot: CI runs exactly its test command, and its CLI tour runs.

Every command of the tour's table runs here, in seconds: tiny ``--set`` overrides where the command takes
a spec, and ``--help`` for the slow ones (demo, reproduce, rehearse, bench, agent), which still proves the
command and every option the tour shows exist. The tour's Python snippet runs as written on a bundle.
"""
import pathlib
import re

import pytest

from benchmarks.__main__ import TARGETS
from p2pntk.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOUR = README.split("## A tour of the CLI", 1)[1].split("\n## ", 1)[0]
TINY = [f"--set={kv}" for kv in ("model.width=16", "train.rounds=3", "network.agents=3",
                                 "data.samples_per_agent=20", "data.test_samples=10")]
SLOW = ("demo", "reproduce", "rehearse", "agent")  # seconds to minutes, or a real board: --help only


def _readme_commands():
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", README, re.S)


def _tour_rows() -> dict[str, str]:
    """The tour table's synopses by subcommand name: {"simulate": "[SPEC] --out RUN.json ...", ...}."""
    rows = re.findall(r"^\| `p2pntk ([a-z-]+)(.*?)`(?: \(= [^)]*\))? \|", TOUR, re.M)
    out: dict[str, str] = {}
    for name, synopsis in rows:
        out[name] = out.get(name, "") + " | " + synopsis.strip().replace("\\|", "|")
    return out


def _run(capsys, *argv: str) -> str:
    """``p2pntk ARGV`` in this process: its exit status must be 0; returns what it printed."""
    try:
        status = main(list(argv))
    except SystemExit as done:  # --help and --version exit through argparse
        status = done.code
    out = capsys.readouterr()
    assert status == 0, (argv, out.err[-2000:])
    return out.out


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1].strip()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_first_command_runs_the_main_job():
    assert ".venv/bin/p2pntk demo" in _readme_commands()[0]
    assert "demo" in _tour_rows()


def test_every_option_the_tour_shows_is_one_its_command_takes(capsys):
    rows = _tour_rows()
    assert len(rows) >= 17, sorted(rows)
    for name, synopsis in rows.items():
        helps = _run(capsys, name, "--help")
        if name in ("fleet", "keys", "profiles"):  # "init ... | status ...": each action's options are in its own help
            actions = [w[0] for a in synopsis.split(" | ") if (w := a.split()) and re.fullmatch(r"[a-z][a-z-]+", w[0])]
            assert len(actions) >= 2, (name, synopsis)
            helps += "".join(_run(capsys, name, action, "--help") for action in actions)
        for option in re.findall(r"(--[a-z][a-z-]*|-[a-z]\b)", synopsis):
            assert re.search(rf"(^|[\s\[,]){option}\b", helps), (name, option)
    targets = re.search(r"`p2pntk bench ([a-z|]+)`", TOUR.replace("\\|", "|")).group(1).split("|")
    assert set(targets) <= set(TARGETS), sorted(set(targets) - set(TARGETS))


def test_the_tour_runs(tmp_path, capsys, monkeypatch):
    """Each fast command of the tour, as the table shows it, on a tiny swarm: exit status 0 and its files."""
    monkeypatch.chdir(tmp_path)
    rows = _tour_rows()
    ran = set()

    def run(*argv: str) -> str:
        ran.add(argv[0])
        return _run(capsys, *argv)

    run("simulate", "--out", "run.json", "--save-problem", "p.npz", "--quiet", *TINY)
    run("predict", "--out", "pred.json", "--quiet", "--kernel", "exact", "--save-params", "v.npz", *TINY)
    run("stability", "--out", "st.json", "--quiet", *TINY)
    table = run("compare", "pred.json", "run.json").strip().splitlines()
    assert table[0].startswith("trajectory error") and table[-1].split()[0] == "max" and len(table) == 3 + 3
    run("loopback", "--out", "loop.json", "--quiet", "--workdir", "lb", *TINY)
    run("keys", "new", "board", "--dir", "keys")
    run("keys", "show", "keys/board.key")
    run("profiles", "list")
    run("profiles", "show", "raspberry-pi-4b")
    (tmp_path / "boards.txt").write_text("10.77.0.1\n10.77.0.2\n10.77.0.3\n")
    run("fleet", "init", "boards.txt", "--out", "bundles", "--rehearsal-data", *TINY)
    assert run("fleet", "status", "bundles").count("not started") == 3
    node = "bundles/board-0/node.toml"
    run("tune", node, "--budget-rounds", "3", "--grid", "lr=0.1,0.2", "--out", "tune.json", "--quiet")
    run("summarise", node, "--out", "summary0.npz")
    run("predict-local", node, "--out", "local.json")
    pytest.importorskip("onnx")
    run("export-onnx", "--out", "model.onnx", *TINY)
    for name in SLOW + ("bench",):
        run(name, "--help")
    for path in ("run.json", "p.npz", "pred.json", "v.npz", "st.json", "loop.json", "keys/board.key_secret",
                 "bundles/board-2/node.toml", "tune.json", "summary0.npz", "local.json", "model.onnx"):
        assert (tmp_path / path).exists(), path
    assert ran == set(rows), sorted(set(rows) ^ ran)


def test_the_on_device_tuning_script_runs_as_written(tmp_path, capsys, monkeypatch):
    script = re.search(r"```python\n(.*?)\n```", TOUR, re.S).group(1)
    (tmp_path / "boards.txt").write_text("10.77.0.1\n10.77.0.2\n10.77.0.3\n")
    monkeypatch.chdir(tmp_path)
    _run(capsys, "fleet", "init", "boards.txt", "--out", "bundles", "--rehearsal-data", *TINY)
    monkeypatch.chdir(tmp_path / "bundles" / "board-1")
    exec(compile(script, "README.md", "exec"), {})
    lr, loss, lr_max = capsys.readouterr().out.split()
    assert 0 < float(lr) < float(lr_max) and float(loss) > 0
