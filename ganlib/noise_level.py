"""Blind noise-level estimation: how strong the noise of a photo is, and where.

`estimate_noise_map(image, estimator)` gives the (1,1,H,W) noise-level map (0-255 scale) that
conditions the generator when the noise level is not known: the estimator network's 4x4-block readings
and a wavelet reading per brightness bin make a noise-level function (the noise's standard deviation
against brightness: flat for Gaussian noise, rising for Poisson and speckle, falling in sRGB for camera
noise), read at each pixel's brightness; for a colour JPEG, raised to the noise before compression
(`_jpeg_lift`). `refine_noise_map` gives the map for a second pass over camera noise from the first
result's residual. `estimate_sigma` is the one-number summary. Images are
(1,C,H,W) float tensors in [0, 1].
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from .impulse import EXTREME, spread_tiles
from .jpeg import LOW_FREQUENCIES, estimate_jpeg_quality, ijg_table
from .models import NoiseEstimator
from .noise import srgb_slope, srgb_to_linear
from .views import FOUR_VIEWS, view_mean

log = logging.getLogger(__name__)


def estimate_sigma(image: torch.Tensor, estimator: NoiseEstimator | None = None, *, tile: int = 512, max_tiles: int = 8,
                   alpha: torch.Tensor | None = None) -> float:
    """Estimate the noise level (0-255 scale) of a (1,C,H,W) image.

    With a trained `estimator` (`Weights.estimator`): the summary of `estimate_noise_map` (the mean
    of the estimator's 4x4-block estimates over the blocks that carry information: transparent,
    exactly flat and saturated blocks are left out), over at most `max_tiles` evenly spread tiles of
    `tile` pixels (bounded time and memory on huge photos). alpha: optional (1,1,H,W) opacity in
    [0, 1]. Without an estimator: the wavelet MAD estimate of scikit-image, which assumes white
    Gaussian noise and so reads much too low on JPEG photos and too high on fine texture.
    """
    if estimator is not None:
        return estimate_noise_map(image, estimator, tile=tile, max_tiles=max_tiles, alpha=alpha)[1]
    from skimage.restoration import estimate_sigma as _estimate

    arr = image[0].detach().float().cpu().permute(1, 2, 0).numpy()
    channel_axis = -1 if arr.shape[2] > 1 else None
    if channel_axis is None:
        arr = arr[..., 0]
    if min(arr.shape[:2]) < 2:
        return 0.0  # nothing to estimate from (a 1-pixel line)
    with np.errstate(all="ignore"):
        sigma = float(_estimate(arr, channel_axis=channel_axis, average_sigmas=True))
    return max(sigma, 0.0) * 255.0 if np.isfinite(sigma) else 0.0  # flat images give NaN: no noise


def _gray_as_rgb(x: torch.Tensor) -> bool:
    """Whether a (N,C,H,W) image is a gray one stored as RGB: 3 channels, R = G = B exactly."""
    return x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


NLF_BINS = 16  # intensity bins of the noise-level function
# The estimator reads channel-identical (gray) noise 12-15% high (Gaussian 15/25/50 on 12 CBSD432 and
# 10 Sun80 training photos made gray); scaled by 0.9 the automatic strength gains 0.01-0.48 dB there.
# Signal-dependent curves (Poisson, speckle: `_wavelet_curve` used alone) are not scaled: with session
# 22's gray generator, on the 32 held-back photos made gray, Poisson 10 / speckle 0.3 read 24.63 / 25.83
# dB scaled by 0.9, 24.84 / 26.09 with no scale at all and 24.74 / 26.09 with this rule, while Gaussian
# 15 / 25 / 50 want 0.9 (no scale: -0.17 / -0.02 / -0.13).
GRAY_LEVEL_SCALE = 0.9
NLF_MIN_BLOCKS = 32  # blocks a bin needs to stand on its own; sparser bins lean on the overall level
# Blocks this many 4x4 blocks or fewer from an empty one (exactly flat or transparent) are left out of the
# estimate when NLF_MIN_BLOCKS others remain: the estimator's view reaches beyond its block, so a noise-free
# border or a transparent surround pulls the blocks beside it. 32 held-back training crops, Gaussian 25 / 50,
# on a 120-pixel white border or cut out (transparent black, white or random colours around): mean reading
# 23.6-28.7 / 44.5-52.4 without the margin, 25.8-26.0 / 49.8-50.6 with it (the crops alone: 25.9 / 50.3)
EMPTY_MARGIN = 4


def _nlf_bins(bright: torch.Tensor) -> torch.Tensor:
    """The NLF_BINS brightness bin (0 .. NLF_BINS - 1) of each block brightness in [0, 1]."""
    return (bright * NLF_BINS).long().clamp(max=NLF_BINS - 1)


def _nlf_curve(bright: torch.Tensor, level: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise level (0-1 scale) in each of NLF_BINS brightness bins: the mean block estimate of the bin,
    pulled towards the overall level `sigma` in proportion to how few blocks the bin has."""
    bins = _nlf_bins(bright)
    count = torch.bincount(bins, minlength=NLF_BINS).double()
    total = torch.bincount(bins, weights=level.double(), minlength=NLF_BINS)
    trust = count / (count + NLF_MIN_BLOCKS)
    return (trust * total / count.clamp_min(1) + (1 - trust) * sigma).float()


