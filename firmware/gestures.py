"""Gesture recognition for one button: debounce, single press, double press, hold.

This module owns *when* a button gesture happened. It knows nothing about GPIO (edges
come in as ``(pressed, mono_ns)`` from whoever watches the pin) and nothing about real
time: every instant is a monotonic timestamp handed in by the caller, taken from the
injected clock. No threads, no sleeps, so the simulator can run a 12 h shift in seconds
and tests can place every edge to the nanosecond.

Example::

    rec = GestureRecognizer(GestureConfig())
    rec.edge(True, t)                # clean press: accepted at once
    rec.edge(False, t + 80 * MS)
    rec.poll(t + 600 * MS)           # -> [Gesture.SINGLE_PRESS]

Rules (these are the README text; tests in tests/firmware/test_gestures.py hold them)
-----------------------------------------------------------------------------------
Times below: ``debounce`` = ``debounce_ms``, ``window`` = ``double_press_ms``,
``hold`` = ``hold_ms`` (defaults 30 ms, 600 ms, 3000 ms).

Debounce (software; gpiozero's mock pins ignore ``bounce_time``):

1. The recogniser keeps an *accepted* level (starts released) and the *raw* level (the
   last edge reported).
2. A raw edge is accepted at its own timestamp when it differs from the accepted level
   and at least ``debounce`` has passed since the previous accepted edge (or there was
   none). Leading-edge: a clean press reacts immediately, no settling delay.
3. Edges inside the ``debounce`` window after an accepted edge are chatter and are
   ignored.
4. Re-synchronisation: when the raw level differs from the accepted level and has been
   stable for ``debounce``, it is accepted at that instant (raw change + ``debounce``).
   So a release (or a press) lost in chatter is recovered, at most ``debounce`` late.

Gestures (on accepted edges only; each accepted press yields at most one gesture):

5. HOLD: a press that opens a sequence and is still down ``hold`` after it began emits
   HOLD exactly once, at that instant. Its release emits nothing. A held press is never
   also a SINGLE_PRESS or DOUBLE_PRESS. (A press released exactly at ``hold`` counts as
   held.)
6. DOUBLE_PRESS: a press that begins less than ``window`` after the *start* of the
   previous press (which was released in between and was not a HOLD) emits DOUBLE_PRESS
   immediately on that press edge; there is no waiting. That second press is consumed:
   it never becomes a HOLD however long it is held, and its release emits nothing.
   (Choice: the brief also asked for "second press held -> HOLD not DOUBLE"; that
   contradicts an immediate DOUBLE_PRESS, and button-to-recording latency wins. It also
   means double-press-and-keep-holding on the record button cannot start and then stop
   a recording.)
7. SINGLE_PRESS: a press that opened a sequence, was released before ``hold``, and was
   not followed by a second press within ``window`` of its start, emits SINGLE_PRESS at
   ``max(press start + window, release)``. That is from ``poll`` for a short tap, or
   from the release edge for a press longer than ``window``.
8. Any press after a DOUBLE_PRESS or a HOLD starts a fresh sequence (triple press =
   DOUBLE then whatever the third press becomes).
9. Timed events are processed in time order, before any edge at a later (or equal)
   instant, so the result does not depend on how often ``poll`` is called.
10. Timestamps must not go backwards (equal is fine): ``ValueError`` otherwise.

``next_deadline_ns()`` tells the caller when the next timed event could fire, so it can
poll then instead of on a fixed tick.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

MS = 1_000_000  # nanoseconds per millisecond


@dataclass(frozen=True)
class GestureConfig:
    """Gesture timing in milliseconds; ``debounce < double_press < hold``, all positive."""

    debounce_ms: int = 30
    double_press_ms: int = 600
    hold_ms: int = 3000

    def __post_init__(self) -> None:
        for name in ("debounce_ms", "double_press_ms", "hold_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number of milliseconds, got {value!r}")
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not self.debounce_ms < self.double_press_ms:
            raise ValueError(f"debounce_ms ({self.debounce_ms}) must be less than "
                             f"double_press_ms ({self.double_press_ms})")
        if not self.double_press_ms < self.hold_ms:
            raise ValueError(f"double_press_ms ({self.double_press_ms}) must be less than "
                             f"hold_ms ({self.hold_ms})")


class Gesture(enum.Enum):
    SINGLE_PRESS = "single_press"
    DOUBLE_PRESS = "double_press"
    HOLD = "hold"


# Role of the press currently down (or None when released).
_FIRST = "first"        # opened a sequence: may become SINGLE, the first half of DOUBLE, or HOLD
_CONSUMED = "consumed"  # second press of a DOUBLE: yields nothing more
_HELD = "held"          # HOLD already emitted


class GestureRecognizer:
    """Turns raw edges of one button into gestures; see the module docstring for rules.

    Not thread-safe: the caller (the agent) serialises ``edge`` and ``poll``.
    """

    def __init__(self, config: GestureConfig | None = None) -> None:
        self.config = config or GestureConfig()
        self._debounce = round(self.config.debounce_ms * MS)
        self._window = round(self.config.double_press_ms * MS)
        self._hold = round(self.config.hold_ms * MS)
        self._last_ns: int | None = None       # latest timestamp seen (edge or poll)
        self._raw = False
        self._raw_ns: int | None = None        # when the raw level last changed
        self._accepted = False
        self._accepted_ns: int | None = None   # when the accepted level last changed
        self._role: str | None = None          # role of the press that is down
        self._seq_ns: int | None = None        # start of the press that opened the sequence
        self._single_due: int | None = None    # when a pending SINGLE_PRESS is due

    # -- public ---------------------------------------------------------------------------

    @property
    def pressed(self) -> bool:
        """The debounced (accepted) level."""
        return self._accepted

    def edge(self, pressed: bool, mono_ns: int) -> list[Gesture]:
        """Report a raw edge (``pressed`` is the new level) seen at ``mono_ns``."""
        self._check_time(mono_ns)
        out = self._advance(mono_ns)
        pressed = bool(pressed)
        if pressed != self._raw:
            self._raw = pressed
            self._raw_ns = mono_ns
        if pressed != self._accepted and (
                self._accepted_ns is None or mono_ns - self._accepted_ns >= self._debounce):
            out += self._accept(pressed, mono_ns)
        return out

    def poll(self, mono_ns: int) -> list[Gesture]:
        """Emit every gesture due up to and including ``mono_ns``."""
        self._check_time(mono_ns)
        return self._advance(mono_ns)

    def next_deadline_ns(self) -> int | None:
        """The earliest instant at which ``poll`` could emit or change state, if any."""
        due = self._deadlines()
        return min(t for t, _ in due) if due else None

    # -- internals ------------------------------------------------------------------------

    def _check_time(self, mono_ns: int) -> None:
        if self._last_ns is not None and mono_ns < self._last_ns:
            raise ValueError(f"time went backwards: {mono_ns} ns after {self._last_ns} ns")
        self._last_ns = mono_ns

    def _deadlines(self) -> list[tuple[int, int]]:
        """(instant, order) of pending timed events; order breaks ties: timers first."""
        due: list[tuple[int, int]] = []
        if self._accepted and self._role == _FIRST:
            due.append((self._accepted_ns + self._hold, 0))
        if self._single_due is not None:
            due.append((self._single_due, 1))
        if self._raw != self._accepted and self._raw_ns is not None:
            due.append((self._raw_ns + self._debounce, 2))
        return due

    def _advance(self, now: int) -> list[Gesture]:
        out: list[Gesture] = []
        while True:
            due = [d for d in self._deadlines() if d[0] <= now]
            if not due:
                return out
            when, kind = min(due)
            if kind == 0:
                self._role = _HELD
                self._seq_ns = None
                out.append(Gesture.HOLD)
            elif kind == 1:
                self._single_due = None
                self._seq_ns = None
                out.append(Gesture.SINGLE_PRESS)
            else:
                out += self._accept(self._raw, when)

    def _accept(self, pressed: bool, when: int) -> list[Gesture]:
        self._accepted = pressed
        self._accepted_ns = when
        out: list[Gesture] = []
        if pressed:
            if self._single_due is not None and when - self._seq_ns < self._window:
                self._single_due = None
                self._seq_ns = None
                self._role = _CONSUMED
                out.append(Gesture.DOUBLE_PRESS)
            else:
                if self._single_due is not None:  # defensive: due events run first
                    self._single_due = None
                    out.append(Gesture.SINGLE_PRESS)
                self._seq_ns = when
                self._role = _FIRST
        else:
            if self._role == _FIRST:
                due = max(self._seq_ns + self._window, when)
                if due <= when:
                    self._seq_ns = None
                    out.append(Gesture.SINGLE_PRESS)
                else:
                    self._single_due = due
            else:
                self._seq_ns = None
            self._role = None
        return out
