"""``python -m agent NODE.toml``: run one device's learner (the same as ``p2pntk agent NODE.toml``).

Exit status: 0 done, 2 bad input (one line on stderr), 3 the bind address is already in use
(the loopback launcher retries with new ports), 4 the parameters became non-finite, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, as systemd stops a service). On 4, 130 and 143 the agent still
says BYE, checkpoints its last finite parameters and writes its results, marked with the reason.
"""
from __future__ import annotations

import argparse
import logging
import sys

from coordinator_free.common.errors import Diverged, Terminated, UserError, exit_status, sigterm_unwinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pntk agent", description="Run one device's peer-to-peer learner.")
    parser.add_argument("node", metavar="NODE.toml", help="node file: id, bind address, data, spec, peers")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every handshake and round at INFO")
    args = parser.parse_args(argv)
    return run(args.node, args.verbose)


def run(node_path: str, verbose: bool = False) -> int:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from agent.node import load_node
    from agent.process import run_node
    try:
        with sigterm_unwinds():
            run_node(load_node(node_path))
    except (UserError, Diverged) as err:  # AddressInUse (3) tells the loopback launcher to retry with new ports
        print(f"p2pntk agent: error: {err}", file=sys.stderr)
        return exit_status(err)
    except (KeyboardInterrupt, Terminated) as err:
        print(f"p2pntk agent: {'terminated' if isinstance(err, Terminated) else 'interrupted'}", file=sys.stderr)
        return exit_status(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