# Blocks with this share of their values at 0 or 1 are saturated: left out of the estimate, whose clipped
# noise reads low. It was half until session 26: a photo on a white border with Gaussian 25 added after
# framing (the border's noise clipped) read 22.0 instead of 25.8 (16 held-back crops), 25.6 with a quarter;
# 32 held-back crops with clipped Gaussian 15 / 50, Poisson 10, speckle 0.3 and camera noise with and
# without JPEG: -0.0001 to +0.010 dB at the automatic strength (at most -0.03 on a photo)
SATURATED_SHARE = 0.25
CLIPPED_SHARE = 1 / 16  # blocks with more of their values at 0 or 1 than this are left out of the wavelet curve
_TRIM = 0.8  # the wavelet noise level is the mean |coefficient| below this quantile ...
_TRIMMED_MEAN = 0.5586  # ... which is this many standard deviations for Gaussian noise: texture and edges trimmed


def _robust_level(coef: torch.Tensor) -> torch.Tensor:
    """Standard deviation of white noise from wavelet detail coefficients with some texture among them:
    the mean absolute value below the 80% quantile, scaled for a Gaussian (continuous where the median
    of quantised noise, as Poisson noise at a low peak is, jumps between levels)."""
    a = coef.abs().flatten()
    if a.numel() == 0:
        return a.new_zeros(())
    if a.numel() < 8:
        return a.mean() / math.sqrt(2 / math.pi)  # too few to trim: the mean |x| of a Gaussian
    return a[a <= a.quantile(_TRIM)].mean() / _TRIMMED_MEAN


def _haar_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The finest diagonal Haar coefficients of a (N,C,H,W) image: the same standard deviation as white noise in it."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2


# The camera model of _poisson_gaussian_fit raises the curve only where its residual is below this share
# of the plain model's: chosen on 15 held-back training crops (see _poisson_gaussian_fit).
NLF_CAMERA_MARGIN = 0.5


def _weighted_fit(columns: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least squares v ~ columns @ coef with coef >= 0, weighted by w: the full fit, else the best
    fit on a subset of the columns (exact non-negative least squares: the optimum is the plain fit on
    its own support); (coef, weighted squared residual)."""
    sw = w.sqrt()
    n = columns.shape[1]
    best = (columns.new_zeros(n), float((w * v * v).sum()))
    for k in range(n, 0, -1):
        for subset in itertools.combinations(range(n), k):
            sol = torch.linalg.lstsq(columns[:, subset] * sw[:, None], (v * sw)[:, None]).solution[:, 0]
            if (sol < 0).any():
                continue
            coef = columns.new_zeros(n)
            coef[list(subset)] = sol
            res = float((w * (columns @ coef - v) ** 2).sum())
            if k == n:
                return coef, res
            if res < best[1]:
                best = (coef, res)
    return best


def _bin_centres() -> torch.Tensor:
    """The NLF_BINS brightness bins' centres in [0, 1], float64."""
    return (torch.arange(NLF_BINS, dtype=torch.float64) + 0.5) / NLF_BINS


def _camera_columns() -> torch.Tensor:
    """The camera model's columns over the NLF_BINS brightness bins (float64, (NLF_BINS, 2)): noise
    variance slope(l)^2 * (a + b * l) = columns @ (a, b), l the linear value of each bin's centre and
    slope that of the sRGB curve there: Poisson-Gaussian noise in linear light seen through sRGB."""
    lin = srgb_to_linear(_bin_centres())
    return torch.stack([srgb_slope(lin) ** 2, srgb_slope(lin) ** 2 * lin], 1)


def _fitted_levels(fit: torch.Tensor, readings: torch.Tensor) -> torch.Tensor:
    """A fitted variance curve (float64, per bin) as noise levels (float32), kept between a quarter of
    the smallest and twice the largest of the variance `readings` it was fitted to."""
    return fit.clamp(float(readings.min()) / 4, float(readings.max()) * 2).sqrt().float()


def _linear_fit(curve: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) of sigma^2 = a + b * brightness fitted (unconstrained) to the bins with enough blocks,
    weighted by their blocks; None when those bins lie closer than NLF_BINS // 8 bins apart (a slope
    needs room) or there are none."""
    good = count >= NLF_MIN_BLOCKS
    spread = torch.nonzero(good).flatten()
    if spread.numel() == 0 or spread.max() - spread.min() < NLF_BINS // 8:
        return None
    b = _bin_centres()
    sw = count[good].double().sqrt()
    design = torch.stack([torch.ones_like(b), b], 1)[good] * sw[:, None]
    a, slope = torch.linalg.lstsq(design, (curve[good].double() ** 2 * sw)[:, None]).solution[:, 0]
    return a, slope


def _poisson_gaussian_fit(curve: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The noise-level function fitted to the bins with enough blocks, weighted by their blocks, over
    the whole range: the ends that clipping hides are extrapolated, and texture that lifts one bin is
    averaged out.
    - The Poisson-Gaussian model of Foi et al. 2008 on the image's values, sigma^2 = a + b * brightness
      (b >= 0; `_linear_fit`): Gaussian, Poisson and speckle-like noise. A constant when those bins
      lie too close for a slope.
    - Camera noise is Poisson-Gaussian in linear light and passes the sRGB transfer curve, whose steep
      dark end amplifies the sensor's read noise: its level falls with brightness, which the first
      model cannot follow. So the same model is also fitted in linear light, sigma^2 = slope(l)^2 * (a +
      b * l), l the linear value of the brightness (a, b >= 0), and where it fits clearly better
      (residual below NLF_CAMERA_MARGIN of the first's) it raises the curve (the larger of the two).
      On 15 held-back training crops (320 px) against the first model alone: camera noise at peak 30,
      read 4 +0.29 dB (30.89 -> 31.18), with JPEG 75 -0.03; Gaussian 15 / 25 / 50, Poisson 10 / 50,
      speckle 0.1 / 0.3 unchanged. Kept outright (no maximum, margin 1): +0.34 and -0.21 with JPEG,
      whose bright areas read lower than the model expects.
    `curve` as it is when no bin has enough blocks."""
    good = count >= NLF_MIN_BLOCKS
    if not good.any():
        return curve
    b = _bin_centres()
    w = count[good].double()
    v = curve[good].double() ** 2
    fit = torch.full_like(b, float((w * v).sum() / w.sum()))
    linear = _linear_fit(curve, count)
    if linear is not None:
        a, slope = linear
        if slope >= 0:
            fit = a + slope * b
        camera = _camera_columns()
        cam_coef, cam_res = _weighted_fit(camera[good], v, w)
        if cam_res < NLF_CAMERA_MARGIN * float((w * (fit[good] - v) ** 2).sum()):
            fit = torch.maximum(fit, camera @ cam_coef)
    return _fitted_levels(fit, v)


