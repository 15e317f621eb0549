"""``bwv update``: a technician's view of the A/B slots, and installs and rollbacks.

``--status [--json] [--verify]`` shows both slots (state, version, which runs, which is
on trial and how many starts it used), the last result and when. ``--install SOURCE``
installs a *verified* update: an offline update archive (``bwv release archive``) or a
release repository (directory or http(s) URL); a bare bundle is refused, since it
carries no signature. ``--rollback`` switches back to the previous slot after
re-verifying it. Installs and rollbacks are audited: in the store's audit log when the
agent is stopped (the store can be opened), else queued in ``boot.json`` for the agent.
The new slot runs from the next start of the service (``systemctl restart bwv``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from firmware import config as config_mod
from sync.untrusted_tar import TAR_FAILURES, open_untrusted_tar

EXIT_ERROR = 2


def add_parser(sub) -> None:
    u = sub.add_parser("update", help="firmware A/B slots: status, install a verified update, roll back")
    g = u.add_mutually_exclusive_group(required=True)
    g.add_argument("--status", action="store_true", help="slots, versions, trial, last result")
    g.add_argument("--install", metavar="ARCHIVE_OR_SOURCE",
                   help="offline update archive, or a release repository (directory or URL)")
    g.add_argument("--rollback", action="store_true", help="switch back to the previous slot")
    u.add_argument("--json", action="store_true", help="with --status: JSON")
    u.add_argument("--verify", action="store_true", help="with --status: re-hash every slot")
    u.add_argument("--reason", default="technician request", help="with --rollback: for the audit log")
    u.add_argument("--config")
    u.add_argument("--slots-dir", help="override update.slots_dir")
    u.add_argument("--store", help="store for the audit log (default: device.store_dir)")
    u.add_argument("--keys", help="device keys (default: device.keys_dir; holds the pinned update root)")
    u.add_argument("--platform", choices=("sim", "pi", "auto"), help="override device.platform")
    u.set_defaults(fn=cmd_update)


def _fail(msg: str) -> int:
    print(f"bwv: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _clock(platform: str):
    """The clock TUF compares expiry with: chrony's view on a Pi, the host's in the
    simulator (a development machine or CI keeps its own clock synchronised)."""
    from drivers.clock import ClockState, SystemClock
    if platform == "pi":  # pragma: no cover - needs chrony
        from drivers.pi_clock import ChronyClock
        return ChronyClock()
    return SystemClock(ClockState(synced=True, source="host"))


def cmd_update(args) -> int:
    from firmware.bundle import BundleError
    from firmware.slots import SlotError, Slots
    from firmware.updating import UpdateRefused
    from firmware.wheel import WheelError
    from sync.firmware_fetch import UpdateError
    try:
        cfg = config_mod.load(Path(args.config) if args.config else None)
        if args.slots_dir:
            cfg = cfg.with_overrides(update__slots_dir=args.slots_dir)
        from firmware.log import setup as setup_logging
        setup_logging(cfg.log.level)
        from firmware.platform import choose
        info = choose(args.platform or cfg.device.platform)
        clock = _clock(info.platform)
        slots = Slots(Path(cfg.update.slots_dir), clock=clock, max_attempts=cfg.update.max_boot_attempts)
        if args.status:
            return _status(slots, args)
        if args.install:
            return _install(args, cfg, info, clock, slots)
        return _rollback(args, cfg, slots)
    except (SlotError, UpdateError, BundleError, WheelError, UpdateRefused,
            config_mod.ConfigError) as exc:
        reason = getattr(exc, "reason", None)
        return _fail(f"{reason}: {exc}" if reason and not str(exc).startswith(str(reason)) else str(exc))
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


# ------------------------------------------------------------------------ status

def _status(slots, args) -> int:
    st = slots.status(verify=args.verify)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    if not st["uses_slots"]:
        print(f"no firmware slots under {st['root']} (this bwv runs from a source tree or a "
              "plain install; update.slots_dir names the slot directory)")
        return 0
    print(f"slots: {st['root']}  (current -> slots/{st['current']})")
    print(f"{'slot':4}  {'state':10}  {'version':9}  {'role':24}  {'installed':20}  committed")
    for name, s in st["slots"].items():
        role = []
        if s["current"]:
            role.append("current")
        if s["trying"]:
            role.append(f"on trial {st['attempts']}/{st['max_attempts']}")
        if s["previous"]:
            role.append("previous (rollback)")
        line = (f"{name:4}  {s.get('state', '?'):10}  {s.get('version') or '-':9}  "
                f"{', '.join(role) or '-':24}  {s.get('installed_utc') or '-':20}  "
                f"{s.get('committed_utc') or '-'}")
        if "verified" in s:
            line += "  verified" if s["verified"] else f"  DAMAGED: {s['problems'][0]}"
        print(line)
    last = st["last_result"]
    if last:
        extra = {k: v for k, v in last.items() if k not in ("result", "slot", "version", "utc")}
        detail = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(extra.items()))
        print(f"last result: {last['result']} (slot {last['slot']}, {last['version']}) at "
              f"{last['utc']}" + (f"  {detail}" if detail else ""))
    if st["pending_audit"]:
        print(f"{st['pending_audit']} audit record(s) wait for the agent's store")
    return 1 if args.verify and any(s.get("verified") is False for s in st["slots"].values()) else 0


# ------------------------------------------------------------------------ audit

class _Audit:
    """The store's audit log when it can be opened (agent stopped), else boot.json's
    queue, which the agent appends at its next start."""

    def __init__(self, args, cfg, slots) -> None:
        self.store = None
        self.slots = slots
        try:
            from firmware.cli import _open_store
            self.store, _ = _open_store(args, cfg)
        except Exception as exc:  # noqa: BLE001 — locked by the agent, or no store on this machine
            self.why = str(exc)
        self.defers = self.store is None  # firmware.slots keeps its own records queued then

    def __call__(self, event: str, **data) -> None:
        if self.store is not None:
            self.store.audit.append(event, **data)
        else:
            self.slots.defer_audit(event, **data)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        else:
            print(f"note: audit records queued in {self.slots.boot_path} for the agent "
                  f"(store not available: {self.why})", file=sys.stderr)


def _kind(source: str) -> str:
    """"archive", "repository" or "bundle" (a bare bundle: refused)."""
    if source.startswith(("http://", "https://")) or Path(source).is_dir():
        return "repository"
    try:
        with open_untrusted_tar(Path(source)) as tar:
            first = tar.next()
    except FileNotFoundError:
        raise OSError(2, "no such file or directory", source) from None
    except TAR_FAILURES:
        return "archive"  # let the archive reader name what is wrong with it
    return "bundle" if first is not None and first.name == "bundle.json" else "archive"


def _install(args, cfg, info, clock, slots) -> int:
    from firmware.bundle import hardware_id
    from firmware.cli import _progress
    from firmware.updating import install_update, install_offline_archive, repository_fetch
    kind = _kind(args.install)
    if kind == "bundle":
        return _fail(f"{args.install} is a bare firmware bundle: it carries no signature. Install "
                     "an offline update archive (bwv release archive) or a release repository")
    hardware = hardware_id(info)
    keys = Path(args.keys) if args.keys else None
    audit = _Audit(args, cfg, slots)
    try:
        if kind == "archive":
            result = install_offline_archive(Path(args.install), cfg=cfg, clock=clock, hardware=hardware,
                                             slots=slots, keys_dir=keys, audit=audit,
                                             progress=_progress("installing (steps)"),
                                             verify_progress=_progress("verifying update (bytes)"))
        else:
            fetch = repository_fetch(cfg, clock, source=args.install, keys_dir=keys, explicit=True,
                                     progress=_progress("downloading update (bytes)"))
            result = install_update(fetch, cfg=cfg, clock=clock, hardware=hardware, slots=slots,
                                    audit=audit, progress=_progress("installing (steps)"),
                                    source=args.install)
    finally:
        audit.close()
    print(json.dumps(result, sort_keys=True))
    if result.get("status") == "installed":
        print(f"installed {result['version']} into slot {result['slot']}"
              + (f"; on trial from the next start (systemctl restart bwv), rolled back after "
                 f"{cfg.update.max_boot_attempts} failed starts" if result.get("trial") else ""),
              file=sys.stderr)
    return 0


def _rollback(args, cfg, slots) -> int:
    audit = _Audit(args, cfg, slots)
    try:
        o = slots.rollback(f"technician: {args.reason}", audit=audit)
    finally:
        audit.close()
    print(json.dumps({"status": o.action, "slot": o.slot, "version": o.version}, sort_keys=True))
    print(f"rolled back to slot {o.slot} ({o.version}); it runs from the next start "
          "(systemctl restart bwv)", file=sys.stderr)
    return 0

