"""The one configuration file (TOML), validated at start-up.

Every key has a type, a default and a range here; the README's configuration table is
generated from ``SCHEMA`` (``bwv config --defaults``) so the two cannot drift. A wrong
value or an unknown key is refused with its dotted name: a camera that silently ignores
a typo in ``pre_record_seconds`` would record the wrong evidence window.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """An invalid configuration; the message starts with the offending key."""


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    allow_empty: bool = False


SCHEMA: dict[str, dict[str, Key]] = {
    "device": {
        "officer_id": Key(str, "UNASSIGNED", "officer id burned into frames and written in manifests"),
        "keys_dir": Key(str, "/var/lib/bwv/keys", "device signing key, device record, agency recipient"),
        "store_dir": Key(str, "/var/lib/bwv/store", "sealed segments, clips, index, audit log"),
        "platform": Key(str, "auto", "hardware: sim (simulated), pi, or auto (a Raspberry Pi "
                        "device tree and an importable picamera2, else sim)",
                        choices=("sim", "pi", "auto")),
    },
    "camera": {
        "width": Key(int, 1280, "frame width (1920 for 1080p)", 160, 4096),
        "height": Key(int, 720, "frame height (1080 for 1080p)", 120, 2160),
        "fps": Key(int, 30, "frames per second", 1, 60),
        "bitrate": Key(int, 8_000_000, "H.264 bitrate, bit/s", 100_000, 50_000_000),
        "segment_seconds": Key(float, 2.0, "segment length = key-frame interval, s", 0.5, 10.0),
    },
    "buffer": {
        "pre_record_seconds": Key(int, 30, "pre-record window kept while buffering, s", 0, 120),
        "max_bytes": Key(int, 8 * 1024**3, "byte budget of the store", 1024**2, 2**50),
        "nearly_full_fraction": Key(float, 0.9, "pinned share of the budget that raises the "
                                    "storage-nearly-full alarm", 0.1, 1.0),
    },
    "controls": {
        "record_button": Key(int, 17, "BCM pin of the record button (active low)", 0, 27),
        "function_button": Key(int, 27, "BCM pin of the function button (active low)", 0, 27),
        "green_led": Key(int, 22, "BCM pin of the green LED", 0, 27),
        "red_led": Key(int, 23, "BCM pin of the red LED", 0, 27),
        "haptic": Key(int, 24, "BCM pin of the vibration motor driver", 0, 27),
        "buzzer": Key(int, 25, "BCM pin of the buzzer", 0, 27),
        "debounce_ms": Key(int, 30, "software debounce of both buttons, ms", 1, 500),
        "double_press_ms": Key(int, 600, "second press within this starts recording, ms", 100, 2000),
        "hold_ms": Key(int, 3000, "holding record this long stops recording, ms", 500, 10000),
        "mute_mode": Key(str, "latched", "latched: function double press toggles mute; push-hold: "
                         "muted while the function button is held (stealth is then a double press)",
                         choices=("latched", "push-hold")),
        "trigger_pin": Key(int, 6, "BCM pin of the trigger input (holster / light bar, high = active)", 0, 27),
        "trigger_enabled": Key(bool, False, "the trigger input starts recording (it never stops one)"),
        "reminder_seconds": Key(int, 120, "reminder buzz + tone while recording every N s (0 = off)", 0, 3600),
        "stuck_seconds": Key(int, 30, "a button held this long is reported stuck (a fault)", 10, 600),
    },
    "recording": {
        "max_clip_hours": Key(float, 4.0, "a recording is split into a new clip (same incident) "
                              "after this long", 0.005, 24.0),
    },
    "audio": {
        "enabled": Key(bool, True, "record an audio track (AAC) with the video"),
        "in_pre_record": Key(bool, False, "keep audio in the pre-record window too"),
        "sample_rate": Key(int, 48000, "microphone sample rate, Hz", 8000, 48000),
        "device": Key(str, "default", "Pi: ALSA capture device of the microphone (`arecord -L`, "
                      "e.g. plughw:CARD=Device,DEV=0)"),
    },
    "power": {
        "low_percent": Key(int, 10, "battery-low alarm at or below this charge, %", 1, 50),
        "critical_percent": Key(int, 3, "at or below: close the clip and shut down cleanly, %", 1, 20),
        "check_seconds": Key(int, 30, "fuel gauge read interval, s", 1, 600),
    },
    "gps": {
        "enabled": Key(bool, True, "read a NMEA 0183 GPS on a UART"),
        "port": Key(str, "/dev/bwv-gps", "serial device (a udev symlink)"),
        "baudrate": Key(int, 9600, "UART speed", 1200, 921600),
        "fix_max_age_s": Key(int, 10, "an older fix is not used for segments and markers", 1, 600),
        "log_recording_s": Key(int, 10, "position into the audit log every N s while recording", 1, 3600),
        "log_buffering_s": Key(int, 900, "position into the audit log every N s while buffering", 10, 86400),
        "alarm_on_loss": Key(bool, False, "indicate a lost fix to the officer"),
        "pps_pin": Key(int, 18, "Pi: BCM pin of the receiver's PPS output (0 = not wired); "
                       "install-pi adds the pps-gpio overlay and chrony's PPS refclock", 0, 27),
        "chrony_socket": Key(str, "/run/chrony.bwv-nmea.sock", "Pi: chrony SOCK refclock the "
                             "NMEA time is fed to (empty = do not feed chrony)", allow_empty=True),
        "nmea_offset_ms": Key(int, 0, "Pi: chrony `offset` of the NMEA refclock (the receiver's "
                              "sentence delay, measured against PPS)", -900, 900),
    },
    "alarms": {
        "repeat_seconds": Key(int, 60, "an active alarm repeats its pattern every N s", 5, 3600),
    },
    "dock": {
        "pin": Key(int, 5, "BCM pin of the dock-detect input (USB VBUS sense, high = docked)", 0, 27),
        "debounce_ms": Key(int, 300, "the dock level must be stable this long to count", 10, 5000),
    },
    "sync": {
        "target": Key(str, "directory", "where docked clips go: a dock share or S3",
                      choices=("directory", "s3")),
        "directory": Key(str, "/mnt/bwv-dock", "dock share root (target = directory)"),
        "s3_endpoint": Key(str, "", "S3 endpoint URL; empty = AWS", allow_empty=True),
        "s3_bucket": Key(str, "", "evidence bucket (target = s3)", allow_empty=True),
        "s3_region": Key(str, "us-east-1", "S3 region"),
        "credentials_file": Key(str, "", "file with the S3 key id and secret (mode 0600); "
                                "empty = environment", allow_empty=True),
        "verify_tls": Key(bool, True, "verify the store's TLS certificate"),
        "ca_bundle": Key(str, "", "CA bundle for a private CA; empty = system", allow_empty=True),
        "verify": Key(str, "checksum", "proof of receipt: store-reported SHA-256, or read back "
                      "every object", choices=("checksum", "read-back")),
        "evidential_first": Key(bool, True, "push evidential clips before others"),
        "default_classification": Key(str, "non-evidential", "classification of a new clip",
                                      choices=("evidential", "non-evidential")),
        "marker_makes_evidential": Key(bool, True, "an event marker classifies its clip evidential"),
        "correct_clock": Key(bool, True, "step the clock to the store's time on dock"),
        "clock_alarm_seconds": Key(int, 10, "offset from the store's time that raises an alarm", 1, 86400),
        "retention_days": Key(int, 30, "lifecycle expiry of non-evidential objects (store init)", 1, 36500),
        "max_attempts": Key(int, 5, "tries per request before a round is interrupted", 1, 20),
        "rounds": Key(int, 5, "sync rounds while docked before giving up until the next dock", 1, 100),
    },
    "update": {
        "slots_dir": Key(str, "/opt/bwv/firmware", "A/B firmware slots (slots/a, slots/b, current, boot.json)"),
        "min_battery_percent": Key(int, 50, "install an update only at or above this charge, %", 0, 100),
        "source": Key(str, "", "where docked updates come from: a dock share directory or an "
                      "http(s) URL of a bwv release repository; empty = no dock updates",
                      allow_empty=True),
        "metadata_dir": Key(str, "/var/lib/bwv/update/metadata", "TUF metadata this device "
                            "trusts (downloads go to the sibling downloads/)"),
        "max_boot_attempts": Key(int, 3, "starts a new slot gets to pass its health check "
                                 "before the previous slot is restored", 1, 10),
        "health_timeout_seconds": Key(int, 60, "a start whose health check has not passed "
                                      "after this long counts as failed", 5, 600),
    },
    "console": {
        "enabled": Key(bool, True, "run the technician console (bwv run; a pty on the sim platform)"),
        "port": Key(str, "/dev/ttyGS0", "serial port of the console (the USB CDC-ACM gadget)"),
        "baud": Key(int, 115200, "line speed (ignored by USB CDC-ACM and ptys)", 1200, 4_000_000),
        "session_timeout_s": Key(int, 300, "a console session idle this long is closed", 10, 86400),
    },
    "log": {
        "level": Key(str, "info", "debug | info | warning | error",
                     choices=("debug", "info", "warning", "error")),
    },
}


class Section:
    """Attribute access to one validated section (``cfg.camera.fps``)."""

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self._name = name
        self.__dict__.update(values)

    def __repr__(self) -> str:
        items = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"Section({self._name}, {items})"


class Config:
    def __init__(self, values: dict[str, dict[str, Any]], source: str) -> None:
        self.source = source
        self.values = values
        for name, section in values.items():
            setattr(self, name, Section(name, section))

    def with_overrides(self, **dotted: Any) -> "Config":
        """A copy with ``section__key=value`` overrides, validated like the file."""
        raw = {s: dict(v) for s, v in self.values.items()}
        for k, v in dotted.items():
            sect, key = k.split("__", 1)
            raw[sect][key] = v
        return validate(raw, self.source)


def _show(value: Any) -> str:
    """A number for an error message: a huge integer by its size, not its digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit number"
    return str(value)


