"""Config properties (issue #7): defaults → TOML → load is the identity; any valid value
of any key round-trips; any invalid one (wrong type, out of range, NaN, infinity, a NUL,
not a choice, an unknown key) is refused with a message naming that key."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import config
from fuzz.targets.config import toml_dumps

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = [(s, k, spec) for s, keys in config.SCHEMA.items() for k, spec in keys.items()]


@pytest.fixture
def write(tmp_path):
    """Write a config whose provisioned overlay directory is empty and private (unless
    the document names its own ``device.keys_dir``)."""
    keys = tmp_path / "keys"
    keys.mkdir()

    def _write(doc: dict) -> config.Config:
        doc = {s: dict(v) for s, v in doc.items()}
        doc.setdefault("device", {}).setdefault("keys_dir", str(keys))
        path = tmp_path / "bwv.toml"
        path.write_text(toml_dumps(doc))
        return config.load(path)
    return _write


def defaults() -> dict:
    return {s: {k: spec.default for k, spec in keys.items()} for s, keys in config.SCHEMA.items()}


def test_defaults_round_trip(write, tmp_path):
    want = defaults()
    want["device"]["keys_dir"] = str(tmp_path / "keys")  # an empty overlay directory
    assert write(want).values == want


def valid_value(spec: config.Key):
    if spec.choices:
        return st.sampled_from(spec.choices)
    if spec.type is bool:
        return st.booleans()
    if spec.type is int:
        return st.integers(int(spec.min if spec.min is not None else -2**40),
                           int(spec.max if spec.max is not None else 2**40))
    if spec.type is float:
        return st.floats(spec.min, spec.max, allow_nan=False)
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   min_size=1, max_size=30).filter(str.strip)


@st.composite
def one_valid_change(draw):
    section, key, spec = draw(st.sampled_from(KEYS))
    return section, key, draw(valid_value(spec))


@SETTINGS
@given(change=one_valid_change())
def test_any_valid_value_round_trips(write, change):
    section, key, value = change
    if (section, key) == ("device", "keys_dir"):
        return  # the fixture points it at an empty directory
    doc = {section: {key: value}}
    try:
        cfg = write(doc)
    except config.ConfigError as exc:
        # valid alone, but in conflict with another key (shared pin, s3 without bucket, ...)
        rule = str(exc).split(": ", 1)[1]
        assert rule.split(".")[0].split(":")[0] in config.SCHEMA, str(exc)
        return
    assert cfg.values[section][key] == value
    assert type(cfg.values[section][key]) is config.SCHEMA[section][key].type


def invalid_value(spec: config.Key):
    wrong_type = st.sampled_from([[1], {"a": 1}, "x" if spec.type is not str else 1.5,
                                  True if spec.type is not bool else 1])
    out = [wrong_type]
    if spec.type in (int, float):
        if spec.min is not None:
            out.append(st.just(spec.type(spec.min) - (1 if spec.type is int else 0.5)))
            out.append(st.just(spec.type(spec.max) + 1))
        if spec.type is float:
            out.append(st.sampled_from([math.nan, math.inf, -math.inf]))
        # tomllib keeps integers of any length: one no float can hold (found by fuzzing)
        out.append(st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 64]))
    if spec.type is str:
        out.append(st.just("a\x00b"))
        if not spec.allow_empty:
            out.append(st.just("   "))
        if spec.choices:
            out.append(st.just("not-a-choice"))
    return st.one_of(out)


@st.composite
def one_invalid_change(draw):
    section, key, spec = draw(st.sampled_from(KEYS))
    return section, key, draw(invalid_value(spec))


@SETTINGS
@given(change=one_invalid_change())
def test_any_invalid_value_is_refused_naming_its_key(write, change):
    section, key, value = change
    with pytest.raises(config.ConfigError) as err:
        write({section: {key: value}})
    assert f"{section}.{key}: " in str(err.value), str(err.value)


@given(name=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_unknown_keys_and_sections_are_named(write, name):
    if name not in config.SCHEMA["camera"]:
        with pytest.raises(config.ConfigError, match=f"camera.{name}: unknown key"):
            write({"camera": {name: 1}})
    if name not in config.SCHEMA:
        with pytest.raises(config.ConfigError, match=f"{name}: unknown section"):
            write({name: {"x": 1}})


@pytest.mark.parametrize("section,key", [(s, k) for s, k, spec in KEYS if spec.type in (int, float)])
def test_an_integer_too_large_for_any_number_type_is_named(write, section, key):
    """tomllib returns integers of any length; float() of one raised OverflowError
    out of validation (fuzz regression ``config/huge-int-for-float-key.toml``)."""
    with pytest.raises(config.ConfigError) as err:
        write({section: {key: 10 ** 400}})
    assert f"{section}.{key}: a 1329-bit number is " in str(err.value), str(err.value)


def test_an_integer_over_pythons_digit_limit_is_invalid_toml(tmp_path):
    path = tmp_path / "bwv.toml"
    path.write_text("[camera]\nfps = " + "9" * 5000 + "\n")
    with pytest.raises(config.ConfigError, match="not valid TOML .*4300 digits"):
        config.load(path)
