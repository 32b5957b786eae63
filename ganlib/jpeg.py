"""JPEG compression read from the pixels: the quality an image was last saved at.

A decoded JPEG's luma, cut into the encoder's 8x8 blocks, has DCT coefficients at integer multiples of
each frequency's quantisation step (Fan and de Queiroz 2003, "Identification of bitmap compression
history: JPEG detection and quantizer estimation"). The steps of the low frequencies are read off the
coefficients' periodicity and matched to the IJG (libjpeg) tables that Pillow, OpenCV and most software
scale with the quality setting, so photos from other encoders read as the IJG quality of similar steps.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.fft import dctn

# The IJG standard luminance quantisation table (ITU-T T.81, Annex K), scaled by the quality as libjpeg does.
_IJG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64)
# Low frequencies read (zigzag order after the DC term): every block's coefficient there is rarely zero.
LOW_FREQUENCIES = [(0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0), (4, 0)]
MIN_COEFFICIENTS = 50  # a frequency's step is read only from this many coefficients not rounded to zero
PERIODICITY = 0.6  # mean cos(2 pi c / step) over those coefficients to accept the step (rounding: ~0.9 at step 3)
MAX_BLOCKS = 20000  # about this many blocks read (evenly strided rows of blocks) on large images
MAX_MISFIT = 0.15  # mean |log| ratio of the read steps to the best table's beyond which no quality is given


def ijg_table(quality: int) -> np.ndarray:
    """The (8, 8) luminance quantisation table libjpeg (and Pillow) writes at `quality` (1-100).
    Raises ValueError outside 1-100."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be 1-100, got {quality}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)


def _step(coef: np.ndarray, max_step: int) -> int | None:
    """The largest quantisation step (2..max_step) the coefficients are multiples of, 1 when none is,
    None when too few coefficients are not rounded to zero to tell."""
    if int((np.abs(coef) >= 1).sum()) < MIN_COEFFICIENTS:
        return None
    for q in range(max_step, 1, -1):
        c = coef[np.abs(coef) >= q / 2]
        if c.size >= MIN_COEFFICIENTS and float(np.cos(2 * np.pi * c / q).mean()) >= PERIODICITY:
            return q
    return 1


def estimate_jpeg_quality(image: torch.Tensor) -> int | None:
    """The IJG quality (1-100) a (1,C,H,W) image in [0, 1] was last JPEG-compressed at, read from the
    quantisation steps of its luma's low-frequency 8x8 DCT coefficients on the block grid anchored at
    a corner (the top-left one, else the others: a photo turned upright by its EXIF orientation has its
    grid at another corner when its sides are not multiples of 8); None when it shows no JPEG
    quantisation: never compressed, compressed at about 90 or above (steps of 1-3 levels, which the
    decoder's rounding blurs), resized or cropped off the block grid since, or too small or flat to
    tell (fewer than MIN_COEFFICIENTS usable coefficients per frequency), or when the steps read fit no
    IJG table (a mean log ratio above MAX_MISFIT: compressed twice on different grids or tables).

    Blocks with a value at 0 or 1 (clipped by the decoder) are left out. On Pillow's JPEGs of noisy
    photos it reads the quality used within a few steps (the tables of neighbouring qualities share
    their low-frequency steps). Raises ValueError for a tensor that is not (1,C,H,W)."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a (1,C,H,W) image, got shape {tuple(image.shape)}")
    dy, dx = image.shape[-2] % 8, image.shape[-1] % 8
    for y, x in dict.fromkeys([(0, 0), (dy, dx), (dy, 0), (0, dx)]):  # the top-left grid first
        quality = _grid_quality(image[..., y:, x:])
        if quality is not None:
            return quality
    return None


def _grid_quality(image: torch.Tensor) -> int | None:
    """`estimate_jpeg_quality` on the block grid anchored at the top-left pixel."""
    rows, cols = image.shape[-2] // 8, image.shape[-1] // 8
    if rows == 0 or cols == 0:
        return None
    every = max(1, rows * cols // MAX_BLOCKS)  # rows of blocks read: bounded time and memory on huge photos
    bands = image[0, :, : rows * 8, : cols * 8].unflatten(1, (rows, 8))[:, ::every].flatten(1, 2)
    x = bands.detach().float().cpu().clamp(0, 1).numpy() * 255.0
    luma = x[0] if x.shape[0] < 3 else 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    clipped = (x <= 0).any(0) | (x >= 255).any(0)
    h = luma.shape[0]
    blocks = luma.reshape(h // 8, 8, cols, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    blocks = blocks[~clipped.reshape(h // 8, 8, cols, 8).any((1, 3)).reshape(-1)]
    if len(blocks) < MIN_COEFFICIENTS:
        return None
    coef = dctn(blocks - 128.0, axes=(1, 2), norm="ortho")
    steps = {f: _step(coef[:, f[0], f[1]], 64) for f in LOW_FREQUENCIES}
    read = {f: s for f, s in steps.items() if s is not None}
    if len(read) < 3 or all(s == 1 for s in read.values()):
        return None
    measured = np.log([read[f] for f in read])
    misfit = [np.abs(np.log([ijg_table(q)[f] for f in read]) - measured).sum() for q in range(1, 101)]
    quality = int(np.argmin(misfit)) + 1
    if misfit[quality - 1] > MAX_MISFIT * len(read) or ijg_table(quality)[tuple(zip(*read))].max() <= 1:
        return None
    return quality
