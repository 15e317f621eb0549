"""``bwv bench``: the figures docs/HARDWARE.md asks for, measured on the device itself.

It runs the real agent on this machine's platform — on a Pi the Pi drivers (picamera2
camera and its encoder, the microphone, the fuel gauge, chrony's clock), on x86 hw_sim
(the simulated camera with its libx264 encoder, at real time) — for ``--seconds``: the
first half buffering, then a double press on the record button and the second half
recording (audio on, if configured). Then it seals one of the segments it just made a
few more times beside the library's ceiling for the same bytes.

It never touches the device's evidence store or keys: a throwaway agency identity,
device keys and store are made in a temporary directory (printed, and removed
afterwards unless ``--keep``). The buttons are gpiozero mock pins even on a Pi, so the
bench never drives the real LEDs/buzzer, and a running ``bwv`` service must be stopped
first (the camera has one owner).

Every figure is a field of the JSON (``--json``) and a row of the table:

================================  ===========================================================
``rtf_pipeline``                  video seconds per CPU second of burn-in + segmenter + seal +
                                  durable store (the encoder excluded), in the live agent
``rtf_process``                   video seconds per CPU second of the whole process (encoder
                                  included where it runs on the CPU: sim, Pi 5)
``overlay_ms_median`` / ``_p99``  burn-in overlay per frame (wall ms)
``segmenter_ms_median``           segmenter push per frame (wall ms, agent lock held)
``seal_store_ms_median``          seal + durable append per segment (wall ms)
``cpu_share_pct``                 process CPU time / wall time, % of one core (whole run;
                                  ``_buffering`` / ``_recording`` per phase)
``peak_rss_mib``                  resource.getrusage(RUSAGE_SELF).ru_maxrss
``seal_MBps`` / ``ceiling_MBps``  sealing throughput vs pyrage encrypt + SHA-256 of the same
                                  bytes (``seal_ratio``), and ``seal_core_pct``: sealing CPU
                                  per second of video at the configured bitrate
``button_to_state_ms``            second press edge → RECORDING (mock pin edge, same thread)
``mic_start_ms``                  starting the microphone after that edge (same callback)
``kept_up``                       frames delivered / frames expected at the configured fps
================================  ===========================================================

Nothing asserts a timing; the numbers are for the technician's record sheet.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from firmware.config import Config

# ------------------------------------------------------------- shared measurement helpers
# (bench/bench.py imports these too.)


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def time_ops(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict, dict]:
    """CPU and wall seconds of each function, ``repeats`` times, interleaved so that
    drift on a shared machine hits all alike (after one warm-up call each)."""
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            c1, w1 = time.process_time(), time.perf_counter()
            cpu[k].append(c1 - c0)
            wall[k].append(w1 - w0)
    return cpu, wall


def sealing_ops(raw, keys) -> dict[str, Callable[[], Any]]:
    """Seal one RawSegment with the product's ``seal`` beside the library ceiling for the
    same bytes: pyrage encrypt + SHA-256 of the ciphertext (and each alone)."""
    import pyrage

    from buffer.seal import GENESIS_HASH, SealContext, seal
    from drivers.clock import ClockState
    data = raw.ts
    recipient = keys.agency_recipient()
    rcpt = pyrage.x25519.Recipient.from_str(recipient)
    ctx = SealContext(keys.device().device_id, uuid.uuid4().hex, "BENCH", recipient, keys.sign)
    state = ClockState(synced=True, source="bench")

    def do_ceiling():
        hashlib.sha256(pyrage.encrypt(data, [rcpt])).digest()
    return {"seal": lambda: seal(raw, ctx=ctx, seq=1, prev_hash=GENESIS_HASH, clock=state),
            "ceiling": do_ceiling,
            "encrypt": lambda: pyrage.encrypt(data, [rcpt]),
            "sha256": lambda: hashlib.sha256(data).digest()}


def measure_sealing(raw, keys, repeats: int, bitrate: int) -> dict:
    """Sealing throughput vs its ceiling on one real segment (median CPU of repeats)."""
    cpu, _ = time_ops(sealing_ops(raw, keys), repeats)
    mb = len(raw.ts) / 1e6
    seal_s, ceil_s = med(cpu["seal"]), med(cpu["ceiling"])
    return {"segment_bytes": len(raw.ts), "seal_repeats": repeats,
            "seal_MBps": mb / seal_s if seal_s else float("inf"),
            "ceiling_MBps": mb / ceil_s if ceil_s else float("inf"),
            "seal_ratio": ceil_s / seal_s if seal_s else float("nan"),
            # CPU share of one core to seal each second of video at the configured bitrate
            "seal_core_pct": 100 * seal_s / len(raw.ts) * bitrate / 8 if raw.ts else float("nan")}


# --------------------------------------------------------------------- instrumentation
class _Timer:
    """Wall (perf_counter) and CPU (thread_time: the calling thread's) per call."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu = 0.0
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.wall.clear()
            self.cpu = 0.0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*a, **k):
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                c, w = time.thread_time() - c0, time.perf_counter() - w0
                with self._lock:
                    self.cpu += c
                    self.wall.append(w)
        return timed


