"""Burn-in overlay: right text, right place, nothing else touched, rendered once a second."""
from __future__ import annotations

import numpy as np
import pytest

from capture.overlay import BAND_LUMA, TEXT_LUMA, BurnIn
from hw_sim.clock import DEFAULT_EPOCH_UTC_NS

T0 = DEFAULT_EPOCH_UTC_NS  # 2026-12-01T00:00:00Z
SEC = 10**9


def noise(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def test_text_format() -> None:
    burn = BurnIn("BWV-SIM-0001", "4711", 1280, 720)
    assert burn.text(T0 + 5 * SEC + 999_999_999) == "2026-12-01T00:00:05Z  BWV-SIM-0001  OFC 4711"


@pytest.mark.parametrize("w, h", [(1920, 1080), (1280, 720), (640, 360), (320, 240)])
def test_pixels_change_in_band_only(w: int, h: int) -> None:
    burn = BurnIn("BWV-SIM-0001", "4711", w, h)
    before = noise(h, w)
    frame = before.copy()
    burn(frame, T0 + 5 * SEC)
    changed = frame != before
    rows, cols = burn.region
    # the band sits on the bottom edge, left-aligned, inside the picture
    assert rows.stop == h and cols.start == 0 and cols.stop <= w
    outside = changed.copy()
    outside[rows, cols] = False
    assert not outside.any(), "overlay wrote outside its band"
    band = frame[rows, cols]
    assert changed[rows, cols].mean() > 0.9  # the band replaced the picture there
    # dark band with white text: both levels present, text a visible share of the band
    text_px = (band > 200).mean()
    assert (band == BAND_LUMA).mean() > 0.5
    assert 0.03 < text_px < 0.5
    assert (band == TEXT_LUMA).any()
    # small: the overlay touches a few percent of the picture
    assert band.size / (w * h) < 0.08


@pytest.mark.parametrize("w, h", [(1920, 1080), (1280, 720), (320, 240)])
@pytest.mark.parametrize("second", [0, 5, 3600 * 11 + 60 * 8 + 8, 86400 * 40 - 1])
def test_text_is_never_clipped(w: int, h: int, second: int) -> None:
    """The band is sized for the widest digits, so no timestamp runs off its edges."""
    burn = BurnIn("BWV-SIM-0001", "OFC-4711", w, h)
    band = burn.render(T0 + second * SEC)
    assert (band[:, -1] == BAND_LUMA).all() and (band[:, 0] == BAND_LUMA).all()
    assert (band[0, :] == BAND_LUMA).all() and (band[-1, :] == BAND_LUMA).all()


def test_content_depends_on_time_serial_and_officer() -> None:
    a = BurnIn("BWV-SIM-0001", "4711", 640, 360)
    b = BurnIn("BWV-SIM-0002", "4711", 640, 360)
    c = BurnIn("BWV-SIM-0001", "4712", 640, 360)
    band = a.render(T0 + 5 * SEC)
    assert not np.array_equal(band, a.render(T0 + 6 * SEC))
    assert not np.array_equal(band, b.render(T0 + 5 * SEC))
    assert not np.array_equal(band, c.render(T0 + 5 * SEC))
    # sub-second changes do not change the text
    assert np.array_equal(band, a.render(T0 + 5 * SEC + 999_000_000))


def test_band_rendered_once_per_second_then_copied() -> None:
    burn = BurnIn("BWV-SIM-0001", "4711", 640, 360)
    rows, cols = burn.region
    frame = np.zeros((360, 640), dtype=np.uint8)
    fps = 30
    last_band = None
    for i in range(3 * fps):  # three seconds of frames
        utc = T0 + 5 * SEC + i * SEC // fps
        burn(frame, utc)
        assert np.array_equal(frame[rows, cols], burn.render(utc))
        if i % fps == 0 and last_band is not None:
            assert not np.array_equal(frame[rows, cols], last_band)  # new second, new band
        last_band = frame[rows, cols].copy()
    assert burn.renders == 3
    assert burn.hits == 3 * fps - 3


def test_cache_follows_clock_steps_backwards() -> None:
    """A clock correction can move UTC back; the band must show the corrected time."""
    burn = BurnIn("S", "1", 320, 240)
    frame = np.zeros((240, 320), dtype=np.uint8)
    burn(frame, T0 + 10 * SEC)
    burn(frame, T0 + 9 * SEC)
    assert np.array_equal(frame[burn.region], burn.render(T0 + 9 * SEC))
    assert burn.renders == 2


def test_wrong_plane_size_rejected() -> None:
    burn = BurnIn("S", "1", 640, 360)
    with pytest.raises(ValueError, match="640x360"):
        burn(np.zeros((240, 320), dtype=np.uint8), T0)
    with pytest.raises(ValueError):
        BurnIn("S", "1", 0, 360)
