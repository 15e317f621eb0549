"""Which alarms are active, and when each one next shows its pattern.

An alarm is a condition (battery low, storage nearly full, clock not set, …) that the
officer must notice without looking at a screen: its cue plays when it becomes active
and then every ``repeat_ns`` while it stays active, staggered so two alarms never play
on top of each other. Raising and clearing are idempotent, so the agent can re-assert
conditions on every poll.
"""
from __future__ import annotations

#: Order = priority when two are due at once.
ALARMS = ("battery_critical", "fault", "store_full", "battery_low", "store_nearly_full",
          "clock_not_set", "gps_lost")
CUE_FOR = {"battery_critical": "battery_critical", "fault": "fault", "store_full": "fault",
           "battery_low": "battery_low", "store_nearly_full": "store_nearly_full",
           "clock_not_set": "clock_not_set", "gps_lost": "gps_lost"}
STAGGER_NS = 2_500_000_000  # longer than any cue


class Alarms:
    def __init__(self, repeat_ns: int) -> None:
        self.repeat_ns = repeat_ns
        self._next: dict[str, int] = {}

    @property
    def active(self) -> list[str]:
        return [a for a in ALARMS if a in self._next]

    def set(self, name: str, active: bool, now_ns: int) -> bool:
        """Returns True when the alarm changed state (so the caller audits it once)."""
        if name not in CUE_FOR:
            raise ValueError(f"unknown alarm {name!r}")
        if active and name not in self._next:
            self._next[name] = now_ns + STAGGER_NS * len(self._next)
            return True
        if not active and name in self._next:
            del self._next[name]
            return True
        return False

    def due(self, now_ns: int) -> list[str]:
        """Cues to play now; each due alarm is rescheduled one period later."""
        out = []
        for name in ALARMS:
            t = self._next.get(name)
            if t is not None and t <= now_ns:
                out.append(CUE_FOR[name])
                self._next[name] = max(t + self.repeat_ns, now_ns + 1)
        return out

    def next_deadline_ns(self) -> int | None:
        return min(self._next.values(), default=None)
