"""The ``bwv`` command: keys, the simulated camera, verify and export.

Every error a person can cause (bad config, missing key, wrong path, tampered data) is
one line on stderr and a non-zero exit, never a traceback: 2 for "cannot do that",
1 for "verification failed".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from buffer.agency import IdentityError, write_agency_identity
from buffer.export import ExportError, export_clip
from buffer.store import StoreError
from buffer.verify import VerifyInputError, load_device_record, verify_path
from drivers.keystore import FileKeyStore, KeyStoreError
from firmware import config as config_mod
from firmware.config import ConfigError
from firmware.log import setup as setup_logging
from firmware.platform import PlatformError
from sync.target import TargetError

EXIT_FAILED_VERIFY = 1
EXIT_ERROR = 2


class CliError(Exception):
    pass


def _progress(label: str):
    """A one-line progress indicator on stderr for work a person watches."""
    tty = sys.stderr.isatty()
    last = [-1]

    def show(done: float, total: float) -> None:
        pct = int(100.0 * done / total) if total else 100
        # Whole units, unless the total is small (a 0.3 MB archive is "0.3/0.3", not "0/0").
        fmt = ".0f" if total >= 10 else ".1f"
        if tty:
            end = "\n" if done >= total else ""
            print(f"\r{label}: {done:{fmt}}/{total:{fmt}} ({pct:3d}%)", end=end, file=sys.stderr,
                  flush=True)
        elif pct // 25 != last[0] // 25 or done >= total:  # logs and pipes: a line per quarter
            last[0] = pct
            print(f"{label}: {done:{fmt}}/{total:{fmt}} ({pct}%)", file=sys.stderr, flush=True)
    return show


def cmd_keys_agency(args) -> int:
    out = Path(args.out)
    if (out / "agency.key").exists():
        raise CliError(f"{out / 'agency.key'} exists; refusing to overwrite an agency identity")
    recipient = write_agency_identity(out)
    print(json.dumps({"identity": str(out / "agency.key"), "recipient": recipient}))
    return 0


def cmd_keys_device(args) -> int:
    recipient = args.recipient
    if args.recipient_file:
        recipient = Path(args.recipient_file).read_text().strip()
    if not recipient:
        raise CliError("give the agency recipient with --recipient age1… or --recipient-file")
    ks = FileKeyStore.create(Path(args.dir), args.id, recipient)
    print(ks.device().to_json(), end="")
    return 0


def cmd_sim(args) -> int:
    from hw_sim import runner  # only the simulator command pulls in simulated hardware
    from firmware.main import StopRequest
    # Ctrl-C / SIGTERM end the scenario at the next tick and seal the open clip, as on
    # the device (`bwv run`); a KeyboardInterrupt mid-tick could strand a lock instead.
    stop = StopRequest().install()
    cfg = config_mod.load(Path(args.config) if args.config else None)
    setup_logging(cfg.log.level)
    try:
        scenario = runner.load_scenario(Path(args.scenario)) if args.scenario else runner.default_scenario()
    except runner.ScenarioError as exc:
        raise CliError(str(exc)) from None
    speed = None if args.speed == 0 else args.speed
    on_start = None
    if args.console_pty:  # the technician console on a pty cable (firmware/console_server.py)
        from firmware.console_server import sim_console
        on_start = sim_console(cfg, Path(args.workdir))
    res = runner.run(cfg, Path(args.workdir), scenario, speed=speed,
                     threaded=args.threaded or args.console_pty,
                     ack_log=Path(args.ack_log) if args.ack_log else None,
                     progress=None if args.quiet else _progress("simulated shift (s)"),
                     on_start=on_start, stop=stop)
    print(json.dumps({"store": str(res.store_dir), "identity": str(res.identity),
                      "frames": res.frames, "segments_acknowledged": len(res.acks),
                      "clips": res.clip_ids, "stopped_by": res.stopped_by}))
    # the shell's convention for a command ended by a signal: 128 + its number
    return {"sigint": 130, "sigterm": 143}.get(res.stopped_by or "", 0)


def _local_path(args, stack) -> Path:
    """A local path as given, or an s3:// clip fetched into a temporary directory."""
    if not str(args.path).startswith("s3://"):
        return Path(args.path)
    import tempfile
    from sync.fetch import fetch_clip, parse_s3_url
    from sync.s3 import S3Target, load_credentials
    bucket, key = parse_s3_url(args.path)
    creds = load_credentials(Path(args.credentials_file) if args.credentials_file else None)
    target = S3Target(args.s3_endpoint or None, bucket, credentials=creds,
                      ca_bundle=args.ca_bundle or None)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bwv-fetch-")))
    return fetch_clip(target, key, tmp)


