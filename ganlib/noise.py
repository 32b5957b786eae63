"""Pure, seeded noise synthesis: gaussian, poisson, salt & pepper, speckle and camera-like noise.

Every function takes the image (float32 NCHW or CHW in [0, 1]) and an explicit `seed` or
`torch.Generator`; none touches global random state. `noise_std_map` gives the per-pixel standard
deviation of each kind (the noise-level map the generator is conditioned on during training).

Parameters and their scales:
- gaussian:    sigma      standard deviation on the 0-255 scale
- poisson:     peak       photon count at full white (lower = noisier)
- salt_pepper: amount     fraction of pixels replaced, in [0, 1]; salt_ratio: share of white ones;
               whole_pixel: False = impulses hit each channel independently, True = all channels of a
               pixel together (a white or black pixel)
- speckle:     sigma      std of the multiplicative factor (out = x * (1 + sigma * n)), e.g. 0.1-0.5
- camera:      peak, sigma, quality: Poisson-Gaussian noise in linear light (shot noise with `peak`
               photons at white, read noise `sigma` on the 0-255 scale), sRGB gamma, 8-bit
               quantisation, then optional JPEG compression at `quality` (1-100, None = none)
"""

from __future__ import annotations

import io
import math
import numbers

import numpy as np
import torch
from PIL import Image

KINDS = ("gaussian", "poisson", "salt_pepper", "speckle", "camera")
DEFAULTS: dict[str, dict[str, float | None]] = {
    "gaussian": {"sigma": 25.0},
    "poisson": {"peak": 30.0},
    "salt_pepper": {"amount": 0.05, "salt_ratio": 0.5, "whole_pixel": False},
    "speckle": {"sigma": 0.2},
    "camera": {"peak": 200.0, "sigma": 2.0, "quality": None},
}


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    if seed is None:
        raise ValueError("give an explicit seed or generator: noise never uses global randomness")
    return torch.Generator().manual_seed(int(seed))


def _params(kind: str, params: dict) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(KINDS)}")
    unknown = set(params) - set(DEFAULTS[kind])
    if unknown:
        raise ValueError(f"noise kind {kind!r} takes {sorted(DEFAULTS[kind])}, not {sorted(unknown)}")
    p = {**DEFAULTS[kind], **{k: v for k, v in params.items() if v is not None}}
    for name in ("sigma", "peak", "amount", "salt_ratio"):
        if name in p and not (isinstance(p[name], numbers.Real) and not isinstance(p[name], bool) and math.isfinite(p[name])):
            raise ValueError(f"{name} must be a finite number, got {p[name]!r}")
    if p.get("sigma", 0) < 0:
        raise ValueError(f"sigma must be >= 0, got {p['sigma']}")
    if "peak" in p and p["peak"] <= 0:
        raise ValueError(f"peak must be > 0 (photons at full white), got {p['peak']}")
    for name in ("amount", "salt_ratio"):
        if name in p and not 0 <= p[name] <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {p[name]}")
    if "whole_pixel" in p and not isinstance(p["whole_pixel"], (bool, np.bool_)) and p["whole_pixel"] not in (0, 1):
        raise ValueError(f"whole_pixel must be True or False, got {p['whole_pixel']!r}")
    q = p.get("quality")
    if q is not None and not (isinstance(q, numbers.Real) and math.isfinite(q) and q == int(q) and 1 <= q <= 100):
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {q}")
    return p


