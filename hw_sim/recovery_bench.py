"""Recovery time on a full store: 30,000 sealed segments, a power cut, then ``Store.open``.

    python -m hw_sim.recovery_bench                      # 30,000 segments, 3 cuts
    python -m hw_sim.recovery_bench --segments 2000 --json out/recovery.json

DESIGN.md's budget is "recovery after power loss in seconds, not minutes". A 2 s segment
a file, 30,000 segments is ~17 h of footage: more than a 12 h shift of evidence waiting
for the dock. The store is built through the real ``Store`` API with the real sealing
code (age encryption to the agency, Ed25519 signature, hash chain): clips of 100
segments, closed with signed manifests, and a pre-record ring. Only video encoding is
skipped (a recovery test does not need pictures: each segment carries a few KiB of
filler TS bytes and a full set of 60 frame hashes, so headers are their real size), and
while *building*, fsync is switched off (nothing is being promised yet); ``os.sync``
runs before the first cut.

Each cut leaves every kind of debris recovery must handle at once — a hidden temp file
in the ring and in the clip being recorded, a durable segment whose index row was never
committed (cut between rename and commit), a clip left open, a committed eviction
intent whose unlink never happened — and drops the store without ``close`` (no
clean-shutdown mark). ``Store.open`` is then timed, its report checked against the
debris (so a fast but wrong recovery fails), and a second open is timed (the cost every
start pays when nothing needs repair). With ``--drop-caches`` (root, Linux) the page
cache is dropped before each timed open, as after a real power cut.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from buffer.fsutil import tmp_name
from buffer.store import Store, StoreSettings, init_store, seg_name
from capture.segmenter import RawSegment
from drivers.camera import CameraInfo
from hw_sim.clock import SimClock
from hw_sim.runner import ensure_keys

SEG_NS = 2 * 10**9
CLIP_SEGMENTS = 100
RING_SEGMENTS = 60
FRAMES = 60
INFO = CameraInfo(width=1920, height=1080, fps=30, sensor="bench", encoder="none")


class BenchError(Exception):
    """Recovery did something other than what the cut requires."""


def raw_segment(clock: SimClock, n: int, payload: int = 4096) -> RawSegment:
    """A segment's capture facts without video: TS-sized filler and 60 frame hashes."""
    start_mono, start_utc = clock.monotonic_ns(), clock.utc_ns()
    clock.advance(SEG_NS)
    ts = (b"\x47" + n.to_bytes(4, "big") + bytes(183)) * max(1, payload // 188)
    return RawSegment(ts=ts, frame_count=FRAMES,
                      frame_hashes=tuple(f"{n:032x}{i:032x}" for i in range(FRAMES)),
                      start_mono_ns=start_mono, end_mono_ns=clock.monotonic_ns(),
                      start_utc_ns=start_utc, end_utc_ns=clock.utc_ns(),
                      first_timestamp_us=start_mono // 1000, keyframe_count=1, info=INFO)


@contextlib.contextmanager
def no_fsync():
    """While building only: nothing is acknowledged to anyone yet."""
    real = os.fsync
    os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync = real  # type: ignore[assignment]
        os.sync()


SETTINGS = StoreSettings(pre_record_ns=RING_SEGMENTS * SEG_NS, max_bytes=64 * 1024**3,
                         frame_interval_ns=33_333_333)


def open_store(work: Path, keys, clock: SimClock) -> Store:
    return Store.open(work / "store", keys, clock, SETTINGS, officer_id="OFF-BENCH")


def crash(store: Store) -> None:
    """Power gone: no close(), no clean-shutdown mark; the lock goes with the process."""
    store.db.close()
    os.close(store._lock_fd)


def build(work: Path, segments: int, progress=None) -> tuple[Store, SimClock, int]:
    """A store of ``segments`` sealed segments in closed clips plus a ring, left open."""
    keys, _ = ensure_keys(work)
    init_store(work / "store", keys.device())
    clock = SimClock()
    store = open_store(work, keys, clock)
    n = 0
    closed_target = segments - RING_SEGMENTS - CLIP_SEGMENTS  # leave room for the cut's clip
    with no_fsync():
        store.db.execute("PRAGMA synchronous=OFF")
        while n < closed_target:
            clip = store.open_clip(press_mono_ns=clock.monotonic_ns(),
                                   started_utc_ns=clock.utc_ns(), pre_record=False)
            for _ in range(min(CLIP_SEGMENTS, closed_target - n)):
                store.append(raw_segment(clock, n), clip_id=clip)
                n += 1
            store.close_clip(clip, stop_reason="record_button_hold", stopped_utc_ns=clock.utc_ns())
            if progress and n % 1000 < CLIP_SEGMENTS:
                progress(n, segments)
        while n < segments - CLIP_SEGMENTS // 2:
            store.append(raw_segment(clock, n))
            n += 1
        store.db.execute("PRAGMA synchronous=FULL")
    return store, clock, n


def cut(store: Store, clock: SimClock, n: int, total: int) -> tuple[dict, int]:
    """Record into a clip until the store holds ``total`` segment files, then leave every
    kind of debris and drop the store. Returns what recovery must report, and the new segment count."""
    with no_fsync():
        for _ in range(3):  # buffering after power-on: this stream's ring
            store.append(raw_segment(clock, n))
            n += 1
        clip = store.open_clip(press_mono_ns=clock.monotonic_ns(), started_utc_ns=clock.utc_ns(),
                               pre_record=False)  # the ring stays: an eviction is due in it
        while True:  # (appending evicts an older stream's ring: count files as we go)
            store.append(raw_segment(clock, n), clip_id=clip)
            n += 1
            if store.db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] >= total - 1:
                break
    # The last segment: durable file, index row never committed (cut between the two).
    ack = store.append(raw_segment(clock, n), clip_id=clip)
    n += 1
    seq_prev = ack.seq - 1
    prev_hash = store.db.execute("SELECT hash FROM segments WHERE seq=?", (seq_prev,)).fetchone()[0]
    store._tx([("DELETE FROM segments WHERE seq=?", (ack.seq,)),
               ("INSERT OR REPLACE INTO meta VALUES ('head_seq', ?)", (str(seq_prev),)),
               ("INSERT OR REPLACE INTO meta VALUES ('head_hash', ?)", (prev_hash,))])
    # Temp files of writes that never returned: in the ring and in the open clip.
    for d, seq in ((store.ring, ack.seq + 1), (store.clips / clip, ack.seq + 2)):
        with open(d / tmp_name(seg_name(seq)), "wb") as f:
            f.write(b"BWVSEG1\n" + bytes(1000))
    # An eviction whose intent is committed but whose unlink never happened.
    oldest = store.ring_seqs()[0]
    store._tx([("INSERT INTO intents(op, seq, path) VALUES ('evict', ?, ?)",
                (oldest, f"ring/{seg_name(oldest)}"))])
    crash(store)
    return {"reindexed": [ack.seq], "closed_clips": [clip], "discarded_tmp": 2,
            "finished_evictions": 1, "evicted": oldest}, n


def check(store: Store, want: dict) -> None:
    rep = store.recovery
    problems = []
    if not rep.unclean_shutdown:
        problems.append("the cut was not seen as an unclean shutdown")
    if rep.reindexed != want["reindexed"]:
        problems.append(f"re-indexed {rep.reindexed}, expected {want['reindexed']}")
    if rep.closed_clips != want["closed_clips"]:
        problems.append(f"closed {rep.closed_clips}, expected {want['closed_clips']}")
    if len(rep.discarded_tmp) != want["discarded_tmp"]:
        problems.append(f"discarded {rep.discarded_tmp}")
    if rep.finished_evictions != want["finished_evictions"]:
        problems.append(f"finished {rep.finished_evictions} evictions")
    if rep.missing or rep.quarantined:
        problems.append(f"missing {rep.missing}, quarantined {rep.quarantined}")
    if (store.ring / seg_name(want["evicted"])).exists():
        problems.append("the intended eviction was not finished")
    if store.head[0] != want["reindexed"][0]:
        problems.append(f"chain head {store.head[0]}, expected {want['reindexed'][0]}")
    if problems:
        raise BenchError("; ".join(problems))


def check_idle(store: Store) -> None:
    rep = store.recovery
    if rep.unclean_shutdown or rep.reindexed or rep.closed_clips or rep.discarded_tmp \
            or rep.finished_evictions or rep.missing or rep.quarantined:
        raise BenchError(f"a second recovery changed something: {rep.as_dict()}")


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run(workdir: Path, *, segments: int = 30_000, cuts: int = 3, cold: bool = False,
        progress=None) -> dict:
    t0 = time.monotonic()
    store, clock, n = build(workdir, segments, progress)
    build_s = time.monotonic() - t0
    keys = store.keys
    recover_s, reopen_s, cold_ok = [], [], True
    files = 0
    for i in range(cuts):
        want, n = cut(store, clock, n, segments)
        files = sum(1 for _ in (workdir / "store").rglob("*.bwvseg"))
        if cold:
            cold_ok &= drop_caches()
        t = time.monotonic()
        store = open_store(workdir, keys, SimClock(utc_start_ns=clock.utc_ns() + 60 * 10**9,
                                                   mono_start_ns=10**9))
        recover_s.append(time.monotonic() - t)
        check(store, want)
        store.close()
        if cold:
            drop_caches()
        t = time.monotonic()
        clock = SimClock(utc_start_ns=clock.utc_ns() + 120 * 10**9, mono_start_ns=10**9)
        store = open_store(workdir, keys, clock)
        reopen_s.append(time.monotonic() - t)
        check_idle(store)
    store.close()
    return {"segments": files, "sealed_total": n, "cuts": cuts,
            "build_s": round(build_s, 1),
            "recovery_s": [round(x, 3) for x in recover_s],
            "recovery_s_median": round(statistics.median(recover_s), 3),
            "recovery_s_max": round(max(recover_s), 3),
            "clean_open_s_median": round(statistics.median(reopen_s), 3),
            "page_cache": "dropped" if cold and cold_ok else "warm"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_sim.recovery_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=30_000)
    ap.add_argument("--cuts", type=int, default=3, help="timed recoveries (default 3)")
    ap.add_argument("--workdir", help="where to build the store (default: a temp dir, removed)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each timed open (root only)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.segments < 3 * CLIP_SEGMENTS + RING_SEGMENTS:
        print(f"error: --segments must be at least {3 * CLIP_SEGMENTS + RING_SEGMENTS}",
              file=sys.stderr)
        return 2
    if args.cuts < 1:
        print("error: --cuts must be at least 1", file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        print(f"\rbuilding the store: {done}/{total} segments", end="", file=sys.stderr,
              flush=True)
    with contextlib.ExitStack() as stack:
        work = Path(args.workdir) if args.workdir else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bwv-recovery-")))
        if args.workdir and work.exists() and any(work.iterdir()):
            print(f"error: {work} is not empty", file=sys.stderr)
            return 2
        try:
            res = run(work, segments=args.segments, cuts=args.cuts, cold=args.drop_caches,
                      progress=progress)
        except BenchError as exc:
            print(f"\nerror: recovery was wrong: {exc}", file=sys.stderr)
            return 1
    print(file=sys.stderr)
    print(json.dumps(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