def cmd_verify(args) -> int:
    import contextlib
    with contextlib.ExitStack() as stack:
        path = _local_path(args, stack)
        report = verify_path(path, Path(args.device_key) if args.device_key else None)
        if args.json:
            print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        else:
            _print_verify(report)
    return 0 if report.ok else EXIT_FAILED_VERIFY


def _print_verify(report) -> None:
    from buffer.verify import ClipReport
    clips = [report] if isinstance(report, ClipReport) else report.clips
    print(f"device key: {report.key_source}")
    for c in clips:
        n_ok = sum(1 for s in c.segments if not s.failures)
        print(f"clip {c.clip_id}: {'OK' if c.ok else 'FAILED'} "
              f"({n_ok}/{len(c.segments)} segments authentic, {len(c.gaps)} gap(s))")
        for g in c.gaps:
            print(f"  GAP after seq {g.get('after_seq')} before seq {g.get('before_seq')}: "
                  f"{g.get('reason')}")
    if not isinstance(report, ClipReport):
        n_ok = sum(1 for s in report.ring if not s.failures)
        print(f"ring: {n_ok}/{len(report.ring)} segments authentic")
        print(f"audit log: {report.audit_records} records, "
              f"{'OK' if not report.audit_problems else 'FAILED'}")
    for line in report.all_failures():
        print(f"FAIL {line}")
    print("RESULT: " + ("OK" if report.ok else "FAILED"))


def cmd_export(args) -> int:
    import contextlib
    device = load_device_record(Path(args.device_key)) if args.device_key else None
    args.path = args.clip
    with contextlib.ExitStack() as stack:
        clip = _local_path(args, stack)
        res = export_clip(clip, Path(args.identity), Path(args.output), device=device,
                          key_source=args.device_key or "given",
                          progress=_progress("decrypting segments"))
    print(json.dumps({"mp4": str(res.mp4), "report": str(res.report_path),
                      "frames": res.report["frame_count"],
                      "frames_checked_against_signatures": res.report["frames_checked_against_signatures"],
                      "gaps": len(res.report["gaps"])}))
    return 0


def cmd_recover(args) -> int:
    """Run the store's power-loss recovery on its own (what the agent does at start)."""
    from buffer.store import Store, StoreSettings
    from drivers.clock import SystemClock
    from hw_sim.clock import SimClock
    cfg = config_mod.load(Path(args.config) if args.config else None)
    keys = FileKeyStore(Path(args.keys or cfg.device.keys_dir))
    clock = SimClock() if args.sim_clock else SystemClock()
    store = Store.open(Path(args.store or cfg.device.store_dir), keys, clock,
                       StoreSettings(pre_record_ns=cfg.buffer.pre_record_seconds * 10**9,
                                     max_bytes=cfg.buffer.max_bytes),
                       officer_id=cfg.device.officer_id)
    report = store.recovery.as_dict()
    store.close()
    print(json.dumps(report, sort_keys=True))
    return 0


def _open_store(args, cfg):
    from buffer.store import Store, StoreSettings
    from drivers.clock import SystemClock
    keys = FileKeyStore(Path(args.keys or cfg.device.keys_dir))
    return Store.open(Path(args.store or cfg.device.store_dir), keys, SystemClock(),
                      StoreSettings(pre_record_ns=cfg.buffer.pre_record_seconds * 10**9,
                                    max_bytes=cfg.buffer.max_bytes),
                      officer_id=cfg.device.officer_id), keys


