"""CI runs exactly the README's test command; the README's commands name real subcommands."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1].strip()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_first_command_runs_the_main_job():
    assert "p2pntk" in _readme_commands()[0]
