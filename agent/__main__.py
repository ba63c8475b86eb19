"""``python -m agent NODE.toml``: run one device's learner (the same as ``p2pntk agent NODE.toml``).

Exit status: 0 done, 2 bad input (one line on stderr), 3 the bind address is already in use
(the loopback launcher retries with new ports), 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys

from coordinator_free.common.errors import UserError, exit_status


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
        node = load_node(node_path)
        run_node(node)
    except UserError as err:  # AddressInUse (3) tells the loopback launcher to retry with new ports
        print(f"p2pntk agent: error: {err}", file=sys.stderr)
        return exit_status(err)
    except KeyboardInterrupt as err:
        print("p2pntk agent: interrupted", file=sys.stderr)
        return exit_status(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
