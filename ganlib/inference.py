"""The one inference entry point: tensors in, tensors out, any size through overlapping tiles.

`denoise(model, noisy, sigma)` is what the CLI, the training validation, the benchmark, the demo and
the tests call. Noise levels given here are on the 0-255 scale (a number, or a (N,1,H,W) map);
None means "estimate it from the image". `denoise_image(weights, image)` is the same on a loaded
`ImageData` (alpha, bit depth, ICC profile kept) with the fidelity/GAN blend chosen by `realism`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .impulse import EXTREME, MIN_FRACTION, impulse_fraction, impulse_mask, may_have_impulses, refine_sigma, remove_impulses, spread_tiles, whole_pixel_share
from .models import Generator, NoiseEstimator
from .noise import srgb_to_linear, srgb_slope

if TYPE_CHECKING:  # runtime imports stay lazy: hub and images are not needed to denoise tensors
    from .hub import Weights
    from .images import ImageData

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` runs bfloat16 convolutions natively (CPU: AVX512-BF16 or AMX; CUDA: Ampere on)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """'auto' -> 'bfloat16' where the device has native bfloat16 (about 2.5x faster on an AVX512-BF16 CPU,
    -0.01 dB PSNR), else 'float32'; 'float32' and 'bfloat16' are returned as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


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
GRAY_LEVEL_SCALE = 0.9
NLF_MIN_BLOCKS = 32  # blocks a bin needs to stand on its own; sparser bins lean on the overall level


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


@torch.no_grad()
def _noise_level_function(image: torch.Tensor, estimator: NoiseEstimator, *, tile: int = 512, max_tiles: int = 8,
                          alpha: torch.Tensor | None = None) -> tuple[torch.Tensor | None, float]:
    """Blind noise-level function of a (1,C,H,W) image in [0, 1]: (curve, summary), the curve the noise
    level (0-1 scale) in NLF_BINS brightness bins (None when no block says anything: a flat or tiny
    image, noise-free), the summary its mean level (0-255 scale). `estimate_noise_map` reads it at
    the image's brightness.

    1. The estimator's noise level on 4x4 blocks, over at most `max_tiles` evenly spread tiles of
       `tile` pixels.
    2. Blocks that say nothing about the noise are left out: transparent ones (mean alpha < 0.5),
       exactly flat ones (no variation at all: a clean border or background) and saturated ones
       (half their values at 0 or 1, where clipping hides the noise). The summary is the mean over
       the remaining blocks (0 when none remains: a flat or tiny image is noise-free).
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
    A gray image (1 channel, or R = G = B) has its block estimates scaled by GRAY_LEVEL_SCALE.
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
    levels, brightness, clipped, details = [], [], [], []
    for y, x0 in boxes:
        patch = x[..., y : y + tile, x0 : x0 + tile]
        ph, pw = patch.shape[-2] // 4 * 4, patch.shape[-1] // 4 * 4
        if ph == 0 or pw == 0:
            continue
        smap = estimator(patch.to(param)).float().cpu()[..., :ph, :pw]
        crop = patch[..., :ph, :pw]
        level = F.avg_pool2d(smap, 4).flatten()
        mean = F.avg_pool2d(crop.mean(1, keepdim=True), 4).flatten()
        flat = (F.max_pool2d(crop, 4) - (-F.max_pool2d(-crop, 4))).amax(1).flatten() <= 0
        extreme = F.avg_pool2d(((crop <= EXTREME) | (crop >= 1 - EXTREME)).float(), 4).mean(1).flatten()
        keep = ~flat & (extreme < 0.5) & torch.isfinite(level)  # saturated: half the values at 0 or 1
        if alpha is not None:
            keep &= F.avg_pool2d(alpha[..., y : y + ph, x0 : x0 + pw].float(), 4).flatten() >= 0.5
        hh = _haar_diagonal(crop)
        detail = F.pixel_unshuffle(hh, 2)[0].reshape(hh.shape[1] * 4, -1).T  # 4 diagonal Haar coefficients per channel and block
        levels.append(level[keep])
        brightness.append(mean[keep])
        clipped.append(extreme[keep] > CLIPPED_SHARE)
        details.append(detail[keep])
    level = torch.cat(levels) if levels else torch.zeros(0)
    if gray:
        level = level * GRAY_LEVEL_SCALE
    if level.numel() == 0:
        return None, 0.0
    sigma = float(level.double().mean()) * 255.0
    bright = torch.cat(brightness).clamp(0, 1)
    curve = _nlf_curve(bright, level, sigma / 255.0)
    clear = ~torch.cat(clipped)
    if int(clear.sum()) >= NLF_MIN_BLOCKS:
        shape, dependent = _wavelet_curve(bright[clear], torch.cat(details)[clear], level[clear])
        curve = shape if dependent else torch.maximum(curve, shape)
    return curve, sigma if math.isfinite(sigma) else 0.0


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
               alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """`estimate_noise_map`'s map and summary, and the noise-level function they come from (None for a
    noise-free image)."""
    curve, sigma = _noise_level_function(image, estimator, tile=tile, max_tiles=max_tiles, alpha=alpha)
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


def _second_pass_curve(noisy: torch.Tensor, denoised: torch.Tensor, curve: torch.Tensor,
                       alpha: torch.Tensor | None = None) -> torch.Tensor:
    """The noise-level function (NLF_BINS levels, 0-1 scale) for the second pass over a camera-noise image
    ((1,C,H,W) noisy and its first denoised result, in [0, 1]), given the blind `curve` it came from.

    The estimator's curve is too flat for camera noise: on the held-back crops it read the shadows
    20-40% low and the bright half 10-30% high, and the generator is sharp about its map there (the
    exact map 10% low or high costs 0.3-0.4 dB, 20% 1.3-1.4 dB). The first pass's residual measures the
    noise directly, as Foi et al. 2008 fit the Poisson-Gaussian model to raw data: per brightness bin of the
    first result, its robust standard deviation (`_residual_levels`), to which the camera model in
    linear light, sigma^2 = slope(l)^2 * (a + b * l) (a, b >= 0; l the linear value of the brightness,
    slope that of the sRGB curve) is fitted, weighted by pixels; it extrapolates to the clipped shadows.
    - Used where the residual has independent noise in each channel (chroma over luma above
      RESIDUAL_CHROMA) or one channel (gray photos), and where the camera model fits the readings
      better than a constant does (Gaussian noise stays with the estimator's curve).
    - Where the residual's colour noise is gone (JPEG's chroma subsampling), the residual reads the
      noise after compression, which the generator was not trained to expect (on the held-back crops
      2 dB worse): the estimator's curve raised by JPEG_LIFT.
    Levels at most 0.5, as `ganlib.noise.noise_std_map` bounds camera noise."""
    level, count, chroma = _residual_levels(noisy, denoised, alpha)
    if chroma <= RESIDUAL_CHROMA and not _gray_as_rgb(noisy):
        return curve * JPEG_LIFT
    good = count > 0
    if int(good.sum()) < 3:
        return curve
    camera = _camera_columns()
    v, w = level[good] ** 2, count[good]
    coef, res = _weighted_fit(camera[good], v, w)
    _, flat = _weighted_fit(torch.ones_like(v)[:, None], v, w)
    if res >= flat:
        return curve
    return (camera @ coef).sqrt().float().clamp(max=0.5)


def refine_noise_map(image: torch.Tensor, estimator: NoiseEstimator, denoised: torch.Tensor, *, tile: int = 512,
                     max_tiles: int = 8, alpha: torch.Tensor | None = None) -> torch.Tensor | None:
    """The noise-level map for a second pass over a (1,C,H,W) noisy image in [0, 1], given its first
    denoised result (same shape, [0, 1]): when the image's noise-level function (`_noise_level_function`)
    falls with brightness (its darkest quarter of bins NLF_FALL times its brightest half: camera noise,
    whose read noise the sRGB curve amplifies in the shadows), a curve for camera noise
    (`_second_pass_curve`: the camera model fitted to the first result's residual, or the estimator's
    curve raised for JPEG-compressed noise) read per pixel at the denoised result's brightness
    ((1,1,H,W), 0-255); else None (one pass is as good).

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
    return _per_pixel_map(_second_pass_curve(image, denoised, curve, alpha), denoised) if _falls(curve) else None


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


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + stride)
    return starts


