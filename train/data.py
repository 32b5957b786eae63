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

from ganlib.camera import camera_noise_std_map, sample_camera_params, simulate_camera
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
    # sigma = lo + (hi - lo) * u**sigma_power, u uniform: 1 = uniform; above 1 puts more samples at low
    # levels (1.5: 1.14x as many near sigma 15 of 75, 0.76x near 50), where most uploads are
    sigma_power: float = 1.0
    peak: tuple[float, float] = (5.0, 200.0)  # poisson photons at white (sampled log-uniformly)
    speckle: tuple[float, float] = (0.02, 0.4)
    camera_peak: tuple[float, float] = (20.0, 1000.0)
    camera_read: tuple[float, float] = (0.5, 8.0)
    jpeg_prob: float = 0.5  # camera noise followed by JPEG (quality 60-95)
    amount: tuple[float, float] = (0.005, 0.15)  # salt & pepper
    clip_prob: float = 0.5  # clip + round to 8 bits, as an uploaded photo is
    clean_prob: float = 0.0  # samples left clean (noise level 0): the estimator must learn that clean photos exist
    # "real" in `mix`: the unprocessing camera pipeline of ganlib.camera (demosaicing, colour matrix,
    # tone curve, JPEG); the target is that camera's noise-free rendering.
    real_jpeg_prob: float = 0.5
    real_shot: tuple[float, float] = (1e-4, 1.2e-2)  # shot-noise range (Brooks et al. 2019)
    real_nr_prob: float = 0.0  # share of "real" samples with in-camera noise reduction + sharpening (blotchy noise)
    # Share of all samples that are "real" camera noise as `restore(stride=2)` sees a camera photo: rendered on
    # a crop of twice the side, then one of its 2x2 pixel-shuffled sub-images (Zhou et al. 2020, "When AWGN-based
    # denoiser meets real noises"), to train a generator for the camera-photo mode (tried in session 25, not shipped:
    # docs/history.md). Needs min_size >= 2 crop.
    real_stride_prob: float = 0.0
    gray_prob: float = 0.0  # samples turned to gray (luma in all 3 channels) with channel-identical noise
    over_prob: float = 0.0  # samples whose noise-level map overstates the noise (x U(1, over_scale) + U(0, over_add))
    over_scale: float = 2.0
    over_add: float = 40.0  # 0-255 scale


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


def list_folders(roots: str, min_size: int, channels: int = 3) -> list[Path]:
    """`list_images` over one folder or several separated by commas ("a,b")."""
    paths: list[Path] = []
    for root in [r.strip() for r in str(roots).split(",") if r.strip()]:
        paths += list_images(root, min_size, channels)
    return paths


def auto_val_count(n: int) -> int:
    """Default validation hold-out: 8% of the images (at least 1, at most 300), leaving at least one
    image to train on; 0 when the folder has a single image (validation then reuses it)."""
    if n < 2:
        return 0
    return max(1, min(300, round(0.08 * n), n - 1))


