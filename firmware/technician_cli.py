"""``bwv provision``, ``bwv console`` and ``bwv keys technician``: the technician's commands.

``bwv provision`` runs on the device with the agent stopped; ``bwv console`` runs on
the technician's machine and talks to a running camera over its serial console
(``firmware.console_client``). Errors are one line on stderr and exit 2; a self-test
with a failed check exits 1.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from firmware import config as config_mod

EXIT_FAILED = 1


def _cli_error(exc: object):
    from firmware.cli import CliError
    return CliError(str(exc))


def add_keys_parser(keys) -> None:
    kt = keys.add_parser("technician", help="a technician's Ed25519 console key pair")
    kt.add_argument("--out", required=True, help="directory for technician.key (0600) and technician.pub")
    kt.add_argument("--name", required=True, help="who holds it (recorded in the audit log)")
    kt.set_defaults(fn=cmd_keys_technician)


def add_parsers(sub) -> None:
    pv = sub.add_parser("provision", help="give this device its identity (agent stopped; audited)")
    pv.add_argument("--id", help="device id, e.g. the serial number")
    pv.add_argument("--recipient", default="", help="agency age recipient (age1…)")
    pv.add_argument("--recipient-file", default="")
    pv.add_argument("--officer", help="assign the camera to this officer")
    pv.add_argument("--technician-key", action="append", default=[], metavar="FILE",
                    help="a technician public key allowed on the console (repeatable)")
    pv.add_argument("--sync-target", choices=("directory", "s3"), help="= --sync target=…")
    pv.add_argument("--sync", action="append", default=[], metavar="KEY=VALUE",
                    help="an evidence-store setting ([sync] key), kept in KEYS/provisioning.toml")
    pv.add_argument("--update-root", metavar="FILE",
                    help="the update repository's root metadata (bwv release init: "
                         "metadata/1.root.json), pinned as KEYS/update-root.json")
    pv.add_argument("--factory-reset", action="store_true",
                    help="forget the identity and retire the store (refused with unsynced clips)")
    pv.add_argument("--by", default="technician", help="who provisions (for the audit log)")
    pv.add_argument("--config")
    pv.add_argument("--keys", help="key directory (default: device.keys_dir)")
    pv.add_argument("--store", help="store directory (default: device.store_dir)")
    pv.add_argument("--sim-clock", action="store_true", help="stamp audit records with the simulated clock")
    pv.set_defaults(fn=cmd_provision)

    c = sub.add_parser("console", help="a camera's technician console over a serial port")
    c.add_argument("--port", required=True, help="serial port (e.g. /dev/ttyACM0) or a pyserial URL")
    c.add_argument("--key", help="technician private key (0600); needed for all but info")
    c.add_argument("--baud", type=int, default=115200)
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    cs = c.add_subparsers(dest="console_cmd", required=True)
    cs.add_parser("info", help="id, firmware and slot, storage, battery, clock (no key needed)")
    cs.add_parser("selftest", help="camera, outputs, buttons, GPS, store, keys, clock")
    lg = cs.add_parser("log", help="the audit log as JSON lines")
    lg.add_argument("--tail", type=int, help="only the last N records")
    lg.add_argument("--raw", action="store_true", help="the signed lines exactly as stored")
    asg = cs.add_parser("assign", help="assign the camera to an officer")
    asg.add_argument("officer")
    pr = cs.add_parser("provision", help="re-provision (the camera restarts to apply it)")
    pr.add_argument("--id", required=True)
    pr.add_argument("--recipient", required=True)
    pr.add_argument("--officer")
    pr.add_argument("--technician-key", action="append", default=[], metavar="FILE")
    pr.add_argument("--sync-target", choices=("directory", "s3"))
    pr.add_argument("--sync", action="append", default=[], metavar="KEY=VALUE")
    fl = cs.add_parser("flash", help="send a signed update archive and install it (resumable)")
    fl.add_argument("bundle")
    c.set_defaults(fn=cmd_console)


def cmd_keys_technician(args) -> int:
    from firmware.provision import ProvisionError, write_technician_keypair
    try:
        print(json.dumps(write_technician_keypair(Path(args.out), args.name)))
    except ProvisionError as exc:
        raise _cli_error(exc) from None
    return 0


def _sync_settings(args) -> dict:
    from firmware.provision import parse_setting
    pairs = ([f"target={args.sync_target}"] if args.sync_target else []) + list(args.sync)
    return dict(parse_setting("sync", p) for p in pairs)


def cmd_provision(args) -> int:
    from drivers.clock import SystemClock
    from firmware import provision as prov
    cfg = config_mod.load(Path(args.config) if args.config else None)
    keys_dir = Path(args.keys or cfg.device.keys_dir)
    store_dir = Path(args.store or cfg.device.store_dir)
    if args.sim_clock:
        from hw_sim.clock import SimClock
        clock = SimClock()
    else:
        clock = SystemClock()
    try:
        if args.factory_reset:
            if args.id or args.technician_key or args.sync or args.officer or args.update_root:
                raise prov.ProvisionError("--factory-reset takes no identity options")
            print(json.dumps(prov.factory_reset(keys_dir=keys_dir, store_dir=store_dir, cfg=cfg,
                                                clock=clock, by=args.by), sort_keys=True))
            return 0
        if not args.id:
            raise prov.ProvisionError("give the device id with --id")
        recipient = args.recipient
        if args.recipient_file:
            recipient = Path(args.recipient_file).read_text().strip()
        if not recipient:
            raise prov.ProvisionError("give the agency recipient with --recipient age1… or --recipient-file")
        techs = tuple(prov.load_technician_key(Path(f)) for f in args.technician_key)
        root = prov.load_update_root(Path(args.update_root)) if args.update_root else None
        req = prov.ProvisionRequest(args.id, recipient, args.officer, techs, _sync_settings(args),
                                    by=args.by, via="cli")
        result = prov.provision(req, keys_dir=keys_dir, store_dir=store_dir, cfg=cfg, clock=clock,
                                update_root=root)
    except prov.ProvisionError as exc:
        raise _cli_error(exc) from None
    if result.get("retired_store"):
        print(f"bwv: the previous store was retired to {result['retired_store']}", file=sys.stderr)
    print(json.dumps(result["device"], sort_keys=True))  # the record the back office keeps
    return 0


def cmd_console(args) -> int:
    import serial

    from firmware.console_client import ConsoleClient, ConsoleError
    from firmware.provision import (
        ProvisionError,
        load_technician_key,
        load_technician_private,
    )
    key = None
    try:
        if args.console_cmd != "info":
            if not args.key:
                raise ProvisionError(f"console {args.console_cmd} needs --key (a technician key "
                                     "listed at provisioning)")
            key = load_technician_private(Path(args.key))
        request = None
        if args.console_cmd == "provision":
            techs = [load_technician_key(Path(f)) for f in args.technician_key]
            request = {"device_id": args.id, "recipient": args.recipient, "officer_id": args.officer,
                       "technicians": [{"name": t.name, "public_key": t.public_key.hex()} for t in techs],
                       "sync": _sync_settings(args)}
        if args.console_cmd == "flash" and not Path(args.bundle).is_file():
            raise ProvisionError(f"{args.bundle}: no such file")
        with ConsoleClient(args.port, baud=args.baud, timeout_s=args.timeout) as client:
            if key is not None:
                client.authenticate(key)
            return _run_console(client, args, request)
    except (ProvisionError, ConsoleError) as exc:
        raise _cli_error(f"console: {exc}") from None
    except serial.SerialException as exc:
        raise _cli_error(f"console: {args.port}: {exc}") from None


def _run_console(client, args, request) -> int:
    from firmware.console_client import ConsoleTimeout
    try:
        rc = _console_command(client, args, request)
    except ConsoleTimeout:
        raise  # nobody answers: no goodbye to wait for
    except BaseException:
        _bye(client)
        raise
    _bye(client)
    return rc


def _bye(client) -> None:
    """Close the session (audited as "bye" rather than left to time out); best effort."""
    if client.session is None:
        return
    client.retries = 0
    try:
        client.request("bye", timeout_s=2.0)
    except Exception as exc:  # noqa: BLE001 — the command's own outcome is what counts
        logging.getLogger("bwv.console").debug("bye failed: %s", exc)


def _console_command(client, args, request) -> int:
    cmd = args.console_cmd
    if cmd == "info":
        print(json.dumps(client.info(), indent=2, sort_keys=True))
    elif cmd == "selftest":
        r = client.selftest()
        for name, check in sorted(r["checks"].items()):
            print(f"{check['result'].upper():4s} {name}: {check['reason']}")
        print(f"selftest: {'OK' if r['ok'] else 'FAILED'}")
        return 0 if r["ok"] else EXIT_FAILED
    elif cmd == "log":
        def show(line: str) -> None:
            print(line if args.raw else line.rsplit("\t", 1)[0], flush=False)
        n = client.log(tail=args.tail, on_line=show)
        print(f"{n} records", file=sys.stderr)
    elif cmd == "assign":
        print(json.dumps(client.assign(args.officer)))
    elif cmd == "provision":
        r = client.provision(request)
        print(f"bwv: {r.get('message', '')}", file=sys.stderr)
        print(json.dumps(r["device"], sort_keys=True))
    elif cmd == "flash":
        from firmware.cli import _progress
        show = _progress("flashing (KiB)")
        r = client.flash(Path(args.bundle), progress=lambda done, total: show(done / 1024, total / 1024))
        print(json.dumps(r, sort_keys=True, default=str))
        inst = r.get("installed") if isinstance(r.get("installed"), dict) else {}
        if inst.get("restart"):
            print(f"bwv: installed {inst.get('version')} into slot {inst.get('slot')}; the camera "
                  "restarts into it on trial", file=sys.stderr)
    return 0