def _ramp(length: int, start: int, stop: int, size: int, overlap: int) -> torch.Tensor:
    """1-D blending weights of one tile: 0 on the outer quarter of each interior overlap band,
    a linear ramp over the middle half, 1 inside; image borders get no ramp."""
    d = torch.arange(length, dtype=torch.float32)
    w = torch.ones(length)
    if overlap > 0:
        band = overlap / 2
        if start > 0:
            w = torch.minimum(w, ((d + 0.5 - overlap / 4) / band).clamp(0, 1))
        if stop < size:
            w = torch.minimum(w, ((length - d - 0.5 - overlap / 4) / band).clamp(0, 1))
    return w


@torch.no_grad()
def denoise(
    model: Generator,
    noisy: torch.Tensor,
    sigma: float | torch.Tensor | None = None,
    *,
    tile: int | None = 512,
    overlap: int = 64,
    progress: ProgressFn | None = None,
    precision: str = "float32",
    ensemble: bool = False,
) -> torch.Tensor:
    """Denoise a (1,C,H,W) float image in [0, 1] (values outside are allowed: unclipped noise).

    sigma: noise level on the 0-255 scale, a (1,1,H,W) map on that scale, or None to estimate it.
    tile/overlap: tile side and overlap in pixels (None = one pass); memory is bounded by the tile.
    precision: 'float32', 'bfloat16' (autocast; the first and last layers stay float32) or 'auto'
    (see `resolve_precision`).
    ensemble: average the 8 flips/rotations of the image (x8 self-ensemble): 8 times the time for about
    +0.2 dB (held-back CBSD432 validation, sigma 15-50).
    Output: same shape, clamped to [0, 1], on the input's device and dtype float32.
    """
    if noisy.dim() != 4 or noisy.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1,C,H,W), got {tuple(noisy.shape)}")
    channels = noisy.shape[1]
    want = model.config.channels
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    if sigma is None:
        sigma = estimate_sigma(noisy)
        log.info("estimated noise level: sigma = %.2f", sigma)
    smap = torch.as_tensor(sigma, dtype=torch.float32) / 255.0
    if smap.dim() == 0:
        if not torch.isfinite(smap) or smap < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {float(smap) * 255}")
        smap = smap.view(1, 1, 1, 1).expand(1, 1, *noisy.shape[-2:])
    elif smap.shape != (1, 1, *noisy.shape[-2:]):
        raise ValueError(f"a noise-level map must have shape (1,1,H,W) = {(1, 1, *noisy.shape[-2:])}, got {tuple(smap.shape)}")
    x = noisy.float()
    if want == 3 and _gray_as_rgb(x):
        # A gray photo stored as RGB: denoised as gray (channel-identical noise), so it stays gray.
        return denoise(model, x[:, :1], smap * 255.0, tile=tile, overlap=overlap, progress=progress,
                       precision=precision, ensemble=ensemble).expand(-1, 3, -1, -1).contiguous().to(noisy.device)
    if channels != want:  # gray image through a colour model, or colour through a gray one
        x = x.expand(-1, want, -1, -1) if channels == 1 else x.mean(dim=1, keepdim=True)
    param = next(model.parameters())
    precision = resolve_precision(precision, param.device)
    views = [(k, flip) for k in range(4) for flip in (False, True)] if ensemble else [(0, False)]
    out = None
    for i, (k, flip) in enumerate(views):
        def report(done: int, total: int) -> None:
            if progress:
                progress(i * total + done, len(views) * total)

        with torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            y = _tiled(model, _view(x, k, flip), _view(smap, k, flip), tile, overlap, report)
        y = _unview(y, k, flip)
        out = y if out is None else out.add_(y)  # one pass (no ensemble) costs no extra image-sized buffer
    if len(views) > 1:
        out /= len(views)
    out.clamp_(0, 1)  # in place: `out` is this call's own buffer, and a 24 MP copy is 288 MB
    keep_brightness(x, out, float(smap.mean()) * 255.0)
    if channels != want:
        out = out.mean(dim=1, keepdim=True) if channels == 1 else out.expand(-1, 3, -1, -1).contiguous()
    return out.to(noisy.device)


