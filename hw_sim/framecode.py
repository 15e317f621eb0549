"""A machine-readable frame counter burnt into simulated pictures.

Why: the capture tests must prove that no frame was dropped, repeated or reordered
after H.264 compression, segmenting and remuxing. Counting packets cannot prove that
(a duplicated packet still counts); reading the number out of each *decoded* picture
can.

Layout: 32 bits as a grid of 4 rows x 8 columns of 16x16 blocks, top-left corner at
(16, 16), so every block is exactly one H.264 macroblock (blocks never straddle a
macroblock edge and survive heavy quantisation). Row-major, most significant bit first:
24 bits of the frame number, then an 8-bit check (CRC-8, poly 0x07, init 0xFF, final
xor 0x55). The non-zero init and xor make an all-black or all-white area fail the
check, so a picture without a code reads as ``None`` rather than as frame 0.
Bit 1 is drawn white (luma 235), bit 0 black (luma 16), the limited-range extremes.
The grid covers 128x64 pixels plus a 16-pixel margin, which fits a 320x240 picture.
"""
from __future__ import annotations

import numpy as np

BLOCK = 16
ORIGIN = (16, 16)  # (x, y) of the top-left block; multiples of 16 = macroblock aligned
COLS, ROWS = 8, 4
DATA_BITS = 24
WHITE, BLACK = 235, 16
#: A decoded block whose inner mean is between these is neither black nor white.
_LOW, _HIGH = 80, 176
MAX_N = (1 << DATA_BITS) - 1


def _crc8(value: int) -> int:
    crc = 0xFF
    for byte in value.to_bytes(3, "big"):
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc ^ 0x55


def _bits(n: int) -> list[int]:
    word = (n << 8) | _crc8(n)
    return [(word >> (31 - i)) & 1 for i in range(32)]


def _check_size(y_plane: np.ndarray) -> None:
    x0, y0 = ORIGIN
    h, w = y_plane.shape[:2]
    if w < x0 + COLS * BLOCK or h < y0 + ROWS * BLOCK:
        raise ValueError(f"picture {w}x{h} too small for the frame code "
                         f"({x0 + COLS * BLOCK}x{y0 + ROWS * BLOCK} needed)")


def draw(y_plane: np.ndarray, n: int) -> None:
    """Draw frame number ``n`` (0..2**24-1) into the luma plane in place."""
    if not 0 <= n <= MAX_N:
        raise ValueError(f"frame code {n} outside 0..{MAX_N}")
    _check_size(y_plane)
    x0, y0 = ORIGIN
    for i, bit in enumerate(_bits(n)):
        r, c = divmod(i, COLS)
        y, x = y0 + r * BLOCK, x0 + c * BLOCK
        y_plane[y:y + BLOCK, x:x + BLOCK] = WHITE if bit else BLACK


def read(y_plane: np.ndarray) -> int | None:
    """Read the frame number back from a (decoded) luma plane; None if the check fails.

    Only the inner 8x8 pixels of each block are averaged, so ringing at block edges after
    compression does not matter.
    """
    _check_size(y_plane)
    x0, y0 = ORIGIN
    q = BLOCK // 4
    grid = y_plane[y0:y0 + ROWS * BLOCK, x0:x0 + COLS * BLOCK].astype(np.float32)
    means = grid.reshape(ROWS, BLOCK, COLS, BLOCK)[:, q:BLOCK - q, :, q:BLOCK - q].mean(axis=(1, 3))
    flat = means.reshape(-1)
    if np.any((flat > _LOW) & (flat < _HIGH)):
        return None
    word = 0
    for m in flat:
        word = (word << 1) | int(m >= _HIGH)
    n, check = word >> 8, word & 0xFF
    return n if _crc8(n) == check else None
