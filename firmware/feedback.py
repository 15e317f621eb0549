"""What the officer sees, feels and hears: LED, haptic and buzzer patterns as data.

This module owns the patterns and the arithmetic of "which output is on at instant t".
It drives outputs only through a ``set_output(name, on)`` callable (``Controls.set_output``
on the device, the same on ``hw_sim``), and reads time only from the ``now_ns`` it is
given (the injected clock's monotonic time). No threads, no sleeps: the agent calls
``poll`` when it runs its loop; ``next_change_ns`` says when that next matters.

Representation
--------------
A :class:`Pattern` is a tuple of :class:`Step` plus a ``loop`` flag. A step switches its
``outputs`` on for ``on_ms``, then every output of the pattern off for ``off_ms``. A
looping pattern repeats from its first step; a one-shot pattern ends after its last
step. Example: ``Pattern((Step(("green",), 100, 1900),), loop=True)`` is a 100 ms green
blink every 2 s.

- A **mode** is a looping LED pattern; exactly one mode (or none) is current. Its phase is
  measured from when the mode was set; setting the mode that is already current keeps
  its phase (the agent may re-assert its mode freely without glitching the blink).
- A **cue** is a one-shot haptic+buzzer pattern started by :meth:`Feedback.cue`; cues
  overlay the mode (an output is on if the mode *or* any playing cue says so) and end by
  themselves. Several cues may overlap.
- ``stealth = True`` forces every output off (LEDs, tones and haptics); cues keep their
  own time meanwhile, so a cue that ends during stealth is simply never seen.

``describe()`` renders the same data for the README table.

Not thread-safe: the agent calls ``set_mode``/``cue``/``poll`` under its own lock.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

MS = 1_000_000  # nanoseconds per millisecond

#: Every output Feedback drives (the names Controls.set_output accepts).
OUTPUTS: tuple[str, ...] = ("green", "red", "haptic", "buzzer")


@dataclass(frozen=True)
class Step:
    """``outputs`` on for ``on_ms``, then all of the pattern's outputs off for ``off_ms``."""

    outputs: tuple[str, ...]
    on_ms: int
    off_ms: int = 0

    def __post_init__(self) -> None:
        unknown = [o for o in self.outputs if o not in OUTPUTS]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; expected some of {OUTPUTS}")
        if self.on_ms < 0 or self.off_ms < 0 or self.on_ms + self.off_ms <= 0:
            raise ValueError(f"step durations must be >= 0 with a positive sum: {self!r}")


@dataclass(frozen=True)
class Pattern:
    steps: tuple[Step, ...]
    loop: bool

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a pattern needs at least one step")

    @property
    def length_ms(self) -> int:
        """One pass through the steps (the period of a looping pattern)."""
        return sum(s.on_ms + s.off_ms for s in self.steps)

    def on_at(self, elapsed_ns: int) -> frozenset[str]:
        """Outputs this pattern has on ``elapsed_ns`` after it started (empty once ended)."""
        if elapsed_ns < 0:
            return frozenset()
        total = self.length_ms * MS
        if self.loop:
            elapsed_ns %= total
        elif elapsed_ns >= total:
            return frozenset()
        for step in self.steps:
            if elapsed_ns < step.on_ms * MS:
                return frozenset(step.outputs)
            elapsed_ns -= (step.on_ms + step.off_ms) * MS
            if elapsed_ns < 0:
                return frozenset()
        return frozenset()  # unreachable: elapsed < total

    def boundaries_ms(self) -> list[int]:
        """Offsets (ms, within one pass) at which the pattern's levels may change."""
        out, t = [], 0
        for step in self.steps:
            out.append(t)
            t += step.on_ms
            out.append(t)
            t += step.off_ms
        out.append(t)
        return out

    def ended(self, elapsed_ns: int) -> bool:
        return not self.loop and elapsed_ns >= self.length_ms * MS


_BUZZ = ("haptic", "buzzer")

#: Looping LED patterns, one per agent state.
MODES: dict[str, Pattern] = {
    "buffering": Pattern((Step(("green",), 100, 1900),), loop=True),
    "recording": Pattern((Step(("red",), 1000, 0),), loop=True),  # steady red
    "fault": Pattern((Step(("red",), 250, 250),), loop=True),
    "store_full": Pattern((Step(("red",), 500, 0), Step(("green",), 500, 0)), loop=True),
    "docked": Pattern((Step(("green",), 1000, 0),), loop=True),  # steady green: all synced
    "syncing": Pattern((Step(("green",), 250, 250),), loop=True),
    "sync_fault": Pattern((Step(("red", "green"), 250, 750),), loop=True),
    "muted": Pattern((Step(("red",), 700, 300),), loop=True),  # red with a gap: audio off
}

#: One-shot haptic + buzzer cues.
CUES: dict[str, Pattern] = {
    "start": Pattern((Step(_BUZZ, 150, 150), Step(_BUZZ, 150, 0)), loop=False),
    "stop": Pattern((Step(_BUZZ, 800, 0),), loop=False),
    "fault": Pattern((Step(_BUZZ, 100, 100), Step(_BUZZ, 100, 100), Step(_BUZZ, 100, 0)),
                     loop=False),
    # two buzzes, then two tones: "you are still recording"
    "reminder": Pattern((Step(("haptic",), 200, 200), Step(("haptic",), 200, 300),
                         Step(("buzzer",), 80, 120), Step(("buzzer",), 80, 0)), loop=False),
    "marker": Pattern((Step(_BUZZ, 60, 0),), loop=False),
    "mute_on": Pattern((Step(("haptic",), 300, 0),), loop=False),
    "mute_off": Pattern((Step(("haptic",), 100, 100), Step(("haptic",), 100, 0)), loop=False),
    "battery_low": Pattern((Step(("red", "buzzer"), 100, 150), Step(("red", "buzzer"), 100, 150),
                            Step(("red", "buzzer"), 100, 0)), loop=False),
    "battery_critical": Pattern((Step(("red", "haptic", "buzzer"), 1000, 300),
                                 Step(("red", "haptic", "buzzer"), 1000, 0)), loop=False),
    "store_nearly_full": Pattern((Step(("red", "green", "haptic"), 200, 200),
                                  Step(("red", "green", "haptic"), 200, 0)), loop=False),
    "clock_not_set": Pattern((Step(("green", "buzzer"), 60, 140), Step(("green",), 60, 140),
                              Step(("green",), 60, 0)), loop=False),
    "gps_lost": Pattern((Step(("green",), 400, 100), Step(("haptic",), 300, 0)), loop=False),
}


