"""Realism: the GAN stage's texture on the fidelity model's tone, and the fine detail given back.

`restore(..., realism=r)` blends the generator towards the GAN stage (REALISM_GAN_SHARE x r), takes
that result's fine texture over the fidelity result's tone and colour (`frequency_separation`, gated
to textured areas by `texture_gate`), then raises the fidelity result's own fine detail in proportion
to realism and the noise-level map (`detail_gain`). Images are (1,C,H,W) float tensors in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .noise_level import _haar_diagonal, _robust_level

REALISM_TONE_SIGMA = 1.0  # pixels: chosen on held-back CBSD432 photos (see frequency_separation)
REALISM_GATE = 1.0  # 0-255 levels of local detail for the GAN's full texture: chosen on held-back CBSD432 crops
# Realism 1 = network interpolation this far towards the GAN stage (the rest of its detail comes from
# detail_gain): chosen on held-back training photos (see detail_gain).
REALISM_GAN_SHARE = 0.75
REALISM_DETAIL_GAIN = 0.25  # detail_gain's fixed gain (estimated maps) at noise level 25 and realism 1 ...
REALISM_DETAIL_CAP = 0.5  # ... and the most its matched gain (known maps) may be there ...
REALISM_DETAIL_POWER = 1.3  # ... growing as (level / 25) ** power with the noise-level map ...
REALISM_DETAIL_MAX = 1.0  # ... up to this gain


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