def _brief(value: Any) -> str:
    """Any TOML value for an error message. A hex literal (0xfff…, 3600 digits) is an
    integer of more than 4300 decimal digits: ``repr`` refuses it, in a list too."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _show(value)
    try:
        return repr(value)[:200]
    except ValueError:
        return f"a {type(value).__name__} holding a number too large to show"


def _check(section: str, key: str, spec: Key, value: Any) -> Any:
    name = f"{section}.{key}"
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # tomllib keeps integers of any length; a float cannot
            raise ConfigError(f"{name}: {_show(value)} is out of range") from None
    if (isinstance(value, bool) != (spec.type is bool)) or not isinstance(value, spec.type):
        raise ConfigError(f"{name}: expected {spec.type.__name__}, got {type(value).__name__} ({_brief(value)})")
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
        raise ConfigError(f"{name}: {value} is not a finite number")
    if isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"{name}: contains a NUL character")
    if spec.min is not None and value < spec.min:
        raise ConfigError(f"{name}: {_show(value)} is below the minimum {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ConfigError(f"{name}: {_show(value)} is above the maximum {spec.max:g}")
    if isinstance(value, str) and not value.strip() and not spec.allow_empty:
        raise ConfigError(f"{name}: must not be empty")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(spec.choices)}")
    return value


def validate(raw: dict[str, Any], source: str = "<defaults>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("configuration must be a TOML table")
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(SCHEMA)})")
    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{section}: must be a table")
        for key in given:
            if key not in keys:
                raise ConfigError(f"{section}.{key}: unknown key")
        values[section] = {k: _check(section, k, spec, given.get(k, spec.default))
                           for k, spec in keys.items()}
    sy = values["sync"]
    if sy["target"] == "s3" and not sy["s3_bucket"]:
        raise ConfigError("sync.s3_bucket: required when sync.target is \"s3\"")
    c = values["controls"]
    if c["double_press_ms"] >= c["hold_ms"]:
        raise ConfigError("controls.double_press_ms: must be shorter than controls.hold_ms")
    if c["debounce_ms"] >= c["double_press_ms"]:
        raise ConfigError("controls.debounce_ms: must be shorter than controls.double_press_ms")
    pins = [c[k] for k in ("record_button", "function_button", "green_led", "red_led", "haptic",
                           "buzzer", "trigger_pin")] + [values["dock"]["pin"]]
    if len(set(pins)) != len(pins):
        raise ConfigError("controls: two functions share one pin")
    if values["gps"]["pps_pin"] and values["gps"]["pps_pin"] in pins:  # 0 = not wired
        raise ConfigError(f"gps.pps_pin: GPIO{values['gps']['pps_pin']} is already used by a control")
    if values["gps"]["chrony_socket"] and not values["gps"]["chrony_socket"].startswith("/"):
        raise ConfigError("gps.chrony_socket: must be an absolute path (or empty)")
    pw = values["power"]
    if pw["critical_percent"] >= pw["low_percent"]:
        raise ConfigError("power.critical_percent: must be below power.low_percent")
    cam = values["camera"]
    if cam["width"] % 2 or cam["height"] % 2:
        raise ConfigError("camera.width: width and height must be even (4:2:0 video)")
    return Config(values, source)


#: This device's evidence-store settings, written by `bwv provision` into the keys
#: directory; laid over the configuration file's ``[sync]`` (firmware/provision.py).
PROVISIONING_FILE = "provisioning.toml"


def _provisioned_overlay(raw: dict) -> tuple[dict, str | None]:
    device = raw.get("device", {}) if isinstance(raw.get("device", {}), dict) else {}
    keys_dir = device.get("keys_dir", SCHEMA["device"]["keys_dir"].default)
    if not isinstance(keys_dir, str):  # validate() names the type; str() of 0xfff… raises
        return raw, None
    path = Path(keys_dir) / PROVISIONING_FILE
    if "\x00" in str(path):
        raise ConfigError("device.keys_dir: contains a NUL character")
    try:
        st = path.stat()
        over = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return raw, None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: TOML, UTF-8, a NUL in the path
        raise ConfigError(f"{path}: not readable TOML ({exc or type(exc).__name__})") from None
    if st.st_mode & 0o022:
        raise ConfigError(f"{path}: writable by group/others; refusing settings that say where "
                          "evidence goes — chmod 644")
    if set(over) - {"sync"} or not isinstance(over.get("sync", {}), dict):
        raise ConfigError(f"{path}: only a [sync] table may be provisioned")
    merged = dict(raw)
    if not isinstance(raw.get("sync", {}), dict):
        raise ConfigError("sync: must be a table")
    merged["sync"] = {**(raw.get("sync") or {}), **over.get("sync", {})}
    return merged, str(path)


def load(path: Path | None) -> Config:
    """Read and validate; ``None`` means all defaults. A provisioned ``[sync]`` overlay
    (``<keys_dir>/provisioning.toml``) wins over the file's."""
    if path is None:
        raw, over = _provisioned_overlay({})
        try:
            return validate(raw, f"<defaults> + {over}" if over else "<defaults>")
        except ConfigError as exc:
            raise ConfigError(f"{over}: {exc}") from None
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except ValueError as exc:  # TOMLDecodeError, UTF-8, an integer over Python's 4300 digits
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses per nested array/table (fuzz target `config`)
        raise ConfigError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None
    raw, over = _provisioned_overlay(raw)
    source = f"{path} + {over}" if over else str(path)
    try:
        return validate(raw, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def defaults_markdown() -> str:
    """The README's configuration table, generated from SCHEMA."""
    lines = ["| key | default | range | meaning |", "|---|---|---|---|"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            fmt = (lambda v: f"{int(v)}") if spec.type is int else (lambda v: f"{v:g}")
            rng = "" if spec.min is None else f"{fmt(spec.min)} – {fmt(spec.max)}"
            default = (str(spec.default).lower() if isinstance(spec.default, bool)
                       else f"{spec.default!r}".replace("'", '"'))
            doc = spec.doc.replace("|", "\\|")
            if spec.choices:
                rng = " \\| ".join(spec.choices)
            lines.append(f"| `{section}.{key}` | `{default}` | {rng} | {doc} |")
    return "\n".join(lines)


def defaults_toml() -> str:
    """Every key at its default as a TOML file, each with its meaning as a comment: the
    default configuration a firmware bundle ships (``config/default.toml``). It is
    checked by parsing and validating it again, so it can never drift from SCHEMA."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        return repr(v)
    lines = ["# bwv default configuration (generated from firmware/config.py SCHEMA)"]
    for section, keys in SCHEMA.items():
        lines += ["", f"[{section}]"]
        for key, spec in keys.items():
            lines.append(f"# {spec.doc}")
            lines.append(f"{key} = {value(spec.default)}")
    text = "\n".join(lines) + "\n"
    validate(tomllib.loads(text), "<defaults_toml>")
    return text