BRIGHTNESS_SLACK = 0.75  # 0-255 levels of channel-mean shift always allowed
# keep_brightness acts when the strength is above this many times the image's own (Immerkaer) noise
# level: JPEG hides noise from that high-frequency estimate, so camera noise + JPEG quality 60, given
# its exact map, reads up to 4.2x (quality 75: 2.5x; Gaussian: at most 1.4x; 15 held-back crops)
OVERSTATED = 5.0


def keep_brightness(noisy: torch.Tensor, denoised: torch.Tensor, sigma: float, *, tile: int = 128,
                    max_tiles: int = 8) -> torch.Tensor:
    """Keep each channel's mean brightness when the strength is set above the image's noise: a denoised
    (1,C,H,W) image in [0, 1] is shifted in place so that its channel means stay within what the noise
    can explain of the `noisy` input's. Returns it.

    The generator, told of more noise than there is (a clean photo at strength 100), moves channel
    means by 1-2 levels. So when `sigma` (0-255, what the network was told) is more than OVERSTATED
    (5) times the image's own noise level (Immerkaer 1996, "Fast noise variance estimation", per
    channel, over at most `max_tiles` evenly spread tiles of `tile` pixels), each channel's mean shift
    is limited to BRIGHTNESS_SLACK levels plus what clipping can explain: the share of values clipped at
    0 (which allows a darker result) or at 1 (a brighter one) next to an unclipped value (noise-clipped,
    not a saturated area) times twice the own level. The correction is repeated (at most 3 times) where
    clamping to [0, 1] gave part of it back (dark or bright areas).
    Otherwise the network's result stands: it has learned the mean shifts that clipping and camera tone
    curves put into real noise (measured: taking them back costs 0.2-0.5 dB on JPEG camera noise).
    Measured: flat gray at 100 moved 1.55 levels, now 0.75; the astronaut photo 1.96, now 0.75."""
    c = noisy.shape[1]
    lap = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    clipped = [0.0, 0.0]  # values clipped at 0, at 1
    residual, n_clip, n_res = 0.0, 0, 0
    for y, x in spread_tiles(*noisy.shape[-2:], tile, max_tiles):
        block = noisy[..., y : y + tile, x : x + tile].float()
        for k, extreme in enumerate(((block <= EXTREME).float(), (block >= 1 - EXTREME).float())):
            clipped[k] += float((extreme * F.max_pool2d(1 - extreme, 3, stride=1, padding=1)).sum())
        n_clip += block.numel()
        if min(block.shape[-2:]) >= 3:
            res = F.conv2d(block, lap.to(block), groups=c).abs()
            residual, n_res = residual + float(res.sum()), n_res + res.numel()
    own = residual / max(1, n_res) * math.sqrt(math.pi / 2) / 6 * 255.0
    if sigma <= OVERSTATED * own:
        return denoised
    darker, brighter = (BRIGHTNESS_SLACK / 255.0 + n / max(1, n_clip) * 2 * own / 255.0 for n in clipped)
    target = noisy.float().mean((0, 2, 3))
    for _ in range(3):
        shift = denoised.mean((0, 2, 3)) - target
        excess = shift - shift.clamp(-darker, brighter)
        if not bool((excess.abs() > 1e-3 / 255.0).any()):
            break
        denoised.sub_(excess.view(1, c, 1, 1)).clamp_(0, 1)
    return denoised


