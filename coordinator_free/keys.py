"""Per-device CurveZMQ keys and the allow-list of neighbours' public keys (docs/design.md, section 7).

Each board has a keypair made by ``new_keypair`` (``p2pntk keys new``): ``NAME.key`` holds the public
key, which its neighbours list in their node files, and ``NAME.key_secret`` the secret, which never
leaves the board. ``AllowList`` maps each neighbour's public key to its id. It is consulted by the ZAP
handler when a neighbour connects, and again for every message (``id_of``), and it re-reads the key
files when they change: removing a neighbour's key file revokes it at once, with no restart.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from common.errors import UserError
from common.files import PUBLIC, SECRET

REFRESH_SECONDS = 1.0  # how often the allow-list looks at its key files for changes
ZAP_DOMAIN = "p2pntk"  # the ZAP domain of every agent's receiving socket


def new_keypair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (secret, mode 0600) in ``folder``; return both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # made in a private (0700) folder and moved in with its final mode, so the secret is never readable by others
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    try:
        made = [Path(p) for p in zmq.auth.create_certificates(staging, name)]
        os.chmod(made[0], PUBLIC)
        os.chmod(made[1], SECRET)
        for p in made:
            os.replace(p, folder / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / f"{name}.key", folder / f"{name}.key_secret"


def read_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a NAME.key_secret file; UserError naming the file otherwise."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise UserError(f"secret key file {path}: cannot be read ({err})") from None
    if not secret:
        raise UserError(f"secret key file {path}: holds no secret key (is it the public .key file?)")
    return public, secret


def read_public(path: str | Path) -> bytes:
    """The z85 public key in a NAME.key (or NAME.key_secret) file; UserError naming the file otherwise."""
    try:
        return zmq.auth.load_certificate(path)[0]
    except (OSError, ValueError) as err:
        raise UserError(f"public key file {path}: cannot be read ({err})") from None


class AllowList:
    """Neighbour id <-> public key, from one key file per neighbour, re-read when the files change.

    A neighbour whose key file is gone is revoked: ``allows`` and ``id_of`` no longer know its key.
    Thread-safe: the ZAP handler runs in its own thread.
    """

    def __init__(self, peer_key_files: dict[int, str | Path]) -> None:
        self.files = {int(p): Path(f) for p, f in peer_key_files.items()}
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._by_key: dict[bytes, int] = {}
        self._checked = 0.0
        self.refresh(force=True)

    def _stamps(self) -> tuple:
        out = []
        for pid, f in sorted(self.files.items()):
            try:
                st = f.stat()
                out.append((pid, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((pid, None, None))
        return tuple(out)

    def refresh(self, force: bool = False) -> None:
        """Re-read the key files if any changed (at most every REFRESH_SECONDS unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._checked < REFRESH_SECONDS:
            return
        self._checked = now
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        keys: dict[bytes, int] = {}
        for pid, f in self.files.items():
            if f.exists():
                keys[read_public(f)] = pid
        with self._lock:
            self._by_key, self._stamp = keys, stamp

    def id_of(self, public_key: bytes | str | None) -> int | None:
        """The neighbour id bound to this z85 public key, or None (unknown or revoked)."""
        if public_key is None:
            return None
        self.refresh()
        key = public_key.encode() if isinstance(public_key, str) else public_key
        with self._lock:
            return self._by_key.get(key)

    def allows(self, public_key: bytes) -> bool:
        return self.id_of(public_key) is not None

    def public_key(self, pid: int) -> bytes:
        """Neighbour ``pid``'s public key (to connect to it as a CURVE client)."""
        return read_public(self.files[pid])


class _Provider:
    def __init__(self, allow: AllowList) -> None:
        self.allow = allow

    def callback(self, domain: str, key: bytes) -> bool:
        return self.allow.allows(key)


def start_authenticator(context: zmq.Context, allow: AllowList) -> ThreadAuthenticator:
    """A ZAP handler on ``context`` that lets in CURVE clients whose key ``allow`` knows."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_Provider(allow))
    return auth


class Curve:
    """This agent's keypair and its neighbours' allow-list: what a Transport needs for CurveZMQ."""

    def __init__(self, secret_key_file: str | Path, peer_key_files: dict[int, str | Path]) -> None:
        self.public, self.secret = read_keypair(secret_key_file)
        self.allow = AllowList(peer_key_files)
