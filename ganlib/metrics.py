"""Image quality metrics on ganlib's tensor convention: PSNR and SSIM (scikit-image), and a detail ratio."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _arr(image: torch.Tensor) -> np.ndarray:
    t = image.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    return t.permute(1, 2, 0).numpy().astype(np.float64)


def _pair(result: torch.Tensor, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a, b = _arr(result), _arr(reference)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return np.clip(a, 0, 1), b


def psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of a (1,C,H,W) result against its reference, both in [0, 1] (result clipped first)."""
    a, b = _pair(result, reference)
    return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(result: torch.Tensor, reference: torch.Tensor) -> float:
    """SSIM (Gaussian window, as in Wang et al. 2004) of a (1,C,H,W) result against its reference."""
    a, b = _pair(result, reference)
    return float(
        structural_similarity(b, a, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )


def detail_ratio(result: torch.Tensor, reference: torch.Tensor) -> float:
    """How much fine detail a (1,C,H,W) result keeps: mean gradient magnitude of its luminance over
    the reference's (1.0 = as much as the clean photo; below 1 = smoothed; above 1 = extra texture,
    residual noise or artefacts). A texture measure to read beside PSNR, not a quality score alone."""
    a, b = _pair(result, reference)

    def grad(x: np.ndarray) -> float:
        y = x.mean(axis=-1)
        gy, gx = np.diff(y, axis=0)[:, :-1], np.diff(y, axis=1)[:-1, :]
        return float(np.sqrt(gx * gx + gy * gy).mean())

    denom = grad(b)
    if denom == 0.0:
        raise ValueError("the reference image is flat: its detail ratio is undefined")
    return grad(a) / denom