class Feedback:
    """Plays modes and cues onto outputs through ``set_output``, on the caller's clock.

    The outputs are assumed off at construction (Controls creates them off), so only
    changes are ever written.
    """

    def __init__(self, set_output: Callable[[str, bool], None], *,
                 modes: Mapping[str, Pattern] = MODES,
                 cues: Mapping[str, Pattern] = CUES) -> None:
        self._set_output = set_output
        self._modes = dict(modes)
        self._cues = dict(cues)
        self._mode: str | None = None
        self._mode_ns = 0
        self._playing: list[tuple[Pattern, int]] = []
        self._levels: dict[str, bool] = {name: False for name in OUTPUTS}
        self._last_ns: int | None = None
        self.stealth = False

    @property
    def mode(self) -> str | None:
        return self._mode

    @property
    def levels(self) -> dict[str, bool]:
        """The level last written to each output."""
        return dict(self._levels)

    def set_mode(self, name: str | None, now_ns: int) -> None:
        """Switch to mode ``name`` (None = no mode, LEDs off) and apply it at once."""
        if name is not None and name not in self._modes:
            raise ValueError(f"unknown mode {name!r}; expected one of {sorted(self._modes)}")
        self._check_time(now_ns)
        if name != self._mode:
            self._mode = name
            self._mode_ns = now_ns
        self.poll(now_ns)

    def cue(self, name: str, now_ns: int) -> None:
        """Start one-shot cue ``name`` now (overlaid on the mode) and apply it at once."""
        if name not in self._cues:
            raise ValueError(f"unknown cue {name!r}; expected one of {sorted(self._cues)}")
        self._check_time(now_ns)
        self._playing.append((self._cues[name], now_ns))
        self.poll(now_ns)

    def poll(self, now_ns: int) -> None:
        """Compute every output's level at ``now_ns``; write only the ones that changed."""
        self._check_time(now_ns)
        self._playing = [(p, t0) for p, t0 in self._playing if not p.ended(now_ns - t0)]
        on: set[str] = set()
        if not self.stealth:
            if self._mode is not None:
                on |= self._modes[self._mode].on_at(now_ns - self._mode_ns)
            for pattern, t0 in self._playing:
                on |= pattern.on_at(now_ns - t0)
        for name in OUTPUTS:
            level = name in on
            if self._levels[name] != level:
                self._set_output(name, level)
                self._levels[name] = level

    def cue_playing(self, now_ns: int) -> bool:
        """Whether a one-shot cue is still playing at ``now_ns``."""
        return any(not p.ended(now_ns - t0) for p, t0 in self._playing)

    def next_change_ns(self, now_ns: int) -> int | None:
        """The next instant after ``now_ns`` at which some output may change, if any."""
        candidates: list[int] = []
        active = ([(self._modes[self._mode], self._mode_ns)] if self._mode else []) \
            + self._playing
        for pattern, t0 in active:
            period = pattern.length_ms * MS
            elapsed = now_ns - t0
            base = t0 + (elapsed // period) * period if pattern.loop else t0
            for cycle in (0, period) if pattern.loop else (0,):
                for off in pattern.boundaries_ms():
                    t = base + cycle + off * MS
                    if t > now_ns:
                        candidates.append(t)
        return min(candidates) if candidates else None

    def _check_time(self, now_ns: int) -> None:
        if self._last_ns is not None and now_ns < self._last_ns:
            raise ValueError(f"time went backwards: {now_ns} ns after {self._last_ns} ns")
        self._last_ns = now_ns


def _describe_pattern(kind: str, name: str, pattern: Pattern) -> dict:
    parts = []
    for step in pattern.steps:
        text = f"{'+'.join(step.outputs)} {step.on_ms} ms on"
        if step.off_ms:
            text += f", {step.off_ms} ms off"
        parts.append(text)
    if pattern.loop and len(pattern.steps) == 1 and pattern.steps[0].off_ms == 0:
        summary = f"{'+'.join(pattern.steps[0].outputs)} steady on"
    else:
        summary = "; then ".join(parts) + ("; repeating" if pattern.loop else "; once")
    return {
        "kind": kind,
        "name": name,
        "loop": pattern.loop,
        "length_ms": pattern.length_ms,
        "outputs": sorted({o for s in pattern.steps for o in s.outputs}),
        "steps": [{"outputs": list(s.outputs), "on_ms": s.on_ms, "off_ms": s.off_ms}
                  for s in pattern.steps],
        "summary": summary,
    }


def describe(modes: Mapping[str, Pattern] = MODES,
             cues: Mapping[str, Pattern] = CUES) -> list[dict]:
    """One row per mode and cue, for the README table (generated from the same data)."""
    return ([_describe_pattern("mode", n, p) for n, p in modes.items()]
            + [_describe_pattern("cue", n, p) for n, p in cues.items()])
