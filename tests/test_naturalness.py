"""train.naturalness (PIQE from the optional `pyiqa` package): noise and blur score worse than the clean photo."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ganlib.noise import add_noise
from train.naturalness import naturalness

pytest.importorskip("pyiqa", reason="train.naturalness needs the optional package pyiqa (requirements-dev.txt)")


def photo(size: int = 128) -> torch.Tensor:
    """A crop of scikit-image's astronaut photo (shipped inside the scikit-image wheel: no download)."""
    from skimage import data

    a = data.astronaut()[100 : 100 + size, 180 : 180 + size].astype(np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def test_noise_and_blur_score_worse_than_the_clean_photo() -> None:
    """PIQE: lower = better. The clean crop is in MATLAB's 'good' band or better; Gaussian noise
    (sigma 25, 8-bit) and a Gaussian blur (sigma 2) each raise it by far more than any jitter (measured:
    clean 21.6, noisy 56.4, blurred 93.8)."""
    clean = photo()
    noisy = add_noise(clean, "gaussian", sigma=25, seed=0, quantize=True)
    blurred = torch.from_numpy(gaussian_filter(clean.numpy(), sigma=(0, 0, 2, 2)))
    s_clean, s_noisy, s_blur = naturalness(clean), naturalness(noisy), naturalness(blurred)
    assert all(0.0 <= s <= 100.0 for s in (s_clean, s_noisy, s_blur))
    assert s_clean < 35
    assert s_noisy > s_clean + 20
    assert s_blur > s_clean + 20


def test_gray_input_and_bad_shapes() -> None:
    clean = photo()
    gray = 0.299 * clean[:, :1] + 0.587 * clean[:, 1:2] + 0.114 * clean[:, 2:]
    assert naturalness(gray) == pytest.approx(naturalness(clean), abs=2.0)  # pyiqa scores the luma of RGB
    for bad in (clean[0], torch.cat([clean, clean]), clean[:, :2], clean[..., :8, :8], torch.zeros(1, 3, 32, 32)):
        with pytest.raises(ValueError):
            naturalness(bad)
