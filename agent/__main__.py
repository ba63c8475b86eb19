"""``python -m agent NODE.toml``: run one device's learner (the same as ``p2pntk agent NODE.toml``).

Exit status: 0 done, 2 bad input (one line on stderr), 3 the bind address is already in use
(the loopback launcher retries with new ports), 4 the parameters became non-finite, 6 the neighbours were
not all up within the node file's start_timeout, 7 a write failed (disk full), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, as systemd stops a service). On 4, 130 and 143 the agent still
says BYE, checkpoints its last finite parameters and writes its results, marked with the reason.
Progress goes to stderr (agent.report): a line every few seconds, every round with ``-v``, none with
``-q``, and one summary line at the end.
"""
from __future__ import annotations

import argparse
import logging
import sys

from common.errors import (Diverged, StartTimedOut, StorageFailed, Terminated, UserError, exit_status,
                                            sigterm_unwinds)


DESCRIPTION = ("Run one device's peer-to-peer learner from its node file. It prints a progress line on stderr "
               "every few seconds and a summary at the end, appends one JSON line per round to its log, "
               "checkpoints every checkpoint_every rounds (a restart resumes) and keeps its final parameters "
               "beside its results (agentQ.params.npz, for p2pntk export-onnx --params). Exit status: 0 done, "
               "2 bad input, 3 address in use, 4 diverged, 6 start timed out, 7 storage failed, 130 interrupted, "
               "143 terminated.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m agent`` and ``p2pntk agent`` (one definition for both)."""
    parser.add_argument("node", metavar="NODE.toml", help="node file: id, bind address, data, spec, peers")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="a progress line every round, and every handshake step at INFO")
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="no progress or summary lines, only warnings and errors (the loopback launcher's agents)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pntk agent", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.node, args.verbose, args.quiet)


def run(node_path: str, verbose: bool = False, quiet: bool = False) -> int:
    """Run the node file's learner, printing progress on stderr (every round with ``verbose``, none if
    ``quiet``) and its summary; return the exit status."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from agent.node import load_node
    from agent.process import run_node
    from agent.report import PROGRESS_SECONDS, Report
    try:
        with sigterm_unwinds():
            node = load_node(node_path)
            report = Report(node.id, node.spec.train.rounds, every=0.0 if verbose else PROGRESS_SECONDS,
                            enabled=not quiet)
            run_node(node, report)
    except (UserError, Diverged, StartTimedOut, StorageFailed) as err:  # AddressInUse (3) tells the loopback launcher to retry with new ports
        print(f"p2pntk agent: error: {err}", file=sys.stderr)
        return exit_status(err)
    except (KeyboardInterrupt, Terminated) as err:
        print(f"p2pntk agent: {'terminated' if isinstance(err, Terminated) else 'interrupted'}", file=sys.stderr)
        return exit_status(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