def cmd_sync(args) -> int:
    """A technician's sync with the agent stopped (the agent syncs by itself on dock)."""
    from firmware.syncing import SYNC_STATE_FILE, make_target, sync_settings
    from sync.access import StoreView
    from sync.engine import SyncEngine
    from sync.state import SyncState
    from sync.status import sync_status
    cfg = config_mod.load(Path(args.config) if args.config else None)
    if args.status:
        keys = FileKeyStore(Path(args.keys or cfg.device.keys_dir))
        st = sync_status(Path(args.store or cfg.device.store_dir), keys.device().device_id)
        if args.json:
            print(json.dumps(st, indent=2, sort_keys=True))
            return 0
        for c in st["clips"]:
            if c["state"] == "released":
                print(f"{c['clip_id']}  released (confirmed by the evidence store; see the audit log)")
                continue
            pct = 100 * c["bytes_confirmed"] // c["bytes"] if c["bytes"] else 100
            print(f"{c['clip_id']}  {c['state']:8s} {c['classification']:14s} "
                  f"{c['objects_confirmed']}/{c['objects']} objects  {pct:3d}%")
        t = st["total"]
        print(f"total: {t['clips_pending']} clip(s) waiting, {t['bytes_pending']} bytes to confirm, "
              f"{t['clips_released']} released; last run: {st['last_run']['last_status'] or 'never'}"
              + (f" ({st['last_run']['last_message']})" if st['last_run']['last_message'] else ""))
        return 0
    setup_logging(cfg.log.level)
    store, keys = _open_store(args, cfg)
    try:
        device_id = keys.device().device_id
        target = make_target(cfg, device_id, directory=Path(args.directory) if args.directory else None)
        state = SyncState(store.root / SYNC_STATE_FILE)
        show = _progress("synced (MB)")

        def progress(rep) -> None:
            total = sum(c.bytes_total for c in rep.clips)
            done = sum(c.bytes_confirmed for c in rep.clips)
            show(done / 1e6, total / 1e6)
        report = SyncEngine(store=StoreView(store), target=target, state=state, clock=store.clock,
                            settings=sync_settings(cfg, device_id, correct_clock=False),
                            progress=progress).run()
        state.close()
    finally:
        store.close()
    print(json.dumps({k: v for k, v in report.as_dict().items() if k != "clips"}, sort_keys=True))
    return 0 if report.status == "complete" else EXIT_ERROR


def cmd_store_init(args) -> int:
    """Configure an S3 bucket as a bwv evidence locker (object lock + lifecycle)."""
    from sync.bucket import init_bucket
    from sync.s3 import S3Target, load_credentials
    creds = load_credentials(Path(args.credentials_file) if args.credentials_file else None)
    target = S3Target(args.endpoint or None, args.bucket, region=args.region, credentials=creds,
                      ca_bundle=args.ca_bundle or None)
    print(json.dumps(init_bucket(target, args.bucket, retention_days=args.retention_days),
                     sort_keys=True, default=str))
    return 0


def cmd_classify(args) -> int:
    cfg = config_mod.load(Path(args.config) if args.config else None)
    store, _ = _open_store(args, cfg)
    try:
        store.set_classification(args.clip, args.classification, reason=args.reason)
    finally:
        store.close()
    print(json.dumps({"clip_id": args.clip, "classification": args.classification}))
    return 0


def cmd_run(args) -> int:
    """The device's service: run the camera until SIGTERM (systemd) or Ctrl-C."""
    from firmware.main import run
    cfg = config_mod.load(Path(args.config) if args.config else None)
    setup_logging(cfg.log.level)
    return run(cfg, platform=args.platform or cfg.device.platform,
               workdir=Path(args.workdir) if args.workdir else None,
               max_seconds=args.max_seconds)


def cmd_bench(args) -> int:
    """The figures docs/HARDWARE.md asks for, measured here (firmware/bench_cmd.py)."""
    from firmware import bench_cmd
    cfg = config_mod.load(Path(args.config) if args.config else None)
    setup_logging("warning")
    try:
        return bench_cmd.main(cfg, platform=args.platform or cfg.device.platform,
                              seconds=args.seconds, as_json=args.json, keep=args.keep,
                              tmp=args.tmp, say=lambda s: print(s, file=sys.stderr, flush=True))
    except bench_cmd.BenchError as exc:
        raise CliError(str(exc)) from None


def cmd_log(args) -> int:
    """The audit log for a technician: every record, its chain and signature checked."""
    from buffer.audit import read_events, verify_audit
    from buffer.verify import load_device_record
    cfg = config_mod.load(Path(args.config) if args.config else None)
    store = Path(args.store or cfg.device.store_dir)
    path = store / "audit.log"
    if not path.is_file():
        raise CliError(f"{path}: no audit log (is {store} a bwv store?)")
    device = load_device_record(Path(args.device_key) if args.device_key else store / "device.json")
    for ev in read_events(path):
        if args.json:
            print(json.dumps(ev, sort_keys=True))
        else:
            data = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(ev.get("data", {}).items()))
            print(f"{ev.get('seq'):>6} {ev.get('utc')} {ev.get('event'):<22} {data}")
    count, problems = verify_audit(path, device.verifies, device.device_id)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print(f"{count} records, chain and signatures {'OK' if not problems else 'FAILED'}",
          file=sys.stderr)
    return 0 if not problems else EXIT_FAILED_VERIFY


