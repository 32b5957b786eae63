"""Compare every noise kind on one photo: what the demo's noise lab and the benchmark both show.

`compare_kinds(weights, clean)` adds each kind of noise (clipped and 8-bit, as a saved photo is) at
the given levels, denoises it (informed by the exact noise-level map, or blind), and measures
PSNR/SSIM of the noisy and the denoised image against the clean one. Images: float32 (1,C,H,W) in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .images import ImageData
from .inference import restore
from .metrics import psnr, ssim
from .noise import DEFAULTS, KINDS, add_noise, informed_noise_map


@dataclass
class KindComparison:
    """One noise kind on one photo. noisy/denoised: (1,C,H,W) in [0, 1]; noise_map: (1,1,H,W) on the
    0-255 scale (what conditioned the network); PSNR in dB, SSIM in [0, 1]; seconds: denoising time."""

    kind: str
    params: dict
    noisy: torch.Tensor
    denoised: torch.Tensor
    noise_map: torch.Tensor
    psnr_noisy: float
    psnr_denoised: float
    ssim_noisy: float
    ssim_denoised: float
    seconds: float
    informed: bool = True
    impulses: bool = False
    notes: list[str] = field(default_factory=list)


def most_textured_window(pixels: torch.Tensor, side: int) -> tuple[int, int]:
    """Top-left (y, x) of the side x side window of a (1,C,H,W) image with the most gradient energy
    (grass, fur, fabric): where denoisers differ most, for side-by-side crops."""
    h, w = pixels.shape[-2:]
    side = max(1, min(side, h, w))
    g = pixels.float().mean(1, keepdim=True)
    energy = torch.zeros_like(g)
    energy[..., 1:, :] += (g[..., 1:, :] - g[..., :-1, :]).abs()
    energy[..., :, 1:] += (g[..., :, 1:] - g[..., :, :-1]).abs()
    stride = max(1, side // 4)
    pooled = torch.nn.functional.avg_pool2d(energy, side, stride=stride)
    idx = int(pooled.flatten().argmax())
    return (idx // pooled.shape[-1]) * stride, (idx % pooled.shape[-1]) * stride


def crop_for_compare(pixels: torch.Tensor, max_side: int = 512) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Centred crop of a (1,C,H,W) image to at most max_side x max_side: (crop, (y, x, h, w)) in pixels.
    Comparing five kinds on a large photo works on such a crop rather than on a silent downscale."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = pixels.shape[-2:]
    ch, cw = min(h, max_side), min(w, max_side)
    y, x = (h - ch) // 2, (w - cw) // 2
    return pixels[..., y : y + ch, x : x + cw], (y, x, ch, cw)


def compare_kinds(
    weights,
    clean: torch.Tensor,
    *,
    levels: dict[str, dict] | None = None,
    seed: int = 0,
    realism: float = 0.0,
    precision: str = "auto",
    informed: bool = True,
    kinds: tuple[str, ...] = KINDS,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[KindComparison]:
    """Each kind of `kinds` added to `clean` ((1,C,H,W) in [0, 1]) at `levels[kind]` (missing kinds and
    parameters take `ganlib.noise.DEFAULTS`), clipped and rounded to 8 bits, then denoised with
    `restore`: informed=True passes the exact noise-level map (`informed_noise_map`; for salt & pepper
    the impulses are removed first), informed=False estimates it. The noise of every kind is seeded by
    `seed`. progress(done, total, kind) is called after each kind. Raises ValueError for an unknown kind
    or parameter (from `add_noise`)."""
    levels = levels or {}
    out = []
    for i, kind in enumerate(kinds):
        params = {**DEFAULTS[kind], **(levels.get(kind) or {})}
        noisy = add_noise(clean, kind, seed=seed, clip=True, quantize=True, **params)
        t0 = time.perf_counter()
        sigma = informed_noise_map(clean, kind, **params) if informed else None
        impulses = (kind == "salt_pepper") if informed else None
        res = restore(weights, ImageData(pixels=noisy), sigma=sigma, impulses=impulses, realism=realism, precision=precision)
        seconds = time.perf_counter() - t0
        den = res.image.pixels
        out.append(KindComparison(kind, params, noisy, den, res.noise_map, psnr(noisy, clean), psnr(den, clean),
                                  ssim(noisy, clean), ssim(den, clean), seconds, informed, res.impulses))
        if progress:
            progress(i + 1, len(kinds), kind)
    return out
