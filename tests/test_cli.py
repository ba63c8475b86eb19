"""The `p2pntk` command line as a whole: help text on every option of every subcommand, and --version."""
import argparse
import subprocess
import sys
from importlib import metadata

from p2pntk.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: str):
    """(command path, action) for every option and positional of ``parser`` and its subcommands, nested."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_option_of_every_subcommand_has_help():
    entries = list(_walk(build_parser(), "p2pntk"))
    missing = [where for where, text in entries if not (text or "").strip() or text == argparse.SUPPRESS]
    assert len(entries) > 100 and not missing, f"no help text: {missing}"
    assert "p2pntk agent -v/--verbose" in dict(entries) and "p2pntk keys new --dir" in dict(entries)


def test_version_is_the_installed_package_version():
    proc = subprocess.run([sys.executable, "-m", "p2pntk", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"p2pntk {metadata.version('p2p-ntk')}"


def test_the_command_table_names_exactly_what_each_module_registers():
    from p2pntk.cli import COMMANDS
    registered = {}
    for module, names in COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        __import__(f"p2pntk.commands.{module}", fromlist=["register"]).register(sub)
        registered[module] = tuple(sub.choices)
    assert registered == COMMANDS
    assert list(build_parser()._subparsers._group_actions[0].choices) == [n for names in COMMANDS.values() for n in names]


def test_a_command_imports_only_its_own_module():
    code = ("import sys; from p2pntk.cli import build_parser; build_parser(['predict', '--quiet']); "
            "print(sorted(m for m in sys.modules if m.startswith('p2pntk.commands.') or m == 'zmq'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['p2pntk.commands.predict']"


def test_a_closed_output_pipe_ends_quietly_and_keeps_the_results(tmp_path):
    """`p2pntk predict | head` with the reader gone: exit 141, no traceback, the results file written."""
    out = tmp_path / "p.json"
    proc = subprocess.Popen([sys.executable, "-m", "p2pntk", "predict", "--set", "model.kind=affine",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command prints anything: its first line meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert out.exists()
