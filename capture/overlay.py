"""Burn-in overlay: UTC time, device serial and officer id on every frame.

Body-worn cameras burn this line into the picture so that a still taken from any frame
(a screenshot in a report, a clip on a screen in court) still says when and by whom it
was recorded, whatever happens to the container metadata. Example::

    2026-12-01T00:00:05Z  BWV-SIM-0001  OFC 4711

Cost matters: on a Pi Zero 2 W the overlay runs in the camera's pre-callback for every
frame. So the text band is rendered with OpenCV only when the shown second changes, and
each frame pays one small slice copy into the bottom-left corner of the luma plane.
Only the luma plane is touched (white text on a dark band reads fine without chroma),
and only the band's pixels: the rest of the picture is left bit-identical.

Usage::

    burn = BurnIn("BWV-SIM-0001", "4711", width=1280, height=720)
    camera.set_overlay(burn)   # called as burn(y_plane, utc_ns) per frame
"""
from __future__ import annotations

import re

import cv2
import numpy as np

from drivers.clock import iso_utc

_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Limited-range ("video") luma extremes: what an encoder expects for black and white.
TEXT_LUMA = 235
BAND_LUMA = 16


class BurnIn:
    """Draws ``<UTC>  <serial>  OFC <officer>`` at the bottom of each frame, in place.

    The band is cached for the current whole second: ``renders`` counts OpenCV renders,
    ``hits`` counts frames served from the cache (one slice copy each). The cache holds
    one band, so memory stays flat over a 12 h shift.
    """

    def __init__(self, device_serial: str, officer_id: str, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"bad picture size {width}x{height}")
        self.device_serial = device_serial
        self.officer_id = officer_id
        self.width = width
        self.height = height
        # Font scale follows picture height (1.0 at 720p); thickness grows with it so
        # strokes survive chroma subsampling and quantisation.
        self.font_scale = height / 720.0
        self.thickness = max(1, round(2 * self.font_scale))
        # Size the band once, for the widest text of this format: every timestamp has
        # the same characters except its digits, so use the widest digit everywhere.
        # Shrink the font if the line would not fit the picture width.
        widest = max("0123456789", key=lambda d: cv2.getTextSize(d, _FONT, 1.0, 1)[0][0])
        sample = re.sub(r"[0-9]", widest, self.text(0)[:20]) + self.text(0)[20:]
        (tw, th), base = cv2.getTextSize(sample, _FONT, self.font_scale, self.thickness)
        pad = max(2, round(6 * self.font_scale))
        if tw + 2 * pad > width:
            shrink = (width - 2 * pad) / tw
            self.font_scale *= shrink
            self.thickness = max(1, round(self.thickness * shrink))
            (tw, th), base = cv2.getTextSize(sample, _FONT, self.font_scale, self.thickness)
        self._pad = pad
        self._baseline_y = pad + th  # text origin inside the band (OpenCV: bottom-left)
        band_h = th + base + 2 * pad
        band_h += band_h % 2  # even, so the band covers whole 4:2:0 chroma rows
        self.band_height = min(height, band_h)
        self.band_width = min(width, tw + 2 * pad)
        self._key: int | None = None
        self._band: np.ndarray | None = None
        self.renders = 0
        self.hits = 0

    def text(self, utc_ns: int) -> str:
        """The overlay line for a capture instant (whole seconds, UTC, ``Z``)."""
        return f"{iso_utc(utc_ns, digits=0)}  {self.device_serial}  OFC {self.officer_id}"

    def render(self, utc_ns: int) -> np.ndarray:
        """Render the band for ``utc_ns`` (uncached); exposed for tests and previews."""
        band = np.full((self.band_height, self.band_width), BAND_LUMA, dtype=np.uint8)
        cv2.putText(band, self.text(utc_ns), (self._pad, self._baseline_y), _FONT,
                    self.font_scale, TEXT_LUMA, self.thickness, cv2.LINE_AA)
        return band

    @property
    def region(self) -> tuple[slice, slice]:
        """(rows, cols) of the luma plane that the overlay writes; nothing else changes."""
        return (slice(self.height - self.band_height, self.height), slice(0, self.band_width))

    def __call__(self, y_plane: np.ndarray, utc_ns: int) -> None:
        """OverlayFn: draw on the H×W uint8 luma plane in place."""
        if y_plane.shape[:2] != (self.height, self.width):
            raise ValueError(f"overlay built for {self.width}x{self.height}, "
                             f"got a {y_plane.shape[1]}x{y_plane.shape[0]} plane")
        # The text is a pure function of the whole second, so the second is the cache
        # key: no string formatting or font work on the per-frame path.
        second = utc_ns // 10**9
        if second != self._key or self._band is None:
            self._band = self.render(utc_ns)
            self._key = second
            self.renders += 1
        else:
            self.hits += 1
        y_plane[self.region] = self._band
