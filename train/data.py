"""Training data: a folder of clean photos, random crops with flips/rotations, noise synthesised on
the fly with `ganlib.noise`.

Every sample is a pure function of (seed, sample index): the crop, the augmentation, the noise kind,
its level and the noise itself all come from a generator seeded by that pair. Batches are therefore
identical whatever the number of loader workers or processes, and resuming at step S only needs S.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ganlib.images import to_tensor
from ganlib.noise import add_noise, noise_std_map

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class NoiseConfig:
    """The mixture of noise kinds and levels seen in training."""

    mix: dict[str, float] = field(
        default_factory=lambda: {"gaussian": 0.75, "poisson": 0.0625, "speckle": 0.0625, "camera": 0.0625, "salt_pepper": 0.0625}
    )
    sigma: tuple[float, float] = (0.0, 60.0)  # gaussian, 0-255 scale
    peak: tuple[float, float] = (5.0, 200.0)  # poisson photons at white (sampled log-uniformly)
    speckle: tuple[float, float] = (0.02, 0.4)
    camera_peak: tuple[float, float] = (20.0, 1000.0)
    camera_read: tuple[float, float] = (0.5, 8.0)
    jpeg_prob: float = 0.5  # camera noise followed by JPEG (quality 60-95)
    amount: tuple[float, float] = (0.005, 0.15)  # salt & pepper
    clip_prob: float = 0.5  # clip + round to 8 bits, as an uploaded photo is
    clean_prob: float = 0.0  # samples left clean (noise level 0): the estimator must learn that clean photos exist


def list_images(root: str | Path, min_size: int, channels: int = 3) -> list[Path]:
    """Image files under `root` (recursive) with `channels` channels and both sides >= min_size.

    Logs once what was skipped and why."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    kept, skipped, examples = [], Counter(), {}
    want_modes = {"RGB"} if channels == 3 else {"L", "I;16", "I"}
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
        except (UnidentifiedImageError, OSError) as err:
            reason = "unreadable"
            examples.setdefault(reason, f"{path.name}: {err}")
        else:
            if mode not in want_modes:
                reason = f"not {channels}-channel (mode {mode})"
            elif min(w, h) < min_size:
                reason = f"smaller than {min_size}x{min_size}"
            else:
                kept.append(path)
                continue
            examples.setdefault(reason, f"{path.name} ({w}x{h}, {mode})")
        skipped[reason] += 1
    for reason, n in skipped.items():
        log.warning("skipped %d image(s) in %s: %s (e.g. %s)", n, root, reason, examples[reason])
    log.info("using %d image(s) from %s", len(kept), root)
    if not kept:
        raise ValueError(f"no usable images in {root}: need {channels}-channel images at least {min_size}x{min_size}")
    return kept


def split(paths: list[Path], val_count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Reproducible train/validation split of one folder."""
    if not 0 < val_count < len(paths):
        raise ValueError(f"cannot hold back {val_count} of {len(paths)} images for validation")
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:val_count])
    train = sorted(paths[i] for i in order[val_count:])
    return train, val


def _uniform(g: torch.Generator, lo: float, hi: float, log_scale: bool = False) -> float:
    u = float(torch.rand((), generator=g))
    if log_scale:
        return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
    return lo + u * (hi - lo)


def sample_noise(clean: torch.Tensor, cfg: NoiseConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy version of a (C,H,W) clean crop and its (1,H,W) noise-level map (0-1 scale)."""
    if cfg.clean_prob > 0 and float(torch.rand((), generator=g)) < cfg.clean_prob:  # no draw at 0: old streams unchanged
        return clean.clone(), torch.zeros(1, *clean.shape[-2:])
    kinds, weights = zip(*cfg.mix.items())
    kind = kinds[int(torch.multinomial(torch.tensor(weights, dtype=torch.float), 1, generator=g))]
    if kind == "gaussian":
        params = {"sigma": _uniform(g, *cfg.sigma)}
    elif kind == "poisson":
        params = {"peak": _uniform(g, *cfg.peak, log_scale=True)}
    elif kind == "speckle":
        params = {"sigma": _uniform(g, *cfg.speckle)}
    elif kind == "salt_pepper":
        params = {"amount": _uniform(g, *cfg.amount), "salt_ratio": _uniform(g, 0.2, 0.8)}
    else:
        params = {"peak": _uniform(g, *cfg.camera_peak, log_scale=True), "sigma": _uniform(g, *cfg.camera_read)}
        if float(torch.rand((), generator=g)) < cfg.jpeg_prob:
            params["quality"] = int(_uniform(g, 60, 95))
    clipped = float(torch.rand((), generator=g)) < cfg.clip_prob
    noisy = add_noise(clean, kind, generator=g, clip=clipped, quantize=clipped, **params)
    return noisy, noise_std_map(clean, kind, **params)


class CropDataset(torch.utils.data.Dataset):
    """Sample i = (clean crop, noisy crop, noise map), a pure function of (seed, i).

    Indexable by any non-negative integer: pair it with an infinite sampler (`range(start, ...)`)."""

    def __init__(self, paths: list[Path], crop: int, noise: NoiseConfig, seed: int, cache: bool = True) -> None:
        self.paths, self.crop, self.noise, self.seed = list(paths), crop, noise, seed
        self.cache = [self._load(p) for p in self.paths] if cache else None

    @staticmethod
    def _load(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()  # uint8 CHW

    def __len__(self) -> int:
        return 2**62  # infinite stream; the sampler decides which indices are drawn

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = np.random.SeedSequence([self.seed, int(index)]).generate_state(2)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        i = int(torch.randint(len(self.paths), (), generator=g))
        img = self.cache[i] if self.cache is not None else self._load(self.paths[i])
        _, h, w = img.shape
        y = int(torch.randint(h - self.crop + 1, (), generator=g))
        x = int(torch.randint(w - self.crop + 1, (), generator=g))
        crop = img[:, y : y + self.crop, x : x + self.crop].float() / 255.0
        k, flip = int(torch.randint(4, (), generator=g)), bool(torch.randint(2, (), generator=g))
        crop = torch.rot90(crop, k, dims=(1, 2))
        if flip:
            crop = crop.flip(2)
        crop = crop.contiguous()
        noisy, smap = sample_noise(crop, self.noise, g)
        return crop, noisy, smap


def load_validation(paths: list[Path], max_side: int | None = None) -> list[torch.Tensor]:
    """Validation images as (1,C,H,W) tensors, optionally centre-cropped to max_side."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            t = to_tensor(im.convert("RGB"))
        if max_side:
            h, w = t.shape[-2:]
            y, x = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
            t = t[..., y : y + max_side, x : x + max_side]
        out.append(t)
    return out
