"""The one inference entry point: tensors in, tensors out, any size through overlapping tiles.

`restore(weights, image)` is what the demo, the CLI and the benchmark call: impulse detection, the
noise-level map (given, or estimated by `ganlib.noise_level`), tiled denoising, a second pass for camera
noise, pixel-shuffle for real photos, realism (`ganlib.realism`). `denoise(model, noisy, sigma)` is its
network part, which the training validation and the tests call too. Noise levels given here are on the
0-255 scale (a number, or a (N,1,H,W) map). `denoise_image(weights, image)` is `restore(...).image`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .impulse import EXTREME, MIN_FRACTION, impulse_fraction, impulse_mask, may_have_impulses, refine_sigma, remove_impulses, spread_tiles, whole_pixel_share
from .models import Generator
from .noise_level import _blind_map, _falls, _gray_as_rgb, _noise_level_function, _per_pixel_map, _second_pass_curve, estimate_sigma
from .realism import REALISM_GAN_SHARE, detail_gain, frequency_separation
from .views import ALL_VIEWS, FOUR_VIEWS, unview, view

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
    views = ALL_VIEWS if ensemble else [(0, False)]
    out = None
    for i, (k, flip) in enumerate(views):
        def report(done: int, total: int) -> None:
            if progress:
                progress(i * total + done, len(views) * total)

        with torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            y = _tiled(model, view(x, k, flip), view(smap, k, flip), tile, overlap, report)
        y = unview(y, k, flip)
        out = y if out is None else out.add_(y)  # one pass (no ensemble) costs no extra image-sized buffer
    if len(views) > 1:
        out /= len(views)
    out.clamp_(0, 1)  # in place: `out` is this call's own buffer, and a 24 MP copy is 288 MB
    keep_brightness(x, out, float(smap.mean()) * 255.0)
    if channels != want:
        out = out.mean(dim=1, keepdim=True) if channels == 1 else out.expand(-1, 3, -1, -1).contiguous()
    return out.to(noisy.device)


BRIGHTNESS_SLACK = 0.75  # 0-255 levels of channel-mean shift always allowed
# ... and never more than this, whatever clipping seems to explain: issue #12 promises clean and flat
# images keep each channel's mean within 1 level at any strength, and a clean photo's black areas
# (JPEG flicker at 0 beside low values) read as noise-clipped (a held-back photo moved 1.15 levels)
BRIGHTNESS_LIMIT = 0.95
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
    not a saturated area) times twice the own level, and never more than BRIGHTNESS_LIMIT levels in all
    (a clean photo's black areas look noise-clipped too). The correction is repeated (at most 3 times) where
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
    darker, brighter = (min(BRIGHTNESS_SLACK + n / max(1, n_clip) * 2 * own, BRIGHTNESS_LIMIT) / 255.0 for n in clipped)
    target = noisy.float().mean((0, 2, 3))
    for _ in range(3):
        shift = denoised.mean((0, 2, 3)) - target
        excess = shift - shift.clamp(-darker, brighter)
        if not bool((excess.abs() > 1e-3 / 255.0).any()):
            break
        denoised.sub_(excess.view(1, c, 1, 1)).clamp_(0, 1)
    return denoised


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
    noise level falls with brightness (camera noise), or whose first result's residual has lost its
    colour noise and fits the camera model (JPEG-compressed camera noise on a dark photo), takes a
    second pass at the map read per pixel at the first result's brightness (`refine_noise_map`; stride
    1 only: twice the time for such photos; a JPEG photo's map is raised to the noise before
    compression, see `ganlib.noise_level`).
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
    sub-images on their own loses (CC15: +0.39 dB, SSIM 0.947 -> 0.953). Without `ensemble`, the
    passes run in turn in four flips/rotations (`ganlib.views.FOUR_VIEWS`): a self-ensemble at no extra time (CC15
    +0.18 dB). Time: 1 + stride x stride times that of stride 1.
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
    # Realism above 0 adds the GAN stage's change to the base model: for gray photos to the gray model
    # (`Weights.generator`), whose tone also comes back in the second pass below.
    model = weights.generator(REALISM_GAN_SHARE * realism, gray=gray) if realism > 0 else weights.base(gray)
    estimated = sigma is None or bool(sigma_estimated)

    def blind_curve(x: torch.Tensor, alpha: torch.Tensor | None = alpha,
                    jpeg: bool = True) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """The estimated map, its summary and the noise-level function (None without an estimator)."""
        if weights.estimator is not None:
            return _blind_map(x, weights.estimator, alpha=alpha, jpeg=jpeg)
        s = estimate_sigma(x)
        return torch.full((1, 1, *x.shape[-2:]), s), s, None

    def blind(x: torch.Tensor, alpha: torch.Tensor | None = alpha, jpeg: bool = True) -> tuple[torch.Tensor, float]:
        return blind_curve(x, alpha, jpeg)[:2]

    mask, cleaned, fraction, use_impulses = None, None, 0.0, False
    if impulses or (impulses is None and may_have_impulses(pixels) and impulse_fraction(pixels) >= IMPULSE_MIN_FRACTION):
        mask = impulse_mask(pixels)
        fraction = float(mask.float().mean())
        if impulses:
            use_impulses = bool(mask.any())
        elif fraction >= IMPULSE_MIN_FRACTION and sigma is None:
            # the noise as it is: the median's replacements break a JPEG's block grid, which lifts the reading
            before = blind(pixels, jpeg=False)[1]
            cleaned = remove_impulses(pixels, mask)
            after = blind(cleaned, jpeg=False)[1]
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
        known = refine and _falls(curve)  # a falling curve always takes the second pass: progress counts both
        result = denoise(model, pixels, smap, tile=tile, overlap=overlap, progress=_pass(progress, 0, 2) if known else progress,
                         precision=precision, ensemble=ensemble)
        second = _second_pass_curve(pixels, result, curve, alpha) if refine and curve is not None else None
        if second is not None:  # else one pass is as good
            log.info("camera noise: a second pass at the first result's brightness")
            smap = _per_pixel_map(second, result)
            result = None  # free the first result before the second pass (24 MP: 0.3 GB)
            result = denoise(model, pixels, smap, tile=tile, overlap=overlap, progress=_pass(progress, 1, 2) if known else progress,
                             precision=precision, ensemble=ensemble)
        return Restored(image.with_pixels(result), smap, summary, estimated, False, fraction, gray_model)

    if realism == 0.0:
        return run(model, sigma, progress, refinable)
    # Realism: the blended generator's fine texture on the fidelity model's tone and colour, from a
    # second pass with the same noise-level map (twice the time).
    textured = run(model, sigma, _pass(progress, 0, 2), refinable)
    base = run(weights.base(gray), textured.noise_map, _pass(progress, 1, 2))
    result = frequency_separation(textured.image.pixels, base.image.pixels)
    result = detail_gain(result, base.image.pixels, textured.noise_map, realism, noisy=None if estimated else pixels)
    # each pass kept the brightness; the texture and the gain added after them must too (a strength far above
    # the photo's noise: a clean photo at realism 1 and strength 100 moved 1.27 levels without this)
    keep_brightness(pixels.float(), result, float(textured.noise_map.float().mean()))
    textured.image = image.with_pixels(result)
    return textured


def _pass(progress: ProgressFn | None, k: int, n: int) -> ProgressFn | None:
    """Progress of pass k of n, reported as a share of all n passes."""
    if progress is None:
        return None
    return lambda done, total: progress(k * total + done, n * total)


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

    def run(t: torch.Tensor, m: torch.Tensor, n: int, pr: ProgressFn | None) -> torch.Tensor:
        # Without the x8 self-ensemble, pass n runs in view n of FOUR_VIEWS: the passes' average is then a
        # self-ensemble over 4 flips/rotations at no extra cost.
        k, flip = (0, False) if kwargs.get("ensemble") else FOUR_VIEWS[n % len(FOUR_VIEWS)]
        return unview(denoise(model, view(t, k, flip), view(m, k, flip), progress=pr, **kwargs), k, flip)

    for n, (i, j) in enumerate(subs):
        sub = x[..., i::stride, j::stride]
        if given is None:
            sub_map, summary = blind(sub, None if alpha is None else alpha[..., i::stride, j::stride])
        else:
            sub_map = given[..., i::stride, j::stride]
            summary = float(sub_map.mean())
        out[..., i::stride, j::stride] = run(sub, sub_map, n, _pass(progress, n, 2 * len(subs)))
        smap[..., i::stride, j::stride] = sub_map
        summaries.append(summary)
    summary = float(np.mean(summaries))
    if sigma is None:
        log.info("estimated noise level at pixel-shuffle stride %d: sigma = %.2f", stride, summary)
    refined, refill = torch.zeros_like(out), out.clone()
    for n, (i, j) in enumerate(subs):  # PD refinement: one sub-image noisy again, the whole denoised at stride 1
        refill[..., i::stride, j::stride] = x[..., i::stride, j::stride]
        refined += run(refill, smap / stride, n, _pass(progress, len(subs) + n, 2 * len(subs)))
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