class TimedCamera:
    """The platform's camera, unchanged, with the burn-in timed and video frames counted."""

    def __init__(self, camera, overlay: _Timer) -> None:
        self._camera = camera
        self._overlay = overlay
        self.frames = 0
        self.first_frame_wall: float | None = None

    @property
    def info(self):
        return self._camera.info

    def set_overlay(self, fn) -> None:
        self._camera.set_overlay(self._overlay.wrap(fn) if fn is not None else None)

    def start(self, sink) -> None:
        def counting(packet) -> None:
            if not packet.audio:
                if self.first_frame_wall is None:
                    self.first_frame_wall = time.perf_counter()
                self.frames += 1
            sink(packet)
        self._camera.start(counting)

    def stop(self) -> None:
        self._camera.stop()

    def __getattr__(self, name):  # picam2, times, ... for the microphone
        return getattr(self._camera, name)


class BenchError(Exception):
    """The bench cannot run here; the message says why."""


@dataclasses.dataclass
class _Run:
    agent: Any
    camera: TimedCamera
    start: Callable[[], Any]  # starts the agent (and, in sim, the simulated time line)
    press: Callable[[], None]  # record button down (mock pin edge)
    release: Callable[[], None]
    advance: Callable[[float], None]  # let the device run this many real seconds
    close: Callable[[], None]
    keys: Any
    platform: str
    board: str | None


def _throwaway_keys(root: Path):
    from buffer.agency import write_agency_identity
    from drivers.keystore import FileKeyStore
    recipient = write_agency_identity(root / "agency")
    return FileKeyStore.create(root / "keys", f"BENCH-{uuid.uuid4().hex[:8].upper()}", recipient)


def _sim_run(cfg: Config, root: Path, timers: dict[str, _Timer]) -> _Run:
    from hw_sim.runner import Rig
    made = time.monotonic()  # the simulated clock paces against real time from here
    rig = Rig(cfg, root / "sim", speed=1.0, threaded=True, gps=False)
    mono0 = rig.clock.monotonic_ns()
    camera = TimedCamera(rig.agent.camera, timers["overlay"])
    rig.agent.camera = camera

    def start() -> None:
        rig.start()
        # Let simulated time catch up with the real time start-up took, so that the
        # measured window runs at real pace from its first frame (no catch-up burst).
        for _ in range(20):
            behind = (time.monotonic() - made) - (rig.clock.monotonic_ns() - mono0) / 1e9
            if behind < 0.005:
                break
            rig.advance(behind)
    return _Run(agent=rig.agent, camera=camera, start=start,
                press=lambda: rig.gpio.press("record"),
                release=lambda: rig.gpio.release("record"),
                advance=lambda s: rig.advance(s), close=rig.close, keys=rig.keys,
                platform="sim", board=None)


def _pi_run(cfg: Config, root: Path, timers: dict[str, _Timer], board: str | None) -> _Run:
    from gpiozero.pins.mock import MockFactory

    from firmware import pi_rig
    from firmware.agent import Agent
    keys = _throwaway_keys(root)
    factory = MockFactory()  # never the device's real pins
    dev = pi_rig.build(cfg, keys=keys, pin_factory=factory, gps=False)
    camera = TimedCamera(dev.camera, timers["overlay"])
    agent = Agent(cfg, clock=dev.clock, camera=camera, controls=dev.controls, keys=keys,
                  store_dir=root / "store", threaded=True, dock=dev.dock, trigger=dev.trigger,
                  microphone=dev.microphone, battery=dev.battery, platform="pi", board=board)
    pin = factory.pin(cfg.controls.record_button)

    def advance(seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            agent.poll()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.01, left))

    def close() -> None:
        try:
            agent.stop("bench")
        finally:
            dev.close()
    return _Run(agent=agent, camera=camera, start=agent.start, press=pin.drive_low,
                release=pin.drive_high,
                advance=advance, close=close, keys=keys, platform="pi", board=board)


