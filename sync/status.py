"""``bwv sync --status``: what is on the device, what the store has confirmed, last run.

Read-only: it opens the store's index and sync's state file without taking the store
(so a technician can watch while the agent syncs).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from buffer.clip import MANIFEST_NAME


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def sync_status(store_dir: Path, device_id: str) -> dict:
    store_dir = Path(store_dir)
    index = _ro(store_dir / "index.sqlite")
    state_path = store_dir / "sync.sqlite"
    confirmed: set[str] = set()
    meta: dict[str, str] = {}
    if state_path.exists():
        st = _ro(state_path)
        confirmed = {r[0] for r in st.execute("SELECT key FROM confirmed")}
        meta = dict(st.execute("SELECT key, value FROM meta").fetchall())
        st.close()
    clips = []
    for clip_id, state, cls in index.execute(
            "SELECT clip_id, state, classification FROM clips ORDER BY started_utc_ns, rowid"):
        segs = index.execute("SELECT seq, size FROM segments WHERE clip_id=? ORDER BY seq",
                             (clip_id,)).fetchall()
        names = [(f"{seq:012d}.bwvseg", size) for seq, size in segs]
        manifest = store_dir / "clips" / clip_id / MANIFEST_NAME
        if manifest.exists():
            names.append((MANIFEST_NAME, manifest.stat().st_size))
        prefix = f"devices/{device_id}/clips/{clip_id}/"
        done = [(n, sz) for n, sz in names if prefix + n in confirmed]
        clips.append({"clip_id": clip_id, "state": state, "classification": cls,
                      "objects": len(names), "objects_confirmed": len(done),
                      "bytes": sum(sz for _, sz in names),
                      "bytes_confirmed": sum(sz for _, sz in done)})
    index.close()
    pending = [c for c in clips if c["state"] == "closed"]
    return {
        "clips": clips,
        "total": {"clips_pending": len(pending),
                  "clips_released": sum(1 for c in clips if c["state"] == "released"),
                  "bytes_pending": sum(c["bytes"] - c["bytes_confirmed"] for c in pending),
                  "bytes_confirmed": sum(c["bytes_confirmed"] for c in pending)},
        "last_run": {k: meta.get(k) for k in ("last_status", "last_message",
                                              "last_run_started_utc_ns", "last_run_ended_utc_ns")},
    }
