"""Canary targets: they prove the runner sees a defect and a hang (tests/fuzz only).

``crash`` raises IndexError on the first input libFuzzer tries (the empty one);
``hang`` never returns from it. Neither runs unless named explicitly.
"""
from __future__ import annotations

import time


def check_crash(data: bytes) -> None:
    if len(data) < 2:
        data[5]  # IndexError: the canary's defect


def check_hang(data: bytes) -> None:
    if not data:
        while True:
            time.sleep(0.05)


class _Target:
    def __init__(self, fn) -> None:
        self.check = fn


crash = _Target(check_crash)
hang = _Target(check_hang)