# The wavelet readings are signal-dependent when the noise-free floor is under this share of their
# variance at mid-gray (Poisson, speckle): chosen on the 32 held-back training photos (see _wavelet_curve).
NLF_SIGNAL_SHARE = 0.8


def _signal_share(curve: torch.Tensor, count: torch.Tensor) -> float:
    """Share of the noise variance at mid-gray that grows with brightness, from the Poisson-Gaussian
    fit sigma^2 = a + b * brightness (`_linear_fit`): b/2 / (a + b/2), 0 when the noise does not rise
    with brightness or the bins are too few or too close for a slope."""
    linear = _linear_fit(curve, count)
    if linear is None or linear[1] <= 0:
        return 0.0
    a, slope = linear
    return float(slope / 2 / (a.clamp_min(0) + slope / 2))


def _signal_dependent_fit(curve: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The noise-level function sigma^2 = a + b * x + c * x^2 (a, b, c >= 0; x the brightness) fitted
    to the bins with enough blocks, weighted by their blocks: the Poisson-Gaussian model of Foi et al.
    2008 plus a multiplicative term, which speckle's level (proportional to the signal) needs."""
    good = count >= NLF_MIN_BLOCKS
    b = _bin_centres()
    columns = torch.stack([torch.ones_like(b), b, b * b], 1)
    v = curve[good].double() ** 2
    coef, _ = _weighted_fit(columns[good], v, count[good].double())
    return _fitted_levels(columns @ coef, v)


def _wavelet_curve(bright: torch.Tensor, detail: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The shape of the noise-level function from wavelet detail: in each brightness bin, the robust
    level of the blocks' finest diagonal Haar coefficients (as Foi et al. 2008 read noise off wavelet
    detail per level set), a curve fitted to them, scaled so its mean over the blocks equals the
    estimator's. bright, level: (B,) per block; detail: (B,K) coefficients per block.
    Returns (curve, signal_dependent). When the readings are signal-dependent (`_signal_share` at
    least NLF_SIGNAL_SHARE: Poisson or speckle noise, no floor to speak of), the curve is
    `_signal_dependent_fit`, meant to be used alone: the estimator flattens such curves (it reads
    Poisson noise at peak 10 at 50-60 levels in the darkest bins, where it is 14-30). Else
    `_poisson_gaussian_fit`, meant to be combined with the estimator's curve (see
    `estimate_noise_map`). On the 32 held-back training photos (full size, clipped 8-bit noise,
    automatic strength) against the larger of the two curves everywhere: Poisson peak 10 / 50 +0.23 /
    +0.04 dB, speckle 0.1 / 0.3 +0.15 / +0.19, the camera pipeline with in-camera noise reduction
    (`train.data.camera_sample`, 256 px crops) +0.16 without JPEG and -0.02 with it, camera noise at
    peak 30, read 4 with JPEG 75 -0.03; Gaussian noise is left alone (0-2 photos of 32)."""
    bins = _nlf_bins(bright)
    count = torch.bincount(bins, minlength=NLF_BINS).float()
    readings = torch.stack([_robust_level(detail[bins == i]) for i in range(NLF_BINS)])
    dependent = _signal_share(readings, count) >= NLF_SIGNAL_SHARE
    curve = _signal_dependent_fit(readings, count) if dependent else _poisson_gaussian_fit(readings, count)
    scale = level.mean() / curve[bins].mean().clamp_min(1e-6)
    return curve * scale, dependent


# The estimator reads each tile in these flips/rotations and its maps are averaged (`ganlib.views`): a
# reading that does not depend on how the photo is turned. Real photos differ in their mosaic's phase
# (the camera's Bayer pattern, and a phone photo turned upright by its EXIF orientation shows it
# rotated), and the estimator, though trained on all four phases (session 28), still read CC15's photos
# 5-22% higher in some orientations than upright. Session 29, on 16 held-back 320-pixel crops: Gaussian
# 15 / 25 / 50 and clean crops at the automatic strength +0.004 / +0.005 / +0.001 / +0.05 dB, the camera
# pipeline's noise -0.013 (stride 1) / +0.004 (stride 2), camera noise +0.009, Poisson 10 -0.001
# (`/work/exp29/gauto.py`, `proxy.py`); then CC15 once: +0.15 dB at stride 1, -0.02 at stride 2. Four
# times the estimator's time, which is small beside the generator's.
ESTIMATOR_VIEWS = FOUR_VIEWS


@torch.no_grad()
def _noise_level_function(image: torch.Tensor, estimator: NoiseEstimator, *, tile: int = 512, max_tiles: int = 8,
                          alpha: torch.Tensor | None = None, jpeg: bool = True) -> tuple[torch.Tensor | None, float]:
    """Blind noise-level function of a (1,C,H,W) image in [0, 1]: (curve, summary), the curve the noise
    level (0-1 scale) in NLF_BINS brightness bins (None when no block says anything: a flat or tiny
    image, noise-free), the summary its mean level (0-255 scale). `estimate_noise_map` reads it at
    the image's brightness.

    1. The estimator's noise level on 4x4 blocks, over at most `max_tiles` evenly spread tiles of
       `tile` pixels.
    2. Blocks that say nothing about the noise are left out: transparent ones (mean alpha < 0.5),
       exactly flat ones (no variation at all: a clean border or background), saturated ones
       (SATURATED_SHARE of their values at 0 or 1, where clipping hides the noise) and, when enough
       others remain, those within EMPTY_MARGIN blocks of a flat or transparent one (the estimator sees
       beyond its block). The summary is the mean over the remaining blocks (0 when none remains: a flat or tiny
       image is noise-free).
    3. The curve is a noise-level function (NLF) of local brightness (as camera noise is modelled:
       Foi et al. 2008, "Practical Poissonian-Gaussian noise modeling and fitting for single-image
       raw-data"), in 16 brightness bins. In each bin, the
       larger of two readings:
       - the mean block estimate of the bin, pulled towards the summary in proportion to how few blocks
         it has (the estimator reads the level well, even of JPEG or demosaiced noise, but flattens the
         curve: Poisson noise at peak 10 read 41-46 levels in dark areas where it is 25-32);
       - the shape read off wavelet detail (`_wavelet_curve`) on the blocks that clipping leaves
         alone (at most 1/16 of their values at 0 or 1): a Poisson-Gaussian curve fitted to the bins'
         readings, over the whole range, scaled to the estimator's level on those blocks.
       Clipping only lowers the noise one can see, so the larger reading is the closer one: Gaussian
       noise on a photo with sky or black areas keeps its level there (the noise was added before
       clipping, and the generator expects that level). Constant for Gaussian noise, rising with
       brightness for Poisson and speckle noise. Where the wavelet readings rise with brightness from
       almost no floor (Poisson, speckle: see `_wavelet_curve`), their curve is used alone: the
       estimator's flattened curve would overstate the dark bins two- to fourfold. Measured on 15
       held-back training crops against the estimator's curve alone: +0.06 to +0.68 dB on clipped
       Gaussian, Poisson, speckle and camera noise (Kodak24, where little is clipped: -0.01 to +0.29).
    A gray image (1 channel, or R = G = B) has its block estimates scaled by GRAY_LEVEL_SCALE (a
    signal-dependent curve is not: see there).
    4. jpeg: a colour image whose JPEG quality can be read from its pixels (`ganlib.jpeg`) has its curve
       and summary raised to the noise before compression (`_jpeg_lift`), which the generator expects;
       False reads the noise as it is (comparing an image with a copy whose JPEG grid is gone).
    Raises ValueError for a malformed image, alpha, tile or max_tiles.
    """
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        raise ValueError(f"expected one image of shape (1,C,H,W) with 1 or 3 channels, got {tuple(image.shape)}")
    if tile < 8 or max_tiles < 1:
        raise ValueError(f"tile must be >= 8 and max_tiles >= 1, got {tile} and {max_tiles}")
    h, w = image.shape[-2:]
    if alpha is not None and tuple(alpha.shape) != (1, 1, h, w):
        raise ValueError(f"alpha must have shape (1,1,{h},{w}), got {tuple(alpha.shape)}")
    x = image.float()
    gray = x.shape[1] == 1 or _gray_as_rgb(x)
    want = estimator.config.channels
    if x.shape[1] != want:
        x = x.expand(-1, want, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
    tile = tile // 8 * 8
    boxes = spread_tiles(h, w, tile, max_tiles)
    param = next(estimator.parameters())
    levels, brightness, clipped, details, away = [], [], [], [], []
    for y, x0 in boxes:
        patch = x[..., y : y + tile, x0 : x0 + tile]
        ph, pw = patch.shape[-2] // 4 * 4, patch.shape[-1] // 4 * 4
        if ph == 0 or pw == 0:
            continue
        smap = view_mean(estimator, patch.to(param), ESTIMATOR_VIEWS).float().cpu()[..., :ph, :pw]
        crop = patch[..., :ph, :pw]
        level = F.avg_pool2d(smap, 4).flatten()
        mean = F.avg_pool2d(crop.mean(1, keepdim=True), 4).flatten()
        flat = (F.max_pool2d(crop, 4) - (-F.max_pool2d(-crop, 4))).amax(1).flatten() <= 0
        extreme = F.avg_pool2d(((crop <= EXTREME) | (crop >= 1 - EXTREME)).float(), 4).mean(1).flatten()
        keep = ~flat & (extreme < SATURATED_SHARE) & torch.isfinite(level)
        empty = flat  # a noise-free border or background, and transparent surroundings, whatever their colour
        if alpha is not None:
            opaque = F.avg_pool2d(alpha[..., y : y + ph, x0 : x0 + pw].float(), 4).flatten() >= 0.5
            keep &= opaque
            empty = empty | ~opaque
        near = F.max_pool2d(empty.float().view(1, 1, ph // 4, pw // 4), 2 * EMPTY_MARGIN + 1, stride=1, padding=EMPTY_MARGIN)
        away.append(near.flatten()[keep] == 0)
        hh = _haar_diagonal(crop)
        detail = F.pixel_unshuffle(hh, 2)[0].reshape(hh.shape[1] * 4, -1).T  # 4 diagonal Haar coefficients per channel and block
        levels.append(level[keep])
        brightness.append(mean[keep])
        clipped.append(extreme[keep] > CLIPPED_SHARE)
        details.append(detail[keep])
    read = torch.cat(levels) if levels else torch.zeros(0)
    if read.numel() == 0:
        return None, 0.0
    far = torch.cat(away)
    if int(far.sum()) >= NLF_MIN_BLOCKS:  # the estimator's view of blocks beside empty ones takes in the emptiness
        read = read[far]
        brightness, clipped, details = ([torch.cat(v)[far]] for v in (brightness, clipped, details))
    scale = GRAY_LEVEL_SCALE if gray else 1.0  # not for a signal-dependent curve: see GRAY_LEVEL_SCALE
    level = read * scale
    sigma = float(level.double().mean()) * 255.0
    bright = torch.cat(brightness).clamp(0, 1)
    curve = _nlf_curve(bright, level, sigma / 255.0)
    clear = ~torch.cat(clipped)
    if int(clear.sum()) >= NLF_MIN_BLOCKS:
        shape, dependent = _wavelet_curve(bright[clear], torch.cat(details)[clear], read[clear])
        curve = shape if dependent else torch.maximum(curve, shape * scale)
    sigma = sigma if math.isfinite(sigma) else 0.0
    lift = _jpeg_lift(image, sigma) if jpeg and not gray else 1.0
    return (curve, sigma) if lift == 1.0 else (curve * lift, sigma * lift)  # the noise before JPEG compression


# The noise before JPEG compression, which the generator was trained to expect (the camera kind's informed
# map), from the estimator's reading after it: raised by 1 + JPEG_LIFT_GAIN x (step / sigma)^JPEG_LIFT_POWER,
# step the mean quantisation step (0-255) of the low frequencies at the quality read from the pixels
# (`ganlib.jpeg`), sigma the estimated level (0-255), at most JPEG_LIFT_MAX. Fitted on 8 held-back
# training crops (320 px), camera noise at peak 30, read 4 and peak 100, read 6, JPEG 50 / 65 / 80
# (`/work/exp27/fit.py`): automatic-to-informed gap 1.21 dB with the constant JPEG_LIFT, 0.45 with this
# (0.34 with the best lift per photo). Checked on 16 other held-back crops (`/work/exp27/val.py`): JPEG 60
# gap 1.35 -> 0.72 / 1.23 -> 0.52 (peak 30 / 100), JPEG 75 0.55 -> 0.55 / 0.53 -> 0.45, Gaussian 15 +
# JPEG 75 +0.77 dB; with the second pass for JPEGs whose curve does not fall (`_second_pass_curve`) 0.48 /
# 0.43 at JPEG 60, 0.47 / 0.33 at JPEG 75, Gaussian +0.82. Only from JPEG_LIFT_MIN_SIGMA: a clean JPEG's
# artefacts and texture read as 0.3-9 levels, and lifting them over-smooths (clean crops saved at JPEG
# 75: -0.02 dB, at most -0.23; with a floor of 5, -0.08 and -0.64).
JPEG_LIFT_GAIN, JPEG_LIFT_POWER, JPEG_LIFT_MAX = 0.6, 1.5, 2.0
JPEG_LIFT_MIN_SIGMA = 6.0


def _jpeg_lift(image: torch.Tensor, sigma: float) -> float:
    """The factor a colour JPEG's estimated noise level `sigma` (0-255) is raised by (see JPEG_LIFT_GAIN):
    1 below JPEG_LIFT_MIN_SIGMA (the quality is then not read) or when the image (1,3,H,W) shows no JPEG
    quantisation."""
    if sigma < JPEG_LIFT_MIN_SIGMA:
        return 1.0
    quality = estimate_jpeg_quality(image)
    if quality is None:
        return 1.0
    step = float(np.mean([ijg_table(quality)[f] for f in LOW_FREQUENCIES]))
    lift = min(JPEG_LIFT_MAX, 1.0 + JPEG_LIFT_GAIN * (step / sigma) ** JPEG_LIFT_POWER)
    log.info("JPEG quality %d read from the pixels: noise level %.2f raised %.2fx to the noise before compression", quality, sigma, lift)
    return lift


def _nlf_lookup(curve: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """The noise-level function `curve` (NLF_BINS levels, 0-1 scale) read at `brightness` (any shape, in
    [0, 1]), linear between the bins' centres: the levels, same shape, 0-1 scale."""
    local = brightness.clamp(0, 1) * NLF_BINS - 0.5
    lo = local.floor().clamp(0, NLF_BINS - 1)
    frac = (local - lo).clamp(0, 1)
    hi = (lo + 1).clamp(max=NLF_BINS - 1)
    return curve[lo.long()] * (1 - frac) + curve[hi.long()] * frac


def estimate_noise_map(image: torch.Tensor, estimator: NoiseEstimator, *, tile: int = 512, max_tiles: int = 8,
                       alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Blind noise-level map of a (1,C,H,W) image in [0, 1]: ((1,1,H,W) map, summary), 0-255 scale.
    The noise-level function of `_noise_level_function` (see there) applied to the image's 4x4-block
    brightness (averaged over 3x3 blocks: the brightness, not its noise), upsampled bilinearly.
    Raises ValueError for a malformed image, alpha, tile or max_tiles."""
    smap, sigma, _ = _blind_map(image, estimator, tile=tile, max_tiles=max_tiles, alpha=alpha)
    return smap, sigma


def _blind_map(image: torch.Tensor, estimator: NoiseEstimator, *, tile: int = 512, max_tiles: int = 8,
               alpha: torch.Tensor | None = None, jpeg: bool = True) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """`estimate_noise_map`'s map and summary, and the noise-level function they come from (None for a
    noise-free image)."""
    curve, sigma = _noise_level_function(image, estimator, tile=tile, max_tiles=max_tiles, alpha=alpha, jpeg=jpeg)
    h, w = image.shape[-2:]
    if curve is None:
        return torch.zeros(1, 1, h, w), 0.0, None
    local = F.avg_pool2d(image.float().mean(1, keepdim=True), 4, ceil_mode=True)
    local = F.avg_pool2d(F.pad(local, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # brightness, not its noise
    smap = F.interpolate(_nlf_lookup(curve, local), scale_factor=4, mode="bilinear", align_corners=False)[..., :h, :w] * 255.0
    return smap.contiguous(), sigma, curve


# The noise-level function falls with brightness when its dark quarter reads this many times its bright
# half: camera noise seen through the sRGB tone curve (see `refine_noise_map`). Session 17 picked 1.15;
# 1.05 (session 18) also takes the JPEG-compressed camera noise whose curve JPEG flattened.
NLF_FALL = 1.05


# The second pass's curve for camera noise (see `_second_pass_curve`): the first pass's residual has
# independent noise in each channel when its chroma reads above this share of its luma (sqrt 2 for white
# noise in each channel; held-back camera noise at peak 30, read 4: 1.37-1.82 without JPEG, 0.25-0.31 with
# JPEG 75, whose chroma subsampling takes most of the colour noise; with in-camera noise reduction 0.92).
RESIDUAL_CHROMA = 1.0
RESIDUAL_MIN_PIXELS = 500  # a brightness bin of the residual needs this many pixels ...
RESIDUAL_MAX_CLIPPED = 0.02  # ... and at most this share of its noisy values at 0 or 1 (clipping hides noise)
# The estimator reads JPEG-compressed camera noise about a fifth below the noise before compression that
# the generator was trained to expect (0.8-0.9 in the mid and bright bins of the held-back crops): its
# curve is raised this much for the second pass where the residual's colour noise is gone.
JPEG_LIFT = 1.1


def _mad_std(t: torch.Tensor) -> torch.Tensor:
    """Robust standard deviation along the last dimension: 1.4826 x the median absolute deviation."""
    return 1.4826 * (t - t.median(-1, keepdim=True).values).abs().median(-1).values


def _residual_levels(noisy: torch.Tensor, denoised: torch.Tensor,
                     alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The first pass's residual noisy - denoised ((1,C,H,W) in [0, 1]) read per brightness bin of the
    denoised result, on at most about a megapixel of evenly strided pixels: (robust standard deviation
    (1.4826 x MAD, mean over channels, 0-1 scale) per bin, pixels per bin (0 for a bin with too few or
    too many clipped values), chroma-to-luma ratio of the residual (inf for one channel)). Transparent
    pixels (`alpha` (1,1,H,W) below 0.5) are left out."""
    h, w = noisy.shape[-2:]
    step = max(1, math.ceil(math.sqrt(h * w / (1 << 20))))
    x, y = noisy[..., ::step, ::step].float(), denoised[..., ::step, ::step].float()
    r = (x - y).flatten(2)[0]  # (C, pixels)
    bins = _nlf_bins(y.mean(1).flatten().clamp(0, 1))
    clipped = ((x <= 0) | (x >= 1)).float().flatten(2)[0].mean(0)
    if alpha is not None:
        opaque = alpha[..., ::step, ::step].flatten() >= 0.5
        r, bins, clipped = r[:, opaque], bins[opaque], clipped[opaque]
    level, count = torch.zeros(NLF_BINS, dtype=torch.float64), torch.zeros(NLF_BINS, dtype=torch.float64)
    for i in range(NLF_BINS):
        sel = bins == i
        n = int(sel.sum())
        if n < RESIDUAL_MIN_PIXELS or float(clipped[sel].mean()) > RESIDUAL_MAX_CLIPPED:
            continue
        level[i] = float(_mad_std(r[:, sel]).mean())
        count[i] = n
    if r.shape[0] == 1 or r.shape[1] == 0:
        return level, count, math.inf
    luma = r.mean(0)
    return level, count, float(_mad_std((r - luma).flatten())) / max(float(_mad_std(luma)), 1e-12)


def _camera_fit(level: torch.Tensor, count: torch.Tensor) -> torch.Tensor | None:
    """The camera model in linear light, sigma^2 = slope(l)^2 * (a + b * l) (a, b >= 0; l the linear value
    of each bin's brightness, slope that of the sRGB curve), fitted to per-bin noise levels (0-1 scale)
    weighted by pixels (`_residual_levels`): NLF_BINS levels, or None when fewer than 3 bins have
    readings or a constant fits them as well (Gaussian noise)."""
    good = count > 0
    if int(good.sum()) < 3:
        return None
    camera = _camera_columns()
    v, w = level[good] ** 2, count[good]
    coef, res = _weighted_fit(camera[good], v, w)
    _, flat = _weighted_fit(torch.ones_like(v)[:, None], v, w)
    return None if res >= flat else (camera @ coef).sqrt().float()


def _second_pass_curve(noisy: torch.Tensor, denoised: torch.Tensor, curve: torch.Tensor,
                       alpha: torch.Tensor | None = None) -> torch.Tensor | None:
    """The noise-level function (NLF_BINS levels, 0-1 scale) for the second pass over a camera-noise image
    ((1,C,H,W) noisy and its first denoised result, in [0, 1]), given the blind `curve` it came from, or
    None when the first result stands (always for a curve that does not fall and a residual with
    colour noise: Gaussian, Poisson and speckle noise, camera noise without JPEG).

    The estimator's curve is too flat for camera noise: on the held-back crops it read the shadows
    20-40% low and the bright half 10-30% high, and the generator is sharp about its map there (the
    exact map 10% low or high costs 0.3-0.4 dB, 20% 1.3-1.4 dB). The first pass's residual measures the
    noise directly, as Foi et al. 2008 fit the Poisson-Gaussian model to raw data: per brightness bin of the
    first result, its robust standard deviation (`_residual_levels`), to which the camera model is
    fitted (`_camera_fit`); it extrapolates to the clipped shadows.
    - Used where the residual has independent noise in each channel (chroma over luma above
      RESIDUAL_CHROMA) or one channel (gray photos), and where the camera model fits the readings
      better than a constant does (Gaussian noise stays with the estimator's curve).
    - Where the residual's colour noise is gone (JPEG's chroma subsampling), the residual reads the
      noise after compression, which the generator was not trained to expect (on the held-back crops
      2 dB worse). A falling curve is kept as it is when the JPEG quality can be read
      (`_noise_level_function` lifted it to the noise before compression), else raised by JPEG_LIFT.
      A curve that does not fall (a dark photo: the estimator pulls its few shadow blocks towards the
      rest) takes the camera model's shape from the residual, scaled to the curve's level where the
      photo has pixels; the first result stands when a constant fits as well (Gaussian noise saved
      as JPEG, clean photos).
    Levels at most 0.5, as `ganlib.noise.noise_std_map` bounds camera noise."""
    level, count, chroma = _residual_levels(noisy, denoised, alpha)
    if chroma <= RESIDUAL_CHROMA and not _gray_as_rgb(noisy):
        if _falls(curve):
            return curve if estimate_jpeg_quality(noisy) is not None else curve * JPEG_LIFT  # else lifted already
        fit = _camera_fit(level, count)
        if fit is None:
            return None
        share = (count / count.sum().clamp(min=1)).float()
        return (fit * float((curve * share).sum()) / max(float((fit * share).sum()), 1e-12)).clamp(max=0.5)
    if not _falls(curve):
        return None
    fit = _camera_fit(level, count)
    return curve if fit is None else fit.clamp(max=0.5)


def refine_noise_map(image: torch.Tensor, estimator: NoiseEstimator, denoised: torch.Tensor, *, tile: int = 512,
                     max_tiles: int = 8, alpha: torch.Tensor | None = None) -> torch.Tensor | None:
    """The noise-level map for a second pass over a (1,C,H,W) noisy image in [0, 1], given its first
    denoised result (same shape, [0, 1]): when the image's noise-level function (`_noise_level_function`)
    falls with brightness (its darkest quarter of bins NLF_FALL times its brightest half: camera noise,
    whose read noise the sRGB curve amplifies in the shadows), or the first result's residual has lost
    its colour noise (JPEG) and fits the camera model better than a constant, a curve for camera noise
    (`_second_pass_curve`: the camera model fitted to the first result's residual, the estimator's curve
    raised for JPEG-compressed noise, or for a curve that does not fall the camera model's shape at the
    curve's level) read per pixel at the denoised result's brightness ((1,1,H,W), 0-255); else None (one
    pass is as good).

    `estimate_noise_map` reads the estimator's curve at the noisy image's brightness averaged over 12x12
    pixels, which blurs where a steep curve changes fastest, and the estimator's curve is too flat for
    camera noise. Measured on 15 held-back training crops (320 px, 3 CBSD432 and 6 Sun80 photos no
    fidelity model trained on; clipped 8-bit noise), automatic strength:
    - Session 17's second pass (the estimator's curve at the first result's brightness) against one
      pass: camera noise at peak 30, read 4 +0.52 dB without JPEG (29.76 -> 30.27; all 15 crops took it)
      and +0.23 with JPEG 75 (10 of 15, whose JPEG-flattened curves read 1.05-1.6; at NLF_FALL 1.15, 5
      of 15 and +0.08). Gaussian 15 and 25 took it on 1 crop of 15 each (their readings span
      0.83-1.09, colour and gray), Gaussian 50, Poisson 10 and speckle 0.3 never (their curves are flat
      or rise), the camera pipeline with in-camera noise reduction on 1 and a sepia-toned gray photo on
      2. A second pass for every image would have cost Gaussian 50 and Poisson 10 0.04 dB.
    - `_second_pass_curve` (session 19) against that: without JPEG +0.65 dB (30.33 -> 30.98; informed
      31.44), with JPEG 75 +0.23 (30.02 -> 30.25; informed 30.90); made gray (camera noise, then luma;
      the gray generator) +0.25 / +0.35 without / with JPEG; Gaussian 15 / 25 and in-camera noise
      reduction unchanged (+0.002), the sepia-toned photo -0.013. Other camera settings on the same
      crops, new seeds (peak, read, JPEG quality): 100, 8, none +0.58; 15, 6, none +0.58; 60, 3, 60
      +0.49; 10, 2, 90 +0.03.
    No real-CC15 photo takes the second pass (their readings are 0.44-1.03).
    Raises ValueError as `estimate_noise_map`, or when `denoised` has another shape."""
    if denoised.shape != image.shape:
        raise ValueError(f"denoised must have the image's shape {tuple(image.shape)}, got {tuple(denoised.shape)}")
    curve, _ = _noise_level_function(image, estimator, tile=tile, max_tiles=max_tiles, alpha=alpha)
    second = None if curve is None else _second_pass_curve(image, denoised, curve, alpha)
    return None if second is None else _per_pixel_map(second, denoised)


def _falls(curve: torch.Tensor | None) -> bool:
    """Whether a noise-level function falls with brightness: its darkest quarter of bins reads more than
    NLF_FALL times its brightest half."""
    quarter = NLF_BINS // 4
    return curve is not None and float(curve[:quarter].mean()) > NLF_FALL * float(curve[2 * quarter :].mean())


def _per_pixel_map(curve: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """The noise-level function read at each pixel's brightness (mean over channels) of a (1,C,H,W)
    guide in [0, 1]: (1,1,H,W), 0-255, built about a megapixel at a time (the lookup's temporaries stay small)."""
    h, w = guide.shape[-2:]
    smap = torch.empty(1, 1, h, w)
    rows = max(1, (1 << 20) // max(w, 1))
    for y in range(0, h, rows):
        smap[..., y : y + rows, :] = _nlf_lookup(curve, guide[..., y : y + rows, :].float().mean(1, keepdim=True)) * 255.0
    return smap