def split(paths: list[Path], val_count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Reproducible train/validation split of one folder. val_count 0 = `auto_val_count`."""
    if val_count == 0:
        val_count = auto_val_count(len(paths))
        if val_count == 0:
            log.warning("only %d image: training and validating on it (add images for a real validation)", len(paths))
            return list(paths), list(paths)
        log.info("holding back %d of %d images for validation (--val-count to change)", val_count, len(paths))
    if not 0 < val_count < len(paths):
        raise ValueError(
            f"cannot hold back {val_count} of {len(paths)} images for validation: use --val-count below {len(paths)} "
            f"(0 = automatic, {auto_val_count(len(paths))} here) or --val-data with a separate folder")
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:val_count])
    train = sorted(paths[i] for i in order[val_count:])
    return train, val


def _uniform(g: torch.Generator, lo: float, hi: float, log_scale: bool = False, power: float = 1.0) -> float:
    """One draw in [lo, hi] from `g`: uniform, log-uniform (log_scale), or lo + (hi - lo) * u**power
    (power above 1 leans towards lo; power 1 is the uniform draw, value for value)."""
    u = float(torch.rand((), generator=g))
    if log_scale:
        return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
    return lo + u**power * (hi - lo)


def _gray(clean: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R BT.601) of a (3,H,W) crop, in all three channels."""
    y = (clean * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return y.expand_as(clean).contiguous()


def sample_noise(clean: torch.Tensor, cfg: NoiseConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target, noisy, noise-level map) for a (C,H,W) clean crop: the map is (1,H,W), 0-1 scale.

    The target is the crop itself, except for "real" camera noise (its noise-free rendering) and for
    gray samples (the crop's luma in every channel, with the same noise in every channel)."""
    if cfg.clean_prob > 0 and float(torch.rand((), generator=g)) < cfg.clean_prob:  # no draw at 0: old streams unchanged
        return clean, clean.clone(), _overstate(torch.zeros(1, *clean.shape[-2:]), cfg, g)
    if cfg.gray_prob > 0 and clean.shape[0] == 3 and float(torch.rand((), generator=g)) < cfg.gray_prob:
        gray = _gray(clean)[:1]
        target, noisy, smap = sample_noise(gray, _no_real(cfg), g)
        return target.expand(3, -1, -1).contiguous(), noisy.expand(3, -1, -1).contiguous(), smap
    kinds, weights = zip(*cfg.mix.items())
    kind = kinds[int(torch.multinomial(torch.tensor(weights, dtype=torch.float), 1, generator=g))]
    if kind == "real":
        target, noisy, smap = _real_camera_sample(clean, cfg, g)
        return target, noisy, _overstate(smap, cfg, g)
    if kind == "gaussian":
        params = {"sigma": _uniform(g, *cfg.sigma, power=cfg.sigma_power)}
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
    return clean, noisy, _overstate(noise_std_map(clean, kind, **params), cfg, g)


def camera_sample(clean: torch.Tensor, g: torch.Generator, *, jpeg_prob: float, shot_range: tuple[float, float], nr_prob: float,
                  draws: int = 3, map_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise-free rendering, noisy, (1,H,W) noise-level map 0-1) of one shot of the camera pipeline
    (`ganlib.camera`) with parameters drawn from `g`; the map is measured over `draws` draws seeded by
    `map_seed` (None: drawn from `g`)."""
    params = sample_camera_params(g, jpeg_prob=jpeg_prob, shot_range=shot_range, nr_prob=nr_prob)
    noisy, target = simulate_camera(clean, params, generator=g)
    if map_seed is None:
        map_seed = int(torch.randint(2**31, (), generator=g))
    return target, noisy, camera_noise_std_map(clean, params, seed=map_seed, draws=draws)


def _real_camera_sample(clean: torch.Tensor, cfg: NoiseConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`camera_sample` with the mixture's settings for the "real" kind."""
    return camera_sample(clean, g, jpeg_prob=cfg.real_jpeg_prob, shot_range=tuple(cfg.real_shot), nr_prob=cfg.real_nr_prob)


def shuffled_camera_sample(clean: torch.Tensor, cfg: NoiseConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target, noisy, map) of one 2x2 pixel-shuffled sub-image (half the side of the (C,H,W) `clean`) of a
    "real" camera-pipeline rendering: the spatially correlated noise that pixel-shuffle downsampling leaves."""
    target, noisy, smap = _real_camera_sample(clean, cfg, g)
    i, j = (int(v) for v in torch.randint(2, (2,), generator=g))
    target, noisy, smap = (t[..., i::2, j::2].contiguous() for t in (target, noisy, smap))
    return target, noisy, _overstate(smap, cfg, g)


def _no_real(cfg: NoiseConfig) -> NoiseConfig:
    """The mixture without the colour-only "real" camera kind and without a second gray draw."""
    from dataclasses import replace

    mix = {k: v for k, v in cfg.mix.items() if k != "real"} or {"gaussian": 1.0}
    return replace(cfg, mix=mix, gray_prob=0.0, clean_prob=0.0)


def _overstate(smap: torch.Tensor, cfg: NoiseConfig, g: torch.Generator) -> torch.Tensor:
    """With probability over_prob, a map stronger than the noise: a denoiser told too much must still
    keep brightness and colour (users set strength by hand, estimates run high)."""
    if cfg.over_prob <= 0 or float(torch.rand((), generator=g)) >= cfg.over_prob:
        return smap
    return smap * _uniform(g, 1.0, cfg.over_scale) + _uniform(g, 0.0, cfg.over_add) / 255.0


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
        """(target, noisy, noise-level map) of sample `index`."""
        state = np.random.SeedSequence([self.seed, int(index)]).generate_state(2)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        shuffled = self.noise.real_stride_prob > 0 and float(torch.rand((), generator=g)) < self.noise.real_stride_prob
        side = 2 * self.crop if shuffled else self.crop  # no draw at 0: old streams unchanged
        i = int(torch.randint(len(self.paths), (), generator=g))
        img = self.cache[i] if self.cache is not None else self._load(self.paths[i])
        _, h, w = img.shape
        if shuffled and min(h, w) < side:
            raise ValueError(f"{self.paths[i]} is {w}x{h}: real_stride_prob needs photos of at least {side} pixels (set min_size to {side})")
        y = int(torch.randint(h - side + 1, (), generator=g))
        x = int(torch.randint(w - side + 1, (), generator=g))
        crop = img[:, y : y + side, x : x + side].float() / 255.0
        k, flip = int(torch.randint(4, (), generator=g)), bool(torch.randint(2, (), generator=g))
        crop = torch.rot90(crop, k, dims=(1, 2))
        if flip:
            crop = crop.flip(2)
        crop = crop.contiguous()
        return shuffled_camera_sample(crop, self.noise, g) if shuffled else sample_noise(crop, self.noise, g)


def real_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, noisy, ground truth) for each `NAME_real.*` beside a `NAME_mean.*` in `folder` (a real-noise
    set such as CC15), sorted by name. Raises FileNotFoundError / ValueError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"real-noise folder not found: {folder}")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = [(stem[: -len("_real")], p, files[stem[: -len("_real")] + "_mean"]) for stem, p in sorted(files.items())
             if stem.endswith("_real") and stem[: -len("_real")] + "_mean" in files]
    if not pairs:
        raise ValueError(f"no NAME_real / NAME_mean image pairs in {folder}")
    return pairs


def load_validation(paths: list[Path], max_side: int | None = None, gray: bool = False) -> list[torch.Tensor]:
    """Validation images as (1,3,H,W) tensors, optionally centre-cropped to max_side; gray=True gives
    their luma as (1,1,H,W) (the validation of a generator for gray photos: the noise added to them is
    then the same in every channel, as in gray training samples)."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            t = to_tensor(im.convert("RGB"))
        if gray:
            t = _gray(t[0])[None, :1]
        if max_side:
            h, w = t.shape[-2:]
            y, x = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
            t = t[..., y : y + max_side, x : x + max_side]
        out.append(t)
    return out
