"""``p2pntk keys``: make a board's CurveZMQ keypair, or print the public key of a key file.

Every link is encrypted and authenticated by default (docs/design.md, section 7): each board keeps
its ``NAME.key_secret`` and lists its neighbours' ``NAME.key`` files under ``[peer_keys]``.
"""
from __future__ import annotations

from coordinator_free.keys import new_keypair, read_public


def register(sub) -> None:
    p = sub.add_parser("keys", help="CurveZMQ keys: make a board's keypair, show a public key",
                       description="Make a board's keypair (NAME.key, public, for its neighbours' [peer_keys]; "
                                   "NAME.key_secret, mode 0600, for its own secret_key), or show a public key.")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = ksub.add_parser("new", help="write NAME.key and NAME.key_secret")
    new.set_defaults(func=run_new)
    new.add_argument("name", metavar="NAME", help="the board's name, e.g. agent0 or pi-kitchen")
    new.add_argument("--dir", default="keys", help="folder for the two files (default: keys)")
    show = ksub.add_parser("show", help="print the z85 public key held in a key file")
    show.add_argument("file", metavar="FILE", help="a NAME.key or NAME.key_secret file")
    show.set_defaults(func=run_show)


def run_new(args) -> int:
    public, secret = new_keypair(args.dir, args.name)
    print(f"wrote {public} (public: give it to this board's neighbours, under [peer_keys]) and {secret} "
          "(secret: keep it on this board, as its secret_key)")
    return 0


def run_show(args) -> int:
    print(read_public(args.file).decode())
    return 0