def _check_image(image: torch.Tensor) -> None:
    if (not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() not in (3, 4)
            or image.shape[-3] not in (1, 3)):
        shape = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected a float tensor (C,H,W) or (N,C,H,W) with 1 or 3 channels, got {shape}")


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve undone (IEC 61966-2-1): values in [0, 1] to linear light in [0, 1]."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def srgb_slope(x: torch.Tensor) -> torch.Tensor:
    """Derivative of the sRGB transfer curve (IEC 61966-2-1) with respect to linear light, at linear
    values `x` in [0, 1]: how much a small linear-light noise is scaled on its way to 8-bit sRGB."""
    return torch.where(x <= 0.0031308, torch.full_like(x, 12.92), 1.055 / 2.4 * x.clamp_min(0.0031308) ** (1 / 2.4 - 1))


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of each image (4:2:0 chroma like most cameras); deterministic."""
    out = []
    for img in image.reshape(-1, *image.shape[-3:]):
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
        out.append(torch.from_numpy(back.reshape(arr.shape)).permute(2, 0, 1))
    return torch.stack(out).reshape(image.shape)


def add_noise(
    image: torch.Tensor,
    kind: str,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    clip: bool = True,
    quantize: bool = False,
    **params: float | None,
) -> torch.Tensor:
    """Return a noisy copy of `image` (float32 (N,)C,H,W in [0, 1]); the input is not modified.

    clip=True keeps the output in [0, 1] (as a saved photo is); quantize=True also rounds it to 8 bits.
    clip=False is only meaningful for gaussian noise (the literature's floating-point protocol).
    """
    _check_image(image)
    p = _params(kind, params)
    g = _generator(seed, generator)
    x = image.float()
    if kind == "gaussian":
        y = x + torch.randn(x.shape, generator=g) * (p["sigma"] / 255.0)
    elif kind == "poisson":
        y = torch.poisson(x.clamp(0, 1) * p["peak"], generator=g) / p["peak"]
    elif kind == "salt_pepper":
        shape = (*x.shape[:-3], 1, *x.shape[-2:]) if p["whole_pixel"] else x.shape
        u = torch.rand(shape, generator=g)
        salt = torch.rand(shape, generator=g) < p["salt_ratio"]
        y = torch.where(u < p["amount"], salt.float(), x)
    elif kind == "speckle":
        y = x * (1 + p["sigma"] * torch.randn(x.shape, generator=g))
    else:  # camera
        lin = srgb_to_linear(x.clamp(0, 1))
        shot = torch.poisson(lin * p["peak"], generator=g) / p["peak"]
        read = torch.randn(x.shape, generator=g) * (p["sigma"] / 255.0)
        y = _linear_to_srgb(shot + read)
        y = (y * 255).round() / 255
        if p["quality"] is not None:
            y = _jpeg(y, int(p["quality"]))
    if clip or kind != "gaussian":
        y = y.clamp(0, 1)
    if quantize:
        y = (y * 255).round() / 255
    return y


def noise_std_map(image: torch.Tensor, kind: str, **params: float | None) -> torch.Tensor:
    """Per-pixel standard deviation of the noise `add_noise` adds (on the [0, 1] scale), averaged
    over channels: a (N,1,H,W) (or (1,H,W)) noise-level map for conditioning the generator."""
    _check_image(image)
    p = _params(kind, params)
    x = image.float().clamp(0, 1)
    if kind == "gaussian":
        std = torch.full_like(x, p["sigma"] / 255.0)
    elif kind == "poisson":
        std = (x / p["peak"]).sqrt()
    elif kind == "salt_pepper":
        s = p["salt_ratio"]
        std = (p["amount"] * (s * (1 - x) ** 2 + (1 - s) * x**2)).sqrt()  # before impulse removal
    elif kind == "speckle":
        std = p["sigma"] * x
    else:  # camera: propagate the linear-light std through the sRGB curve (first-order)
        lin = srgb_to_linear(x)
        std_lin = (lin / p["peak"] + (p["sigma"] / 255.0) ** 2).sqrt()
        std = (srgb_slope(lin) * std_lin).clamp(max=0.5)
    return std.mean(dim=-3, keepdim=True)


def informed_noise_map(clean: torch.Tensor, kind: str, **params: float | None) -> torch.Tensor:
    """The exact noise-level map, on the 0-255 scale, of noise that `add_noise` added to `clean`:
    (1,1,H,W) for a (1,C,H,W) image. Passing it as `sigma` is informed (non-blind) denoising.

    For salt & pepper the impulses are removed first by a switching median (`ganlib.impulse`) and the
    network only refines the pixels it replaced: the map is then the strength of that refinement
    (`ganlib.impulse.refine_sigma`: per-channel or whole-pixel impulses)."""
    if kind == "salt_pepper":
        from .impulse import refine_sigma

        p = _params(kind, params)
        _check_image(clean)
        return torch.full((*clean.shape[:-3], 1, *clean.shape[-2:]), refine_sigma(1.0 if p["whole_pixel"] or clean.shape[-3] == 1 else 0.0), dtype=torch.float32)
    return noise_std_map(clean, kind, **params) * 255.0
