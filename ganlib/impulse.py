"""Impulse (salt & pepper) noise: detection and a switching median filter.

Impulses replace a pixel's value by the extremes, 0 or 1, in one channel or in all of them. A network
conditioned on a smooth noise-level map handles them badly (the noise is sparse and huge), so they are
removed first by a switching (decision-based) median: only pixels detected as impulses change, each
replaced by the median of the undamaged pixels in the smallest window (3x3 up to 11x11) that holds
any; every other pixel is kept exactly, so texture is kept. This follows the decision-based median
filters of Srinivasan & Ebenezer (2007, IEEE SPL 14(3)) and Esakkirajan et al. (2011, IEEE SPL 18(5)).

A pixel (per channel) is taken for an impulse when it sits at 0 or 1 and few of the other 24 pixels
of its 5x5 window share that value: fewer than impulses scattered at random would give, at the
image's own density of isolated extremes f (mean 24 f plus five standard deviations plus three, at
most 70%). Scattered extremes are impulses, even when they hit half the pixels; saturated areas (a
white sky, a black background, deep shadows) are not. Two-level images (line art, text, dithered
scans: nearly every value at 0 or 1) are not treated at all (`may_have_impulses`).

Images: float32 (1,C,H,W) in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

EXTREME = 0.5 / 255  # values within half an 8-bit level of 0 or 1 count as extremes
MAX_WINDOW = 11
MIN_FRACTION = 0.002  # below this share of isolated extremes a photo is not treated for impulses
BILEVEL_SHARE = 0.99  # from this share of values at 0 or 1 up, an image is two-level (black and white), not noisy
_CHUNK = 1 << 16  # damaged pixels per batch of window medians (bounded memory on huge photos)


def impulse_mask(image: torch.Tensor) -> torch.Tensor:
    """Boolean (1,C,H,W) mask of the pixels detected as impulses (see the module docstring).

    Works one channel at a time on 8-bit masks with OpenCV box filters: a 24-megapixel photo costs
    a few hundred megabytes, not gigabytes."""
    import cv2

    _check(image)
    x = image[0].detach().float().cpu()
    out = torch.zeros(x.shape, dtype=torch.bool)
    for extreme_of in (lambda c: c <= EXTREME, lambda c: c >= 1 - EXTREME):
        extremes = [extreme_of(c).numpy().astype(np.uint8) for c in x]
        counts3 = [cv2.boxFilter(e, cv2.CV_16U, (3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE) - e for e in extremes]
        isolated = sum(int(((c < 4) & (e > 0)).sum()) for c, e in zip(counts3, extremes))
        del counts3
        f = isolated / x.numel()  # density of isolated extremes of this polarity
        threshold = min(24 * f + 5 * (24 * f * (1 - f)) ** 0.5 + 3, 0.7 * 24)
        for ch, e in enumerate(extremes):
            same5 = cv2.boxFilter(e, cv2.CV_16U, (5, 5), normalize=False, borderType=cv2.BORDER_REPLICATE) - e
            out[ch] |= torch.from_numpy((e > 0) & (same5 < threshold))
    return out[None]


def spread_tiles(h: int, w: int, tile: int, max_tiles: int) -> list[tuple[int, int]]:
    """Top-left corners of at most `max_tiles` tiles of `tile` pixels spread evenly over an h x w image
    (all of them when they fit; the middle one when max_tiles is 1)."""
    boxes = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    if len(boxes) <= max_tiles:
        return boxes
    if max_tiles == 1:
        return boxes[len(boxes) // 2 : len(boxes) // 2 + 1]
    return [boxes[round(i * (len(boxes) - 1) / (max_tiles - 1))] for i in range(max_tiles)]


def may_have_impulses(image: torch.Tensor, *, min_fraction: float = MIN_FRACTION, rows: int = 1024) -> bool:
    """Whether impulse noise could be found: at least `min_fraction` of the values sit at 0 or 1
    (impulses are such values, so below that no impulse check can reach the threshold), but fewer than
    BILEVEL_SHARE of them. In a two-level (black and white) image, line art, text or a dithered scan,
    every value is 0 or 1: impulses cannot be told from the drawing, and the switching median would
    erase it (a dithered text scan came back with 54% of its pixels changed). One pass in blocks of
    `rows` rows (no image-sized copy)."""
    extremes = 0
    for y in range(0, image.shape[-2], rows):
        block = image[..., y : y + rows, :]
        extremes += int(((block <= EXTREME) | (block >= 1 - EXTREME)).sum())
    return min_fraction * image.numel() <= extremes < BILEVEL_SHARE * image.numel()


REFINE_SIGMA = 5.0  # per-channel impulses (6 for session 16's and 17's fidelity weights, 8 for session 15's, 12 for session 14's)
REFINE_SIGMA_WHOLE = 5.0  # whole-pixel impulses (all channels replaced together): 6, 8, 12, and 20 for earlier weights


def refine_sigma(whole_share: float = 0.0) -> float:
    """Strength (0-255) at which the network refines the pixels the switching median replaced:
    REFINE_SIGMA for per-channel impulses, REFINE_SIGMA_WHOLE for whole-pixel ones (the replaced pixel
    has no channel of its own left to go by), linear in between. whole_share: share of the damaged
    pixels with every channel damaged (`whole_pixel_share`). Chosen on 6 Sun80 training photos
    (512x512), amounts 0.01-0.5: against the former 40 x amount (at most 10) it gained 2-5 dB at amounts
    0.01-0.05 and 0.3-1 dB at 0.2-0.5. Earlier fidelity weights wanted 20 for whole-pixel impulses,
    session 14's 12 for both; session 15's did best at 8 for both (against 12, per channel +0.27 to
    +0.47 dB, whole-pixel +0.08 to +0.11, gray photos through the gray generator +0.16 to +0.25). The
    current ones (session 16, grown) do best at 6 per channel (against 8: +0.10 / +0.11 / +0.08 dB at
    amounts 0.01 / 0.05 / 0.2, -0.03 at 0.5; 5 and 7 lower on average) and still at 8 for whole pixels
    (6 and 10 lower). Session 17's (grown again) do best at 6 for both: per channel 5, 7 and 8 lower
    on average; whole-pixel against 8 +0.25 / +0.18 / +0.13 / +0.06 dB at amounts 0.01 / 0.05 / 0.2 /
    0.5 (4, 5, 7 and 10 lower), and gray photos (their generator, whose output is unchanged since
    session 15, takes the whole-pixel strength) +0.31 / +0.33 / +0.31 / +0.24. Session 18's (grown to
    [4, 2, 8]) do best at 5 for both: against 6, per channel +0.20 / +0.15 / +0.02 / -0.12 dB at amounts
    0.01 / 0.05 / 0.2 / 0.5, whole-pixel +0.11 / +0.05 / +0.01 / -0.02, gray +0.06 / +0.08 / +0.09 /
    +0.05 (4 and 7 lower on average). Kept at 5 for session 21's (grown to [4, 4, 8]), not re-picked.
    Raises ValueError when whole_share is outside [0, 1]."""
    if not 0.0 <= whole_share <= 1.0:
        raise ValueError(f"whole_share must be in [0, 1], got {whole_share!r}")
    return REFINE_SIGMA + (REFINE_SIGMA_WHOLE - REFINE_SIGMA) * whole_share


def whole_pixel_share(mask: torch.Tensor) -> float:
    """Share of the damaged pixels of a (1,C,H,W) impulse mask whose every channel is damaged (0 when
    none is damaged; 1 for a 1-channel image)."""
    damaged = mask.any(1)
    n = int(damaged.sum())
    return float(mask.all(1).sum()) / n if n else 0.0


def impulse_fraction(image: torch.Tensor, *, tile: int = 512, max_tiles: int = 8) -> float:
    """Share of pixel values (over all channels) detected as impulses, over at most `max_tiles` evenly
    spread tiles of `tile` pixels (a cheap first look before the whole mask of a large photo)."""
    _check(image)
    hits = total = 0
    for y, x in spread_tiles(*image.shape[-2:], tile, max_tiles):
        m = impulse_mask(image[..., y : y + tile, x : x + tile])
        hits, total = hits + int(m.sum()), total + m.numel()
    return hits / max(1, total)


def remove_impulses(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switching median: a copy of `image` with each detected impulse replaced by the median of the
    undamaged pixels of the same channel in the smallest window (3x3, 5x5, ... 11x11) holding any;
    impulses with no undamaged pixel within 11x11 take the median of all that window's values.

    image: float32 (1,C,H,W) in [0, 1]; mask: its impulses (default `impulse_mask(image)`).
    Returns a new (1,C,H,W) tensor; pixels outside the mask are unchanged.
    """
    _check(image)
    if mask is None:
        mask = impulse_mask(image)
    out = image.float().clone()
    r = MAX_WINDOW // 2
    for c in range(image.shape[1]):
        chan = out[0, c].numpy()
        bad = mask[0, c].numpy()
        ys, xs = np.nonzero(bad)
        if ys.size == 0:
            continue
        vals = np.pad(np.where(bad, np.nan, chan), r, mode="constant", constant_values=np.nan)
        raw = np.pad(chan, r, mode="reflect") if min(chan.shape) > r else np.pad(chan, r, mode="edge")
        for start in range(0, ys.size, _CHUNK):
            cy, cx = ys[start : start + _CHUNK] + r, xs[start : start + _CHUNK] + r
            result = np.full(cy.size, np.nan, dtype=np.float32)
            todo = np.arange(cy.size)
            for half in range(1, r + 1):
                dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
                win = vals[cy[todo, None] + dy.ravel()[None], cx[todo, None] + dx.ravel()[None]]
                ok = ~np.all(np.isnan(win), axis=1)
                if ok.any():
                    result[todo[ok]] = np.nanmedian(win[ok], axis=1)
                todo = todo[~ok]
                if todo.size == 0:
                    break
            if todo.size:
                dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
                result[todo] = np.median(raw[cy[todo, None] + dy.ravel()[None], cx[todo, None] + dx.ravel()[None]], axis=1)
            chan[ys[start : start + _CHUNK], xs[start : start + _CHUNK]] = result
    return out


def _check(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one float image of shape (1,C,H,W), got {shape}")
