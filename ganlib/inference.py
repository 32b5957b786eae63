"""The one inference entry point: tensors in, tensors out, any size through overlapping tiles.

`denoise(model, noisy, sigma)` is what the CLI, the training validation, the benchmark, the demo and
the tests call. Noise levels given here are on the 0-255 scale (a number, or a (N,1,H,W) map);
None means "estimate it from the image". `denoise_image(weights, image)` is the same on a loaded
`ImageData` (alpha, bit depth, ICC profile kept) with the fidelity/GAN blend chosen by `realism`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from .models import Generator, NoiseEstimator

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


def estimate_sigma(image: torch.Tensor, estimator: NoiseEstimator | None = None, *, tile: int = 1024, max_tiles: int = 8) -> float:
    """Estimate the noise level (0-255 scale) of a (1,C,H,W) image.

    With a trained `estimator` (`Weights.estimator`): the mean of its noise-level map, over at most
    `max_tiles` evenly spread tiles of `tile` pixels (bounded time and memory on huge photos). It is
    trained on the same noise as the generator, JPEG-compressed camera noise included. Without one:
    the wavelet MAD estimate of scikit-image, which assumes white Gaussian noise and so reads much
    too low on JPEG photos and too high on fine texture.
    """
    if estimator is not None:
        return _estimate_with(estimator, image, tile, max_tiles)
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


@torch.no_grad()
def _estimate_with(estimator: NoiseEstimator, image: torch.Tensor, tile: int, max_tiles: int) -> float:
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        raise ValueError(f"expected one image of shape (1,C,H,W) with 1 or 3 channels, got {tuple(image.shape)}")
    if tile < 1 or max_tiles < 1:
        raise ValueError(f"tile and max_tiles must be >= 1, got {tile} and {max_tiles}")
    x = image.float()
    want = estimator.config.channels
    if x.shape[1] != want:
        x = x.expand(-1, want, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    boxes = [(y, x0) for y in range(0, h, tile) for x0 in range(0, w, tile)]
    if len(boxes) > max_tiles:
        boxes = [boxes[round(i * (len(boxes) - 1) / (max_tiles - 1))] for i in range(max_tiles)] if max_tiles > 1 else boxes[len(boxes) // 2 : len(boxes) // 2 + 1]
    param = next(estimator.parameters())
    total, count = 0.0, 0
    for y, x0 in boxes:
        smap = estimator(x[..., y : y + tile, x0 : x0 + tile].to(param))
        total += float(smap.double().sum())
        count += smap.numel()
    sigma = total / count * 255.0
    return sigma if math.isfinite(sigma) else 0.0


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
    if channels != want:
        out = out.mean(dim=1, keepdim=True) if channels == 1 else out.expand(-1, 3, -1, -1).contiguous()
    return out.to(noisy.device)


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
) -> ImageData:
    """Denoise a loaded image with `weights.generator(realism)`; returns a new ImageData with the same
    metadata (alpha, bit depth, ICC profile, name). sigma, precision and ensemble as in `denoise`;
    sigma None is estimated with `weights.estimator` when the weights have one (see `estimate_sigma`)."""
    model = weights.generator(realism)
    if sigma is None:
        sigma = estimate_sigma(image.pixels, weights.estimator)
        log.info("estimated noise level: sigma = %.2f", sigma)
    result = denoise(model, image.pixels, sigma, tile=tile, overlap=overlap, progress=progress, precision=precision, ensemble=ensemble)
    return image.with_pixels(result)
