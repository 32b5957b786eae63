"""PSNR, SSIM and the detail ratio on small synthetic images."""

import math

import pytest
import torch

from ganlib.metrics import detail_ratio, psnr, ssim
from ganlib.noise import add_noise


def _photo(seed: int = 0, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_psnr_matches_its_definition():
    clean = _photo()
    shifted = (clean + 0.01).clamp(0, 1)
    mse = float(((shifted - clean) ** 2).mean())
    assert psnr(shifted, clean) == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)


def test_ssim_is_one_on_identical_and_lower_on_noisy():
    clean = _photo()
    assert ssim(clean, clean) == pytest.approx(1.0)
    assert ssim(add_noise(clean, "gaussian", seed=0, sigma=25), clean) < 0.9


def test_detail_ratio_orders_smoothed_identical_and_noisy():
    clean = _photo(1)
    blurred = torch.nn.functional.avg_pool2d(clean, 5, stride=1, padding=2, count_include_pad=False)
    noisy = add_noise(clean, "gaussian", seed=0, sigma=15)
    assert detail_ratio(clean, clean) == pytest.approx(1.0)
    assert detail_ratio(blurred, clean) < 0.9
    assert detail_ratio(noisy, clean) > 1.5


def test_metrics_reject_mismatched_or_flat_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(_photo(size=64), _photo(size=32))
    with pytest.raises(ValueError, match="batch"):
        ssim(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="flat"):
        detail_ratio(_photo(), torch.full((1, 3, 64, 64), 0.5))
