"""The agency's age identity: made and kept in the back office, never on a camera.

A camera holds only the recipient (the public half). These helpers make an identity in
age-keygen's file format, so Debian's ``age`` CLI reads the same file, and load one to
decrypt segments at export.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyrage


class IdentityError(Exception):
    """An identity file that cannot be used; the message names the file."""


def write_agency_identity(directory: Path) -> str:
    """An age identity in age-keygen's file format (so the ``age`` CLI reads it)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    path = directory / "agency.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# bwv agency identity: keep in the back office, never on a camera\n"
                f"# public key: {recipient}\n{ident}\n")
    (directory / "agency.recipient").write_text(recipient + "\n")
    return recipient


def load_identity(path: Path) -> pyrage.x25519.Identity:
    """An age identity file (age-keygen format: comments, then AGE-SECRET-KEY-1…)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read identity {path}: {exc}") from None
    keys = [ln.strip() for ln in lines if ln.strip().startswith("AGE-SECRET-KEY-1")]
    if not keys:
        raise IdentityError(f"{path} holds no age X25519 identity (AGE-SECRET-KEY-1…)")
    try:
        return pyrage.x25519.Identity.from_str(keys[0])
    except Exception as exc:  # noqa: BLE001 — pyrage raises its own types
        raise IdentityError(f"{path}: identity is malformed ({exc})") from None
