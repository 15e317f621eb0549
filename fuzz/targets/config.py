"""Target ``config``: the configuration file, as ``bwv`` and the agent load it.

The mutator parses the TOML, changes one value structurally (another type, NaN, a huge
number, deep nesting, a deleted or unknown key) and writes it back, half the time;
``fuzz/dicts/config.dict`` gives libFuzzer TOML's tokens for the other half.

The input is written as a file and loaded with ``firmware.config.load`` (tomllib, then
the schema), and once more as the provisioned ``[sync]`` overlay
(``<keys_dir>/provisioning.toml``) that ``load`` merges in (for every input that is
TOML, and one in eight of the rest: parsing is most of the cost). Only ``ConfigError`` may come out, with a message. A config that loads
must keep the schema's promise: every key has its type, lies within its range (NaN is
not within any range) and is one of its choices.
"""
from __future__ import annotations

import json
import math
import random
import tomllib
from typing import Any

from firmware import config
from fuzz.harness import Defect, named, scratch
from fuzz.jsonmut import _DEEP, mutate_value

_paths: dict = {}


def check(data: bytes) -> None:
    if not _paths:
        keys = scratch() / "config-keys"
        keys.mkdir(exist_ok=True)
        main = scratch() / "bwv.toml"
        pointer = scratch() / "bwv-provisioned.toml"
        pointer.write_text(toml_dumps({"device": {"keys_dir": str(keys)}}))
        _paths.update(main=main, overlay=keys / config.PROVISIONING_FILE, pointer=pointer)
    _paths["main"].write_bytes(data)
    toml_ok = _load_and_check(_paths["main"])
    # The same bytes as the provisioned [sync] overlay beside the device keys: when they
    # are TOML (the overlay's own logic starts after the parse), and one time in eight
    # when not (its error path) — the parse is most of the cost.
    _paths["n"] = _paths.get("n", 0) + 1
    if not toml_ok and _paths["n"] % 8:
        return
    _paths["overlay"].write_bytes(data)
    _paths["overlay"].chmod(0o644)
    _load_and_check(_paths["pointer"])


def _load_and_check(path) -> bool:
    """Load and check; False when the file was not TOML at all."""
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        named(exc)
        return "not valid TOML" not in str(exc)
    for section, keys in config.SCHEMA.items():
        for key, spec in keys.items():
            value = cfg.values[section][key]
            name = f"{section}.{key}"
            if type(value) is not spec.type:
                raise Defect(f"{name} loaded as {type(value).__name__}, schema says {spec.type.__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise Defect(f"{name} accepted the non-finite value {value!r}")
            if spec.min is not None and not spec.min <= value <= spec.max:
                raise Defect(f"{name} accepted {value!r}, outside {spec.min}..{spec.max}")
            if spec.choices is not None and value not in spec.choices:
                raise Defect(f"{name} accepted {value!r}, not one of {spec.choices}")
    return True


def _string(v: str) -> str:
    """A TOML basic string: JSON's escapes, minus the surrogate pairs (non-BMP
    characters stay literal) and with DEL escaped (TOML forbids it raw)."""
    return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")


def _lit(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                            "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str) and v.startswith(_DEEP):
        n = int(v[len(_DEEP):])
        return "[" * n + "]" * n
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_string(k)} = {_lit(x)}" for k, x in v.items()) + "}"
    return '""'  # None (TOML has no null) and anything else


def toml_dumps(doc: dict) -> str:
    """TOML for a document of tables of values (any JSON-like value; the seeds and the
    mutator share it). Top-level scalars come first, then one ``[table]`` per dict."""
    head = [f"{_string(k)} = {_lit(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    out = head + [""] if head else []
    for section, keys in doc.items():
        if isinstance(keys, dict):
            out.append(f"[{_string(section)}]" if not section.isidentifier() else f"[{section}]")
            out += [f"{k} = {_lit(v)}" if k.isidentifier() else f"{_string(k)} = {_lit(v)}"
                    for k, v in keys.items()]
            out.append("")
    return "\n".join(out)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            doc = tomllib.loads(data.decode("utf-8"))
            doc = mutate_value(doc, rng)
            if isinstance(doc, dict):
                return toml_dumps(doc).encode()[:max_size]
        except Exception:  # noqa: BLE001, S110 — not TOML (or datetimes): mutate the bytes
            pass
    return atheris.Mutate(data, max_size)