def cmd_assign(args) -> int:
    """Assign the camera to an officer (agent stopped; the running agent takes it on dock)."""
    cfg = config_mod.load(Path(args.config) if args.config else None)
    store, _ = _open_store(args, cfg)
    try:
        store.set_setting("officer_id", args.officer)
        store.audit.append("assignment", officer_id=args.officer, by=args.by)
    finally:
        store.close()
    print(json.dumps({"officer_id": args.officer}))
    return 0


def cmd_config(args) -> int:
    if args.defaults:
        print(config_mod.defaults_markdown())
        return 0
    if args.defaults_toml:
        print(config_mod.defaults_toml(), end="")
        return 0
    cfg = config_mod.load(Path(args.check))
    print(f"{cfg.source}: OK")
    return 0


def _s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default="", help="endpoint for s3:// paths (empty = AWS)")
    p.add_argument("--credentials-file", default="", help="S3 credentials (0600); default: environment")
    p.add_argument("--ca-bundle", default="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bwv", description="body-worn video camera agent")
    sub = p.add_subparsers(dest="cmd", required=True)

    keys = sub.add_parser("keys", help="make keys").add_subparsers(dest="which", required=True)
    ka = keys.add_parser("agency", help="agency age identity + recipient (back office)")
    ka.add_argument("--out", required=True, help="directory for agency.key and agency.recipient")
    ka.set_defaults(fn=cmd_keys_agency)
    kd = keys.add_parser("device", help="device id + Ed25519 signing key (on the device)")
    kd.add_argument("--dir", required=True)
    kd.add_argument("--id", required=True, help="device id, e.g. the serial number")
    kd.add_argument("--recipient", default="", help="agency age recipient (age1…)")
    kd.add_argument("--recipient-file", default="")
    kd.set_defaults(fn=cmd_keys_device)
    from firmware.technician_cli import add_keys_parser  # bwv keys technician
    add_keys_parser(keys)

    s = sub.add_parser("sim", help="run the camera on simulated hardware")
    s.add_argument("--config")
    s.add_argument("--workdir", default="out/sim")
    s.add_argument("--scenario", help="scenario TOML (default: buffer 60 s, record 30 s)")
    s.add_argument("--speed", type=float, default=0,
                   help="virtual seconds per real second (0 = as fast as possible)")
    s.add_argument("--threaded", action="store_true", help="seal on a worker thread, as on the Pi")
    s.add_argument("--ack-log", help="append each acknowledged segment as a JSON line")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--console-pty", action="store_true",
                   help="serve the technician console on a pty; its end is WORKDIR/console (use --speed 1)")
    s.set_defaults(fn=cmd_sim)

    v = sub.add_parser("verify", help="verify a clip or a whole store (no secret key needed)")
    v.add_argument("path", help="store dir, clip dir (device or dock share), or s3://BUCKET/devices/ID/clips/CLIP")
    v.add_argument("--device-key", help="the device record (device.json) to trust")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_verify)
    for sp in (v,):
        _s3_args(sp)

    e = sub.add_parser("export", help="verify, decrypt and remux a clip to MP4 + report")
    e.add_argument("clip", help="clip dir (device or dock share) or s3://BUCKET/devices/ID/clips/CLIP")
    e.add_argument("--identity", required=True, help="agency age identity file")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--device-key")
    e.set_defaults(fn=cmd_export)
    _s3_args(e)

    sy = sub.add_parser("sync", help="push closed clips to the evidence store, verify, release")
    sy.add_argument("--config")
    sy.add_argument("--store")
    sy.add_argument("--keys")
    sy.add_argument("--directory", help="dock share to use instead of the configured target")
    sy.add_argument("--status", action="store_true", help="per-clip and total progress, last run")
    sy.add_argument("--json", action="store_true")
    sy.set_defaults(fn=cmd_sync)

    st = sub.add_parser("store", help="evidence-store administration").add_subparsers(
        dest="which", required=True)
    si = st.add_parser("init", help="object lock + lifecycle on an S3 bucket")
    si.add_argument("--endpoint", default="", help="S3 endpoint URL (empty = AWS)")
    si.add_argument("--bucket", required=True)
    si.add_argument("--region", default="us-east-1")
    si.add_argument("--credentials-file", default="")
    si.add_argument("--ca-bundle", default="")
    si.add_argument("--retention-days", type=int, default=30)
    si.set_defaults(fn=cmd_store_init)

    cl = sub.add_parser("clip", help="clip administration").add_subparsers(dest="which", required=True)
    cc = cl.add_parser("classify", help="mark a clip evidential or non-evidential (audited)")
    cc.add_argument("clip")
    cc.add_argument("classification", choices=("evidential", "non-evidential"))
    cc.add_argument("--reason", required=True)
    cc.add_argument("--config")
    cc.add_argument("--store")
    cc.add_argument("--keys")
    cc.set_defaults(fn=cmd_classify)

    r = sub.add_parser("recover", help="run power-loss recovery on a store and report")
    r.add_argument("--config")
    r.add_argument("--store", help="store directory (default: device.store_dir)")
    r.add_argument("--keys", help="device key directory (default: device.keys_dir)")
    r.add_argument("--sim-clock", action="store_true", help="stamp audit records with the simulated clock")
    r.set_defaults(fn=cmd_recover)

    rn = sub.add_parser("run", help="run the camera as a service (systemd: Type=notify)")
    rn.add_argument("--config")
    rn.add_argument("--platform", choices=("sim", "pi", "auto"),
                    help="override device.platform from the config")
    rn.add_argument("--workdir", help="sim platform: folder for keys, store and dock share")
    rn.add_argument("--max-seconds", type=float, help="stop cleanly after this long (tests)")
    rn.set_defaults(fn=cmd_run)

    bn = sub.add_parser("bench", help="measure this device: real-time factor, overlay, CPU, "
                        "RSS, sealing, button latency (throwaway store)")
    bn.add_argument("--config")
    bn.add_argument("--platform", choices=("sim", "pi", "auto"),
                    help="override device.platform from the config")
    bn.add_argument("--seconds", type=float, default=20.0,
                    help="run length: half buffering, half recording (default 20)")
    bn.add_argument("--json", action="store_true", help="one JSON object")
    bn.add_argument("--tmp", help="directory for the throwaway store (default: the temp dir)")
    bn.add_argument("--keep", action="store_true", help="keep the throwaway store")
    bn.set_defaults(fn=cmd_bench)

    lg = sub.add_parser("log", help="print the audit log (verified) for a technician")
    lg.add_argument("--config")
    lg.add_argument("--store")
    lg.add_argument("--device-key")
    lg.add_argument("--json", action="store_true", help="JSON lines (one record body a line)")
    lg.set_defaults(fn=cmd_log)

    asg = sub.add_parser("assign", help="assign the camera to an officer (audited)")
    asg.add_argument("officer")
    asg.add_argument("--by", default="technician")
    asg.add_argument("--config")
    asg.add_argument("--store")
    asg.add_argument("--keys")
    asg.set_defaults(fn=cmd_assign)

    c = sub.add_parser("config", help="show defaults or check a config file")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--defaults", action="store_true")
    g.add_argument("--check", metavar="FILE")
    g.add_argument("--defaults-toml", action="store_true", help="every key at its default, as TOML")
    c.set_defaults(fn=cmd_config)

    from firmware.release_cli import add_parsers as add_release_parsers  # bwv bundle, bwv release
    add_release_parsers(sub)
    from firmware.update_cli import add_parser as add_update_parser  # bwv update (A/B slots)
    add_update_parser(sub)
    from firmware.technician_cli import add_parsers as add_technician_parsers  # provision, console
    add_technician_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (CliError, ConfigError, KeyStoreError, StoreError, VerifyInputError, ExportError,
            IdentityError, TargetError, PlatformError) as exc:
        print(f"bwv: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"bwv: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m firmware.cli` (the systemd unit, tests): run the module the command
    # modules import, not this copy named __main__, so the CliError they raise
    # (technician_cli) is the class main() catches: one line on stderr, exit 2.
    from firmware.cli import main as _canonical_main
    sys.exit(_canonical_main())