def _view(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """One of the 8 flips/rotations of an NCHW tensor: rotate by k quarter turns, then mirror if flip.
    The identity view is `t` itself: torch.rot90 by 0 would copy it (and materialize an expanded map)."""
    if k % 4 == 0 and not flip:
        return t
    t = torch.rot90(t, k, (2, 3))
    return t.flip(3) if flip else t


def _unview(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of `_view` (the identity view is `t` itself, as there)."""
    if k % 4 == 0 and not flip:
        return t
    return torch.rot90(t.flip(3) if flip else t, -k, (2, 3))


def _tiled(model: Generator, x: torch.Tensor, smap: torch.Tensor, tile: int | None, overlap: int,
           progress: ProgressFn | None) -> torch.Tensor:
    """The model over overlapping tiles blended by linear ramps (one pass when the image fits a tile)."""
    param = next(model.parameters())
    want = model.config.channels
    h, w = x.shape[-2:]
    mult = model.multiple
    if tile is None or (h <= tile and w <= tile):
        out = model(x.to(param), smap.to(param)).float().cpu()
        if progress:
            progress(1, 1)
    else:
        tile = max(mult, tile // mult * mult)
        overlap = min(max(0, overlap // mult * mult), tile - mult)
        stride = tile - overlap
        ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
        out = torch.zeros(1, want, h, w)
        weight = torch.zeros(1, 1, h, w)
        total, done = len(ys) * len(xs), 0
        for y0 in ys:
            y1 = min(y0 + tile, h)
            wy = _ramp(y1 - y0, y0, y1, h, overlap)
            for x0 in xs:
                x1 = min(x0 + tile, w)
                wx = _ramp(x1 - x0, x0, x1, w, overlap)
                patch = x[..., y0:y1, x0:x1].to(param)
                res = model(patch, smap[..., y0:y1, x0:x1].to(param)).float().cpu()
                wgt = (wy[:, None] * wx[None, :])[None, None]
                out[..., y0:y1, x0:x1] += res * wgt
                weight[..., y0:y1, x0:x1] += wgt
                done += 1
                if progress:
                    progress(done, total)
        out /= weight
    return out


@dataclass
class Restored:
    """What `restore` did: the result and what the network was told.

    image: the denoised ImageData; noise_map: the (1,1,H,W) noise-level map (0-255 scale) that
    conditioned the network; sigma: its summary (0-255); estimated: True when the map was estimated
    from the image, False when the caller gave it; impulses: impulse noise was removed first by the
    switching median (`ganlib.impulse`); impulse_fraction: share of values detected as impulses;
    gray_model: the image is gray (one channel, or R = G = B) and went through the weights' generator
    for gray photos (`Weights.gray`)."""

    image: ImageData
    noise_map: torch.Tensor
    sigma: float
    estimated: bool
    impulses: bool = False
    impulse_fraction: float = 0.0
    gray_model: bool = False


IMPULSE_MIN_FRACTION = MIN_FRACTION  # below this share of isolated extremes a photo is not treated for impulses
IMPULSE_DROP = 0.5  # ... and only when removing them leaves at most this share of the estimated noise,
IMPULSE_DROP_TEXTURED = 0.8  # or this share when what is left reads at most IMPULSE_LEFT_LEVEL: on a textured
IMPULSE_LEFT_LEVEL = 10.0  # photo with few impulses the texture reads as noise before and after removal. On 46
# CBSD432 / Sun80 training photos: salt & pepper at amount 0.003 left 0.6-7.2 levels at ratios up to 0.67 (13 of 46
# above 0.5); every other kind whose reading after removal is at most 10 (Gaussian 10, speckle 0.1, camera noise
# at peak 100 with JPEG 90, clean photos) kept at least 0.89 of it, and the rest read 13.5 or more after removal.


def _as_map(sigma: float | torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A noise level (0-255 number or (1,1,H,W) map) as a float32 (1,1,h,w) map; a number must be finite, >= 0."""
    smap = torch.as_tensor(sigma, dtype=torch.float32)
    if smap.dim() == 0:
        if not torch.isfinite(smap) or smap < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {float(smap)}")
        smap = smap.view(1, 1, 1, 1).expand(1, 1, h, w)
    return smap


def restore(
    weights: Weights,
    image: ImageData,
    *,
    sigma: float | torch.Tensor | None = None,
    impulses: bool | None = None,
    realism: float = 0.0,
    tile: int | None = 512,
    overlap: int = 64,
    progress: ProgressFn | None = None,
    precision: str = "float32",
    ensemble: bool = False,
    stride: int = 1,
    sigma_estimated: bool = False,
) -> Restored:
    """Denoise a loaded image and say how: the library's one high-level entry point (demo, CLI, benchmark).

    sigma: the noise level on the 0-255 scale, a number or a (1,1,H,W) map (informed denoising: see
    `ganlib.noise.informed_noise_map`), or None to estimate a map from the image with
    `weights.estimator` (`estimate_noise_map`: transparent, flat and saturated areas ignored), else
    scikit-image's wavelet estimate. An estimated map (None, or a map with `sigma_estimated`) whose
    noise level falls with brightness (camera noise) takes a second pass at the map read per pixel at
    the first result's brightness (`refine_noise_map`; stride 1 only: twice the time for such photos).
    impulses: True = the image carries salt & pepper noise: detected impulses are replaced by a
    switching median, then the network refines those pixels only (all others are kept exactly);
    None = detect it (isolated 0/1 values, and their removal takes away most of the estimated
    noise, or a fifth of it when little is left: `IMPULSE_DROP_TEXTURED`); False = never.
    tile, overlap, progress, precision, ensemble: as in `denoise`.
    realism: 0 = the fidelity model; above 0 (up to 1), the generator blended towards the GAN stage (by
    REALISM_GAN_SHARE x realism) supplies the fine texture and a second pass of the fidelity model the
    tone and colour (`frequency_separation`), then the fidelity result's own fine detail is raised in
    proportion to realism and the noise-level map (`detail_gain`; with a given sigma, towards the
    clean photo's fine-detail energy as estimated from the noisy one): twice the time (not for impulse
    noise, where only the replaced pixels are refined).
    stride: pixel-shuffle downsampling for spatially correlated noise, the blotches of a few pixels
    that in-camera processing leaves in real photos (Zhou et al. 2020, "When AWGN-based denoiser meets
    real noises"): the image is split into stride x stride sub-images (every stride-th pixel), each is
    estimated (when sigma is None) and denoised on its own, and they are interleaved back. At that
    scale the blotches are close to white noise, which the estimator reads and the generator removes.
    1 = off (white noise: synthetic noise, most scans); 2 for camera photos. Then the paper's
    refinement: each sub-image in turn is put back noisy into the interleaved result and the whole is
    denoised again at 1/stride of the map (the noise RMS of an image where one pixel in stride x stride
    is noisy); the stride x stride results are averaged. It brings back the fine detail that denoising
    sub-images on their own loses (CC15: +0.39 dB, SSIM 0.947 -> 0.953). Time: 1 + stride x stride
    times that of stride 1.
    sigma_estimated: the given sigma was estimated from this image (as by `estimate_noise_map`), not
    known: realism then uses the fixed detail gain, as with sigma None (see `detail_gain`), and the
    result says `estimated`.
    Raises ValueError for a bad sigma, map shape, realism or stride.
    """
    try:
        realism = float(realism)
    except (TypeError, ValueError):
        raise ValueError(f"realism must be a number between 0 and 1, got {realism!r}") from None
    if not (math.isfinite(realism) and 0.0 <= realism <= 1.0):
        raise ValueError(f"realism must be between 0 and 1, got {realism!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 4:
        raise ValueError(f"stride must be an integer from 1 to 4, got {stride!r}")
    pixels = image.pixels
    h, w = pixels.shape[-2:]
    alpha = image.opacity()  # transparent pixels say nothing about the noise
    gray = pixels.shape[1] == 1 or _gray_as_rgb(pixels)
    gray_model = gray and weights.gray is not None
    if gray_model:
        log.info("gray image: denoised by the generator for gray photos (gray/)")
    # Realism above 0 blends the colour fidelity model towards the GAN stage, for gray photos too (their
    # tone still comes from the gray model, see below): the gray model and the GAN stage lie far apart, and
    # the weights between them are not monotone in detail (8 CBSD432 training photos made gray, sigma 50: detail ratio
    # 0.74 / 0.99 / 0.83 / 0.85 at realism 0.25 / 0.5 / 0.75 / 1; the colour blend 0.58 / 0.63 / 0.71 / 0.86).
    model = weights.generator(REALISM_GAN_SHARE * realism) if realism > 0 else weights.base(gray)
    estimated = sigma is None or bool(sigma_estimated)

    def blind_curve(x: torch.Tensor, alpha: torch.Tensor | None = alpha) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """The estimated map, its summary and the noise-level function (None without an estimator)."""
        if weights.estimator is not None:
            return _blind_map(x, weights.estimator, alpha=alpha)
        s = estimate_sigma(x)
        return torch.full((1, 1, *x.shape[-2:]), s), s, None

    def blind(x: torch.Tensor, alpha: torch.Tensor | None = alpha) -> tuple[torch.Tensor, float]:
        return blind_curve(x, alpha)[:2]

    mask, cleaned, fraction, use_impulses = None, None, 0.0, False
    if impulses or (impulses is None and may_have_impulses(pixels) and impulse_fraction(pixels) >= IMPULSE_MIN_FRACTION):
        mask = impulse_mask(pixels)
        fraction = float(mask.float().mean())
        if impulses:
            use_impulses = bool(mask.any())
        elif fraction >= IMPULSE_MIN_FRACTION and sigma is None:
            before = blind(pixels)[1]
            cleaned = remove_impulses(pixels, mask)
            after = blind(cleaned)[1]
            use_impulses = after <= IMPULSE_DROP * before or (after <= IMPULSE_DROP_TEXTURED * before and after <= IMPULSE_LEFT_LEVEL)
    if use_impulses:
        if cleaned is None:
            cleaned = remove_impulses(pixels, mask)
        smap = torch.full((1, 1, h, w), refine_sigma(whole_pixel_share(mask))) if sigma is None else _as_map(sigma, h, w)
        refined = denoise(model, cleaned, smap, tile=tile, overlap=overlap, progress=progress, precision=precision, ensemble=ensemble)
        if refined.shape[1] != cleaned.shape[1]:
            refined = refined.mean(1, keepdim=True) if cleaned.shape[1] == 1 else refined.expand_as(cleaned)
        result = torch.where(mask, refined, cleaned)
        log.info("impulse noise: %.2f%% of values replaced by the switching median, refined at sigma %.1f", 100 * fraction, float(smap.mean()))
        return Restored(image.with_pixels(result), smap, float(smap.mean()), estimated, True, fraction, gray_model)
    mask = cleaned = None  # not impulse noise: free the full-size copies before denoising (24 MP: about 0.4 GB)

    # an estimated map may take a second pass, the noise-level function read at the first result's brightness
    refinable = weights.estimator is not None and (sigma is None or (bool(sigma_estimated) and torch.is_tensor(sigma)))

    def run(model: Generator, sigma: float | torch.Tensor | None, progress: ProgressFn | None, refine: bool = False) -> Restored:
        if stride > 1:
            shuffled = _pixel_shuffled(model, image, sigma, blind, stride, fraction, tile=tile, overlap=overlap, progress=progress,
                                       precision=precision, ensemble=ensemble)
            shuffled.gray_model, shuffled.estimated = gray_model, estimated
            return shuffled
        curve = None  # the noise-level function, for the second pass (refine_noise_map)
        if sigma is None:
            smap, summary, curve = blind_curve(pixels)
            log.info("estimated noise level: sigma = %.2f (map %.2f-%.2f)", summary, float(smap.min()), float(smap.max()))
        else:
            smap = _as_map(sigma, h, w)
            summary = float(smap.float().mean())
            if refine:
                curve, _ = _noise_level_function(pixels, weights.estimator, alpha=alpha)
        second = refine and _falls(curve)  # known before the first pass, so progress counts both
        result = denoise(model, pixels, smap, tile=tile, overlap=overlap, progress=_pass(progress, 0, 2) if second else progress,
                         precision=precision, ensemble=ensemble)
        if second:
            log.info("noise level falls with brightness (camera noise): a second pass at the first result's brightness")
            smap = _per_pixel_map(_second_pass_curve(pixels, result, curve, alpha), result)
            result = None  # free the first result before the second pass (24 MP: 0.3 GB)
            result = denoise(model, pixels, smap, tile=tile, overlap=overlap, progress=_pass(progress, 1, 2), precision=precision,
                             ensemble=ensemble)
        return Restored(image.with_pixels(result), smap, summary, estimated, False, fraction, gray_model)

    if realism == 0.0:
        return run(model, sigma, progress, refinable)
    # Realism: the blended generator's fine texture on the fidelity model's tone and colour, from a
    # second pass with the same noise-level map (twice the time).
    textured = run(model, sigma, _pass(progress, 0, 2), refinable)
    base = run(weights.base(gray), textured.noise_map, _pass(progress, 1, 2))
    result = frequency_separation(textured.image.pixels, base.image.pixels)
    textured.image = image.with_pixels(detail_gain(result, base.image.pixels, textured.noise_map, realism,
                                                    noisy=None if estimated else pixels))
    return textured


REALISM_TONE_SIGMA = 1.0  # pixels: chosen on held-back CBSD432 photos (see frequency_separation)
REALISM_GATE = 1.0  # 0-255 levels of local detail for the GAN's full texture: chosen on held-back CBSD432 crops
# Realism 1 = network interpolation this far towards the GAN stage (the rest of its detail comes from
# detail_gain): chosen on held-back training photos (see detail_gain).
REALISM_GAN_SHARE = 0.75
REALISM_DETAIL_GAIN = 0.25  # detail_gain's fixed gain (estimated maps) at noise level 25 and realism 1 ...
REALISM_DETAIL_CAP = 0.5  # ... and the most its matched gain (known maps) may be there ...
REALISM_DETAIL_POWER = 1.3  # ... growing as (level / 25) ** power with the noise-level map ...
REALISM_DETAIL_MAX = 1.0  # ... up to this gain


def _pass(progress: ProgressFn | None, k: int, n: int) -> ProgressFn | None:
    """Progress of pass k of n, reported as a share of all n passes."""
    if progress is None:
        return None
    return lambda done, total: progress(k * total + done, n * total)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N,C,H,W) tensor, std `sigma` pixels, edges mirrored (any size)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma * sigma))
    k = (k / k.sum()).to(image)
    c = image.shape[1]
    mode = "reflect" if min(image.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(image, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def texture_gate(base: torch.Tensor, tau: float = REALISM_GATE) -> torch.Tensor:
    """Where a (N,C,H,W) image in [0, 1] has detail: the local mean (Gaussian, 3 pixels) of its
    high-pass magnitude |base - blur(base, 1 px)| (mean over channels), in 0-255 levels, over `tau`,
    clamped to [0, 1]: (N,1,H,W), 0 on flat areas, 1 wherever the local detail reaches tau levels.
    Raises ValueError when tau is not above 0."""
    if not tau > 0:
        raise ValueError(f"tau must be above 0, got {tau!r}")
    activity = (base.float() - gaussian_blur(base.float(), 1.0)).abs_().mean(1, keepdim=True)
    return (gaussian_blur(activity, 3.0) * (255.0 / tau)).clamp_(0, 1)


def frequency_separation(textured: torch.Tensor, base: torch.Tensor, sigma: float = REALISM_TONE_SIGMA,
                         gate: float | None = REALISM_GATE) -> torch.Tensor:
    """The fine detail of `textured` (the GAN end of realism) on the coarse content of `base` (the
    fidelity result), both (1,C,H,W) in [0, 1]: base + w * (d - blur(d)) with d = textured - base, which
    for w = 1 is textured + blur(base - textured); output clamped to [0, 1].

    After the frequency separation of Fritsche et al. 2019 ("Frequency Separation for Real-World
    Super-Resolution"), where the adversarial loss only judges high frequencies: here it is applied at
    inference, so the GAN adds texture but cannot move tone or colour. Measured on 12 held-back CBSD432
    photos at sigma 25, realism 1: PSNR cost against realism 0 from 1.00 to 0.65 dB, SSIM cost from
    0.056 to 0.039, largest channel-mean shift 0.67 -> 0.03 levels.

    gate: the texture goes only where `base` has detail, w = `texture_gate(base, gate)`; None = w = 1
    everywhere. As the locally discriminative learning of Liang et al. 2022 ("Details or Artifacts",
    LDL) keeps GAN detail in textured areas and suppresses it in flat ones, here at inference: the GAN's
    grain on a clean sky or skin reads as noise left in. Measured on 26 held-back CBSD432 crops (320 px,
    sigma 25, realism 1 against 0): PSNR cost 0.91 -> 0.75 dB, SSIM cost 0.045 -> 0.024, detail ratio
    0.984 -> 0.948 (gate 1; gate 2 with a quarter of the texture on flat areas: 0.72 dB, 0.021, 0.941).
    """
    if textured.shape != base.shape:
        raise ValueError(f"textured and base must have the same shape, got {tuple(textured.shape)} and {tuple(base.shape)}")
    detail = textured.float() - base.float()
    detail -= gaussian_blur(detail, sigma)
    if gate is not None:
        detail *= texture_gate(base, gate)
    return detail.add_(base.float()).clamp_(0, 1)


def _fine_band(x: torch.Tensor) -> torch.Tensor:
    """The finest band of a (1,C,H,W) image's luminance (mean over channels): l - blur(l), (1,1,H,W)."""
    lum = x.float().mean(1, keepdim=True)
    return lum - gaussian_blur(lum, REALISM_TONE_SIGMA)


def _fine_band_white() -> float:
    """Energy of `_fine_band` per unit variance of white noise: the sum of its squared filter taps."""
    delta = torch.zeros(1, 1, 15, 15)
    delta[..., 7, 7] = 1.0
    return float((_fine_band(delta) ** 2).sum())


def clean_fine_energy(noisy: torch.Tensor, denoised: torch.Tensor, noise_map: torch.Tensor) -> float:
    """Estimate of the clean photo's fine-band energy (mean squared `_fine_band` of its luminance, 0-1
    scale) from a noisy (1,C,H,W) image in [0, 1], its denoised result and the (1,1,H,W) noise-level
    map (0-255) that conditioned it: the noisy image's energy in that band less the noise's.
    The noise's follows the map's shape, its level is measured: the residual's (noisy - denoised)
    finest diagonal Haar coefficients of luminance, divided by the map, have a robust level
    (`_robust_level`: texture the denoiser removed is trimmed) that scales the map to the luminance
    noise, whatever its channel correlation (one third of the variance for independent channels, all
    of it for gray) and however well an estimated map read its level; white noise of that map puts
    `_fine_band_white()` times its variance in the band. 0 when the noise is all there is.
    Raises ValueError when the shapes disagree."""
    if noisy.shape != denoised.shape or noise_map.shape[-2:] != noisy.shape[-2:]:
        raise ValueError(f"noisy {tuple(noisy.shape)}, denoised {tuple(denoised.shape)} and noise map "
                         f"{tuple(noise_map.shape)} must cover the same pixels")
    energy = float(_fine_band(noisy).pow(2).mean())
    h, w = noisy.shape[-2] // 2 * 2, noisy.shape[-1] // 2 * 2
    if h == 0 or w == 0:
        return energy
    std = noise_map.float()[:1, :1].clamp(min=0) / 255.0
    level = F.avg_pool2d(std[..., :h, :w], 2)  # the map on the coefficients' grid
    coef = _haar_diagonal((noisy.float() - denoised.float()).mean(1, keepdim=True))
    noisy_at = level > 0.5 / 255.0  # half a level: below it the map says there is no noise
    if not bool(noisy_at.any()):
        return energy
    scale = float(_robust_level(coef[noisy_at] / level[noisy_at]))  # luminance noise per unit of the map
    noise = scale * scale * float(std.pow(2).mean())
    return max(0.0, energy - _fine_band_white() * noise)


def detail_gain(image: torch.Tensor, base: torch.Tensor, noise_map: torch.Tensor, realism: float = 1.0, *,
                noisy: torch.Tensor | None = None, gain: float = REALISM_DETAIL_GAIN, max_matched: float = REALISM_DETAIL_CAP,
                power: float = REALISM_DETAIL_POWER, max_gain: float = REALISM_DETAIL_MAX) -> torch.Tensor:
    """Give back the fine detail that minimum-error denoising shrinks: image + k * (base - blur(base)),
    with base the fidelity result (both (1,C,H,W) in [0, 1]; Gaussian blur of REALISM_TONE_SIGMA
    pixels) and a per-pixel gain k = realism * c * (noise_map / 25) ** power, at most max_gain
    (noise_map: (1,1,H,W) or broadcastable, 0-255 levels). Output clamped to [0, 1]; a blur keeps the
    mean, so tone and colour stay; where the map is 0 the image is unchanged.
    - `noisy` given (the (1,C,H,W) image `base` was denoised from, with `noise_map` the noise it
      carries, known rather than estimated): c makes the result's fine-band energy (luminance) equal
      to the clean photo's as estimated from the noisy one (`clean_fine_energy`), at most
      `max_matched`; 0 when the image already has that much.
    - else the fixed c = `gain`.

    Why: a denoiser trained for the least squared error returns the posterior mean, whose fine detail
    is shrunk towards 0 the more, the stronger the noise. Freirich, Michaeli and Meir 2021 ("A Theory
    of the Distortion-Perception Tradeoff in Wasserstein Space") show that the least-error estimator
    whose outputs have the clean images' statistics is that posterior mean transported to them, which
    for Gaussian statistics is a per-frequency gain on it that restores the clean images' energy in
    each band: more detail, aligned with the photo's own structure. Here one band (the finest, as in
    `frequency_separation`).
    The fixed gain was chosen on the 32 held-back training photos (26 CBSD432 of 481 x 321, 6 Sun80 at
    half size), Gaussian noise at sigma 25, to bring realism 1 to the clean photos' detail (detail
    ratio 1). The matched gain has no constant of its own but its cap, twice the fixed gain, which
    bounds it where the estimate cannot be trusted: on a very smooth photo the clean fine-band energy is
    a sliver of the noise's (0.4% on scikit-image's retina at sigma 25, read 5x too high). Its noise
    reading, from the residual, runs 20 / 10 / 3% low at sigma 15 / 25 / 50 (the denoised result keeps
    some noise), so the clean energy reads a little high; matching energy exactly would give a detail
    ratio (mean gradient) of about 0.95 at sigma 25, as texture is spread thinner than edges. Realism 1
    against 0 on the 32 photos at the true sigma 15 / 25 / 50, matched (fixed): PSNR -0.98 / -0.74 / -0.97 dB
    (-1.05 / -0.79 / -1.02), SSIM -0.011 / -0.011 / -0.031 (the same), detail ratio 1.02 / 1.00 / 0.99 (1.03
    / 1.00 / 0.99), its spread between photos less (standard deviation at sigma 25 0.055 against 0.083);
    camera noise (peak 30, read 4) 1.00 at -0.91 dB (1.01 at -1.01), with JPEG 75 1.03 at -0.91 (0.99 at
    -0.68). On six scikit-image photos (sigma 25; a check, though retina among them showed the need for
    the cap): detail 0.96 at -0.64 dB (fixed: 0.94 at -0.54): photos whose fine texture the fidelity model smooths more get more gain.
    Not used on estimated maps: where the map reads low the denoised result keeps noise, the residual
    reads the noise low, and the leftover noise is raised (held-back photos at the estimated strength:
    camera noise with JPEG 75 1.20 at -1.21 dB against the fixed gain's 1.10 at -0.65; Gaussian sigma
    25 0.93 at -0.50 against 0.93 at -0.56). So it needs `noisy`, passed by `restore` only for a given
    sigma that was not estimated (`sigma_estimated`).
    Raises ValueError for a realism outside [0, 1].
    """
    if not 0.0 <= realism <= 1.0:
        raise ValueError(f"realism must be in [0, 1], got {realism!r}")
    shape = (noise_map.float().clamp(min=0) / 25.0).pow(power)
    detail = base.float() - gaussian_blur(base.float(), REALISM_TONE_SIGMA)
    c = gain
    if noisy is not None:
        u, v = _fine_band(image), _fine_band(shape * detail)
        a, b, q = float(u.pow(2).mean()), 2.0 * float((u * v).mean()), float(v.pow(2).mean())
        target = clean_fine_energy(noisy, base, noise_map.float().expand(1, 1, *noisy.shape[-2:]))
        # energy(image + c * shape * detail) = a + b c + q c^2 = target: its larger root, 0 when none is positive
        c = (-b + math.sqrt(b * b + 4 * q * (target - a))) / (2 * q) if q > 0 and target > a else 0.0
        c = min(max(c, 0.0), max_matched)
    k = shape.mul_(realism * c).clamp_(max=max_gain)
    return (image.float() + k * detail).clamp_(0, 1)


def _pixel_shuffled(model: Generator, image: ImageData, sigma: float | torch.Tensor | None,
                    blind: Callable[..., tuple[torch.Tensor, float]], stride: int, fraction: float, *,
                    progress: ProgressFn | None, **kwargs) -> Restored:
    """`restore` on the stride x stride pixel-shuffled sub-images (see its `stride`), interleaved back,
    then refined (Zhou et al. 2020, section "PD refinement")."""
    h, w = image.pixels.shape[-2:]
    ph, pw = -h % stride, -w % stride

    def padded(t: torch.Tensor) -> torch.Tensor:  # sides made multiples of the stride (edge pixels repeated)
        return F.pad(t.float(), (0, pw, 0, ph), mode="replicate") if ph or pw else t.float()

    x = padded(image.pixels)
    alpha = image.opacity()
    alpha = padded(alpha) if alpha is not None else None
    given = None if sigma is None else padded(_as_map(sigma, h, w).expand(1, 1, h, w))
    out = torch.empty(1, x.shape[1], *x.shape[-2:])
    smap = torch.empty(1, 1, *x.shape[-2:])
    summaries = []
    subs = [(i, j) for i in range(stride) for j in range(stride)]
    for n, (i, j) in enumerate(subs):
        sub = x[..., i::stride, j::stride]
        if given is None:
            sub_map, summary = blind(sub, None if alpha is None else alpha[..., i::stride, j::stride])
        else:
            sub_map = given[..., i::stride, j::stride]
            summary = float(sub_map.mean())
        out[..., i::stride, j::stride] = denoise(model, sub, sub_map, progress=_pass(progress, n, 2 * len(subs)), **kwargs)
        smap[..., i::stride, j::stride] = sub_map
        summaries.append(summary)
    summary = float(np.mean(summaries))
    if sigma is None:
        log.info("estimated noise level at pixel-shuffle stride %d: sigma = %.2f", stride, summary)
    refined, refill = torch.zeros_like(out), out.clone()
    for n, (i, j) in enumerate(subs):  # PD refinement: one sub-image noisy again, the whole denoised at stride 1
        refill[..., i::stride, j::stride] = x[..., i::stride, j::stride]
        refined += denoise(model, refill, smap / stride, progress=_pass(progress, len(subs) + n, 2 * len(subs)), **kwargs)
        refill[..., i::stride, j::stride] = out[..., i::stride, j::stride]
    result = image.with_pixels(refined.div_(len(subs))[..., :h, :w].contiguous())
    return Restored(result, smap[..., :h, :w].contiguous(), summary, sigma is None, False, fraction)


def denoise_image(
    weights: Weights,
    image: ImageData,
    *,
    sigma: float | torch.Tensor | None = None,
    realism: float = 0.0,
    tile: int | None = 512,
    overlap: int = 64,
    progress: ProgressFn | None = None,
    precision: str = "float32",
    ensemble: bool = False,
    stride: int = 1,
) -> ImageData:
    """Denoise a loaded image with `weights.generator(realism)`; returns a new ImageData with the same
    metadata (alpha, bit depth, ICC profile, name). sigma, precision and ensemble as in `denoise`;
    sigma None is estimated (see `restore`, of which this is the image part; impulse noise is detected);
    stride as in `restore` (2 for the correlated noise of camera photos)."""
    return restore(weights, image, sigma=sigma, realism=realism, tile=tile, overlap=overlap, progress=progress,
                   precision=precision, ensemble=ensemble, stride=stride).image