def run_bench(cfg: Config, *, platform: str, seconds: float, root: Path,
              seal_repeats: int = 5, say: Callable[[str], None] = print) -> dict:
    """Run the agent for ``seconds`` (half buffering, half recording) in ``root`` and
    return every figure (see the module docstring)."""
    from firmware.platform import choose
    if seconds < 2:
        raise BenchError(f"--seconds {seconds:g} is too short: at least 2 (one segment each way)")
    info = choose(platform)
    device_store, device_keys = cfg.device.store_dir, cfg.device.keys_dir
    # Everything the agent writes goes to root; nothing of the device's own store/keys.
    cfg = cfg.with_overrides(device__store_dir=str(root / "store"),
                             device__keys_dir=str(root / "keys"), gps__enabled=False)
    timers = {k: _Timer() for k in ("overlay", "segmenter", "seal_store")}
    say(f"bwv bench: platform {info.platform} ({info.board_model or 'no board model'}); "
        f"{cfg.camera.width}x{cfg.camera.height} {cfg.camera.fps} fps "
        f"{cfg.camera.bitrate / 1e6:g} Mbit/s; {seconds:g} s")
    say(f"bwv bench: throwaway keys and store in {root}; the device's store "
        f"({device_store}) and keys ({device_keys}) are not touched")
    run = _sim_run(cfg, root, timers) if info.platform == "sim" else \
        _pi_run(cfg, root, timers, info.board_model)
    agent = run.agent
    agent.segmenter.push = timers["segmenter"].wrap(agent.segmenter.push)
    biggest: list = [None]
    mic_timer = _Timer()
    agent._apply_mic = mic_timer.wrap(agent._apply_mic)
    try:
        try:
            run.start()
        except RuntimeError as exc:
            raise BenchError(f"the agent did not start ({exc}); is the bwv service running? "
                             "stop it first: systemctl stop bwv") from exc
        store = agent._store
        if store is None:
            raise BenchError("the throwaway store did not open")
        append = timers["seal_store"].wrap(store.append)

        def keep_biggest(raw, *a, **k):
            if biggest[0] is None or len(raw.ts) > len(biggest[0].ts):
                biggest[0] = raw
            return append(raw, *a, **k)
        store.append = keep_biggest
        for t in timers.values():
            t.reset()
        frames_at_start = run.camera.frames
        t0, c0 = time.perf_counter(), _cpu()
        half = seconds / 2
        backlog = [0]

        def watch(s: float) -> None:
            end = time.perf_counter() + s
            while time.perf_counter() < end:
                run.advance(min(0.05, max(0.0, end - time.perf_counter())))
                backlog[0] = max(backlog[0], agent._worker.pending())
        watch(half - 0.3)
        # Double press: the second edge's call is the button→state path.
        run.press()
        watch(0.1)
        run.release()
        watch(0.15)
        state_at: list[float] = []
        edge0 = time.perf_counter()
        n_mic = len(mic_timer.wall)
        run.press()
        edge1 = time.perf_counter()
        recording = agent.state.value == "recording"
        t_half, c_half = time.perf_counter(), _cpu()
        mic_calls = mic_timer.wall[n_mic:]
        mic_s = mic_calls[-1] if mic_calls else 0.0
        state_at.append(edge1 - edge0 - mic_s)
        watch(0.05)
        run.release()
        watch(max(0.1, seconds - (time.perf_counter() - t0)))
        t1, c1 = time.perf_counter(), _cpu()
        frames = run.camera.frames - frames_at_start
    finally:
        run.close()
    acked = agent.stats.segments_acked
    fps = cfg.camera.fps
    video_s = frames / fps
    cpu_s, wall_s = c1 - c0, t1 - t0
    pipeline_cpu = sum(t.cpu for t in timers.values())
    res: dict[str, Any] = {
        "platform": run.platform, "board": run.board,
        "width": cfg.camera.width, "height": cfg.camera.height, "fps": fps,
        "bitrate": cfg.camera.bitrate, "audio": bool(cfg.audio.enabled),
        "encoder": run.camera.info.encoder, "sensor": run.camera.info.sensor,
        "seconds": round(wall_s, 3), "frames": frames, "video_s": round(video_s, 3),
        "segments_sealed": acked, "store_backlog_max": backlog[0],
        "kept_up": frames / (wall_s * fps) if wall_s > 0 else float("nan"),
        "rtf_pipeline": video_s / pipeline_cpu if pipeline_cpu else float("nan"),
        "rtf_process": video_s / cpu_s if cpu_s else float("nan"),
        "overlay_ms_median": med(timers["overlay"].wall) * 1e3,
        "overlay_ms_p99": pct(timers["overlay"].wall, 99) * 1e3,
        "segmenter_ms_median": med(timers["segmenter"].wall) * 1e3,
        "seal_store_ms_median": med(timers["seal_store"].wall) * 1e3,
        "cpu_share_pct": 100 * cpu_s / wall_s,
        "cpu_share_pct_buffering": 100 * (c_half - c0) / (t_half - t0),
        "cpu_share_pct_recording": 100 * (c1 - c_half) / (t1 - t_half),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "button_to_state_ms": state_at[0] * 1e3 if recording else float("nan"),
        "mic_start_ms": mic_s * 1e3 if recording else float("nan"),
        "recording_started": recording,
        "store": str(root),
    }
    if biggest[0] is not None:
        res.update(measure_sealing(biggest[0], run.keys, seal_repeats, cfg.camera.bitrate))
    else:
        res.update({"segment_bytes": 0, "seal_repeats": 0, "seal_MBps": float("nan"),
                    "ceiling_MBps": float("nan"), "seal_ratio": float("nan"),
                    "seal_core_pct": float("nan")})
    return res


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


