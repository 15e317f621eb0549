"""Sync's own memory: which objects the evidence store has confirmed, and how far it got.

Kept in ``STORE/sync.sqlite`` beside (not inside) the store's index: buffer owns the
evidence and its index, sync owns this file. A confirmation is committed only after the
store proved it holds the exact bytes, so after any cut (undock, network, power) a
confirmed object is never sent again and at most the one object in flight is re-sent.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS confirmed (
    key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    method TEXT NOT NULL, confirmed_utc_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, attempted_utc_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Confirmation:
    key: str
    sha256: str
    size: int
    method: str  # "checksum" (store-reported SHA-256) or "read-back" (we hashed a GET)


class SyncState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not FULL: a commit lost to a power cut only means an object is looked
            # up in the store again (never that one is thought confirmed when it is not:
            # a confirmation is only written after the store's proof). The evidence itself
            # is in buffer's index, which stays FULL.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except BaseException:
            self.db.close()  # a card that fails a read: no open file left behind
            raise
        self._lock = threading.Lock()  # the sender and the confirming thread share it

    def confirmed(self, key: str, sha256: str) -> Confirmation | None:
        with self._lock:
            row = self.db.execute("SELECT key, sha256, size, method FROM confirmed WHERE key=?",
                                  (key,)).fetchone()
        return Confirmation(*row) if row and row[1] == sha256 else None

    def confirm(self, c: Confirmation, utc_ns: int) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO confirmed VALUES (?,?,?,?,?)",
                            (c.key, c.sha256, c.size, c.method, utc_ns))

    def attempted(self, key: str) -> str | None:
        """The SHA-256 we last sent under ``key`` (so a mismatch is known to be ours)."""
        with self._lock:
            row = self.db.execute("SELECT sha256 FROM attempts WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def attempt(self, key: str, sha256: str, utc_ns: int) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO attempts VALUES (?,?,?)", (key, sha256, utc_ns))

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, **values: str) -> None:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            for k, v in values.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
            self.db.execute("COMMIT")

    def forget_prefix(self, prefix: str) -> None:
        """After a release the clip's confirmations are history (kept in the audit log)."""
        with self._lock:
            self._forget(prefix)

    def _forget(self, prefix: str) -> None:
        self.db.execute("DELETE FROM confirmed WHERE key LIKE ? ESCAPE '\\'",
                        (prefix.replace("%", "\\%").replace("_", "\\_") + "%",))
        self.db.execute("DELETE FROM attempts WHERE key LIKE ? ESCAPE '\\'",
                        (prefix.replace("%", "\\%").replace("_", "\\_") + "%",))

    def close(self) -> None:
        self.db.close()
