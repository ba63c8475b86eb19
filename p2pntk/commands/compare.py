"""``p2pntk compare A.json B.json``: each agent's trajectory error ||a - b|| / ||b|| of A against the
reference B (e.g. a forecast against a simulate run), and with --plot the curves drawn together."""
from __future__ import annotations

import json
from pathlib import Path

from common.files import write_json
from common.errors import UserError
from predictor.compare import compare_results, error_table, plot_comparison


def register(sub) -> None:
    p = sub.add_parser("compare", help="per-agent trajectory error of one results file against another",
                       description="Print ||a - b|| / ||b|| over each agent's train and test loss curve, "
                                   "A (e.g. predict) against the reference B (e.g. simulate).")
    p.add_argument("a", metavar="A.json", help="results to judge (e.g. the forecast)")
    p.add_argument("b", metavar="B.json", help="reference results (e.g. the actual training)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="draw A (dashed) over B (solid) per agent")
    p.add_argument("--out", default=None, metavar="ERR.json", help="also write the errors as JSON")
    p.set_defaults(func=run)


def read_results(path: str) -> dict:
    """A results JSON file, or a UserError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON results file ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a results file (expected a JSON object)")
    return data


def run(args) -> int:
    a, b = read_results(args.a), read_results(args.b)
    errors = compare_results(a, b, names=(args.a, args.b))
    print(f"trajectory error ||a - b|| / ||b||, a = {args.a} ({a.get('kind', '?')}), "
          f"b = {args.b} ({b.get('kind', '?')})")
    print(error_table(errors))
    if args.out:
        write_json(args.out, errors)
    if args.plot:
        plot_comparison(a, b, args.plot, title=f"{Path(args.a).name} (dashed) vs {Path(args.b).name} (solid)",
                        labels=(a.get("kind", "A"), b.get("kind", "B")))
        print(f"wrote {args.plot}")
    return 0