#: (field, label, unit, format) for the table, in docs/HARDWARE.md's order.
ROWS = (
    ("rtf_pipeline", "capture → seal → store real-time factor (encoder excluded)", "×", "{:.1f}"),
    ("rtf_process", "real-time factor of the whole process (encoder where on CPU)", "×", "{:.1f}"),
    ("kept_up", "frames delivered / expected", "", "{:.3f}"),
    ("overlay_ms_median", "burn-in overlay per frame, median", "ms", "{:.3f}"),
    ("overlay_ms_p99", "burn-in overlay per frame, p99", "ms", "{:.3f}"),
    ("segmenter_ms_median", "segmenter per frame, median", "ms", "{:.3f}"),
    ("seal_store_ms_median", "seal + durable store per segment, median", "ms", "{:.1f}"),
    ("cpu_share_pct_buffering", "CPU share of one core, buffering", "%", "{:.1f}"),
    ("cpu_share_pct_recording", "CPU share of one core, recording", "%", "{:.1f}"),
    ("cpu_share_pct", "CPU share of one core, whole run", "%", "{:.1f}"),
    ("peak_rss_mib", "peak RSS", "MiB", "{:.1f}"),
    ("seal_MBps", "sealing throughput", "MB/s", "{:.1f}"),
    ("ceiling_MBps", "ceiling (pyrage encrypt + SHA-256)", "MB/s", "{:.1f}"),
    ("seal_ratio", "sealing / ceiling", "", "{:.2f}"),
    ("seal_core_pct", "sealing CPU at the configured bitrate", "% core", "{:.2f}"),
    ("button_to_state_ms", "button edge → RECORDING", "ms", "{:.2f}"),
    ("mic_start_ms", "microphone start after the edge", "ms", "{:.2f}"),
)


def render_table(res: dict) -> str:
    lines = [f"bwv bench — {res['platform']} {res.get('board') or ''}".rstrip(),
             f"  {res['width']}x{res['height']} {res['fps']} fps, {res['bitrate'] / 1e6:g} Mbit/s, "
             f"encoder {res['encoder']}, sensor {res['sensor']}, audio {'on' if res['audio'] else 'off'}",
             f"  {res['seconds']:.1f} s run, {res['frames']} frames, {res['segments_sealed']} segments "
             f"sealed, store backlog max {res['store_backlog_max']}", ""]
    width = max(len(label) for _, label, _, _ in ROWS)
    for key, label, unit, fmt in ROWS:
        v = res.get(key)
        text = "n/a" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)
        lines.append(f"  {label:<{width}}  {text:>9} {unit:<6} {key}")
    return "\n".join(lines)


def clean(o):
    """JSON-safe: floats rounded, NaN/inf as null."""
    if isinstance(o, float):
        return round(o, 4) if o == o and abs(o) != float("inf") else None
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    return o


def main(cfg: Config, *, platform: str, seconds: float, as_json: bool, keep: bool,
         tmp: str | None = None, say: Callable[[str], None] | None = None) -> int:
    """The ``bwv bench`` command. Progress lines go to ``say`` (stderr)."""
    root = Path(tempfile.mkdtemp(prefix="bwv-bench-", dir=tmp))
    try:
        res = run_bench(cfg, platform=platform, seconds=seconds, root=root,
                        say=say or (lambda s: None))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    res["store_kept"] = keep
    print(json.dumps(clean(res), sort_keys=True) if as_json else render_table(res))
    return 0
