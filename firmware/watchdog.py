"""systemd's notify protocol and a progress-gated watchdog, without a library.

The protocol is one datagram per message to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket written with a leading
``@``): ``READY=1`` once start-up is done (``Type=notify``), ``STATUS=...`` free text
for ``systemctl status``, ``WATCHDOG=1`` at least every ``WatchdogSec`` (systemd puts
it in ``$WATCHDOG_USEC``; we ping at half of it), ``STOPPING=1`` on a clean stop.

``Watchdog.tick()`` pings only while every registered loop (capture, storage, gps by
default) has called ``progress(name)`` within its allowed staleness. A stuck loop stops
the pings, systemd kills the service after ``WatchdogSec`` and ``Restart=on-failure``
restarts it. Outside systemd (no ``$NOTIFY_SOCKET``) everything is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Iterable, Mapping

log = logging.getLogger("bwv.watchdog")

DEFAULT_LOOPS = ("capture", "storage", "gps")
DEFAULT_STALENESS_S = 10.0
DEFAULT_INTERVAL_S = 5.0  # when NOTIFY_SOCKET is set but WatchdogSec is not


def socket_address(value: str) -> str:
    """``$NOTIFY_SOCKET`` → the address for ``sendto`` ('@name' is an abstract socket)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def notify(message: str, notify_socket: str | None = None,
           env: Mapping[str, str] | None = None) -> bool:
    """Send one notify datagram. False when there is no socket or the send failed."""
    target = notify_socket if notify_socket is not None else (env or os.environ).get("NOTIFY_SOCKET")
    if not target:
        return False
    if not (target.startswith("/") or target.startswith("@")):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            # Never block the agent: a full queue (systemd not reading) is a failed send.
            s.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT, socket_address(target))
        return True
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", message.split("=", 1)[0], exc)
        return False


def interval_from_env(env: Mapping[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None when the watchdog is off (or meant
    for another process: ``$WATCHDOG_PID``)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


class Watchdog:
    def __init__(self, interval_s: float | None = None, loops: Iterable[str] = DEFAULT_LOOPS,
                 clock: Callable[[], float] = time.monotonic, *,
                 staleness_s: Mapping[str, float] | None = None,
                 default_staleness_s: float = DEFAULT_STALENESS_S,
                 notify_socket: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket = notify_socket if notify_socket is not None else env.get("NOTIFY_SOCKET") or None
        self.interval_s = interval_s if interval_s is not None else (
            interval_from_env(env) or DEFAULT_INTERVAL_S)
        self.clock = clock
        self.default_staleness_s = default_staleness_s
        self._staleness: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._last_ping: float | None = None
        self._reported_stuck: tuple[str, ...] = ()
        self.pings = 0
        for name in loops:
            self.register(name, (staleness_s or {}).get(name))

    @property
    def enabled(self) -> bool:
        return bool(self.socket)

    def register(self, loop: str, staleness_s: float | None = None) -> None:
        """Watch ``loop``; it counts as having progressed now."""
        self._staleness[loop] = staleness_s if staleness_s is not None else self.default_staleness_s
        self._last[loop] = self.clock()

    def unregister(self, loop: str) -> None:
        self._staleness.pop(loop, None)
        self._last.pop(loop, None)

    def progress(self, loop: str) -> None:
        """A loop did useful work. Unknown names are ignored (cheap to call from anywhere)."""
        if loop in self._last:
            self._last[loop] = self.clock()

    def stuck(self) -> list[str]:
        now = self.clock()
        return sorted(n for n, t in self._last.items() if now - t > self._staleness[n])

    def send(self, message: str) -> bool:
        return notify(message, self.socket or "") if self.enabled else False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def tick(self) -> bool:
        """Call often (e.g. every agent loop); pings at most every ``interval_s`` and only
        while no loop is stuck. Returns whether a WATCHDOG=1 was sent."""
        if not self.enabled:
            return False
        stuck = tuple(self.stuck())
        if stuck != self._reported_stuck:
            self._reported_stuck = stuck
            if stuck:
                log.error("watchdog withheld: loop(s) stuck: %s", ", ".join(stuck))
                self.status(f"stuck: {', '.join(stuck)}")
            else:
                self.status("running")
        if stuck:
            return False
        now = self.clock()
        if self._last_ping is not None and now - self._last_ping < self.interval_s:
            return False
        if self.send("WATCHDOG=1"):
            self._last_ping = now
            self.pings += 1
            return True
        return False
