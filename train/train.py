"""Train the denoiser: stage `fidelity` (L1 [+ SSIM]) then stage `gan` (adversarial fine-tuning);
stage `estimator` trains the small noise-level estimator that sets the strength automatically.

    python -m train.train --data DIR --output-dir DIR [--config train/configs/cpu.json] [--stage gan --init DIR]
    python -m train.train --data DIR --output-dir DIR --config train/configs/cpu-estimator.json

Everything is in `TrainConfig`; every field is also a command-line flag (--batch-size 8 ...), the
JSON preset sits under them and the resolved config is saved beside every checkpoint. On CUDA the
generator runs in bf16 autocast; several GPUs work through `torchrun --nproc_per_node N -m train.train`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganlib.images import to_pil
from ganlib.inference import denoise
from ganlib.noise_level import estimate_noise_map, estimate_sigma
from ganlib.metrics import psnr, ssim
from ganlib.models import Discriminator, DiscriminatorConfig, EstimatorConfig, Generator, GeneratorConfig, NoiseEstimator
from ganlib.noise import add_noise, noise_std_map

from .checkpoint import load_state, save_state
from .data import CropDataset, NoiseConfig, camera_sample, list_folders, list_images, load_validation, real_pairs, split

log = logging.getLogger("train")
STAGES = ("fidelity", "gan", "estimator")


@dataclass
class TrainConfig:
    data: str = ""  # folder(s) of clean training photos (recursive; several separated by commas)
    val_data: str = ""  # separate validation folder; empty = hold back val_count images of `data`
    output_dir: str = "runs/default"
    stage: str = "fidelity"  # fidelity | gan | estimator
    init: str = ""  # weights folder to start from (the fidelity model, for stage gan)
    seed: int = 0  # crops, noise and initialisation; the held-back split has its own seed
    split_seed: int = 0  # which images `val_count` holds back: keep it when changing `seed`, or a run trains on earlier runs' validation photos
    crop: int = 256  # random crop side
    min_size: int = 256  # images with a side below this are skipped
    channels: int = 3
    val_count: int = 0  # images of `data` held back for validation; 0 = automatic (8%, at most 300)
    val_real: str = ""  # folder of real noisy photos with ground truth (*_real.png + *_mean.png), validated only
    val_estimator: str = ""  # noise-level estimator folder for the val_real strength (empty = wavelet estimate)
    val_max_side: int = 0  # centre-crop validation images to this side (0 = full images)
    val_gray: bool = False  # validate on the validation images' luma (for a generator of gray photos)
    val_sigmas: list[float] = field(default_factory=lambda: [15.0, 25.0, 50.0])
    batch_size: int = 16
    max_steps: int = 100_000
    lr: float = 1e-3
    lr_min: float = 1e-6
    warmup_steps: int = 500
    schedule: str = "cosine"  # cosine | step (halve at 50%, 75%, 90%)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ssim_weight: float = 0.0  # fidelity loss = L1 + ssim_weight * (1 - SSIM)
    ema_decay: float = 0.999
    # stage estimator: the quantile of the noise level it predicts (0.5 = the median: L1 loss). Above 0.5 it
    # reads high where unsure, as the generator, trained on overstated maps too, loses less to too strong
    # a map than to too weak a one.
    estimator_quantile: float = 0.5
    # stage gan
    d_lr: float = 1e-4
    adv_weight: float = 0.01  # adversarial loss weight against the L1 pixel loss (weight 1)
    adv_warmup: int = 0  # steps over which the adversarial weight ramps up linearly from 0
    gan_loss: str = "hinge"  # hinge | relativistic | nonsaturating
    fm_weight: float = 0.0  # feature-matching loss (L1 between discriminator features of real and fake)
    # R1 penalty on the discriminator's gradient at real pairs (Mescheder et al. 2018, "Which training methods for
    # GANs do actually converge?"): gamma / 2 * E|grad D(real)|^2; 0 = off
    r1_weight: float = 0.0
    pixel_weight: float = 1.0  # weight of the L1 (+ SSIM) pixel loss
    # L1 between 8x8 block means of output and target: the GAN may add texture, not move tone or colour
    # (frequency separation, after Fritsche et al. 2019, "Frequency Separation for Real-World Super-Resolution")
    lowpass_weight: float = 0.0
    # Share of samples conditioned on the estimator's map of the noisy crop (`estimate_noise_map` with
    # `map_estimator`, as automatic strength computes it) instead of the exact one: the generator learns
    # the maps it is given at the automatic strength (issue #12: "the generator on maps like the estimator's").
    estimated_maps: float = 0.0
    map_estimator: str = ""  # NoiseEstimator folder for estimated_maps
    # bookkeeping
    workers: int = 0
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 500
    threads: int = 0  # CPU threads (0 = torch default)
    push_to_hub: str = ""  # repo id to publish the exported generator to
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)


def _coerce(cls: type, values: dict) -> object:
    """Build a (nested) config dataclass from a dict, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {sorted(unknown)}")
    kwargs = {}
    for name, value in values.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        kwargs[name] = _coerce(type(sub()), value) if sub and dataclasses.is_dataclass(sub()) else value
    return cls(**kwargs)


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Defaults < --config JSON preset < command-line flags (one flag per scalar/list field)."""
    parser = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="JSON preset (see train/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint exactly")
    for f in dataclasses.fields(TrainConfig):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            continue  # nested sections come from the JSON preset
        flag = "--" + f.name.replace("_", "-")
        if f.name == "val_sigmas":
            parser.add_argument(flag, type=lambda s: [float(v) for v in s.split(",")], help="comma-separated")
        else:
            parser.add_argument(flag, type=type(f.default), help=f"default {f.default!r}")
    args = parser.parse_args(argv)
    values: dict = {}
    if args.config:
        values = json.loads(Path(args.config).read_text())
    if args.resume and not args.config:
        saved = Path(args.output_dir or TrainConfig.output_dir) / "checkpoint" / "train_config.json"
        if saved.exists():
            values = json.loads(saved.read_text())
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    cfg = _coerce(TrainConfig, values)
    if cfg.stage not in STAGES:
        parser.error(f"--stage must be one of {', '.join(STAGES)}, not {cfg.stage!r}")
    if cfg.stage == "estimator" and cfg.crop % NoiseEstimator.multiple:
        parser.error(f"--stage estimator needs --crop to be a multiple of {NoiseEstimator.multiple}, got {cfg.crop}")
    if not cfg.data:
        parser.error("--data is required (a folder of clean photos)")
    if cfg.noise.real_stride_prob > 0 and cfg.min_size < 2 * cfg.crop:
        parser.error(f"noise.real_stride_prob renders pixel-shuffled samples on crops of twice the side: --min-size must be at least {2 * cfg.crop}")
    return cfg, args


def lr_factor(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return 0.5 ** sum(step >= cfg.max_steps * m for m in (0.5, 0.75, 0.9))
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.lr_min / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - SSIM with an 11x11 Gaussian window (differentiable; the reported metric uses scikit-image)."""
    coords = torch.arange(11, dtype=a.dtype, device=a.device) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = (g / g.sum())[None, None]
    c = a.shape[1]

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, g[..., None, :].expand(c, 1, 1, 11), groups=c)
        return F.conv2d(x, g[..., :, None].expand(c, 1, 11, 1), groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return 1 - s.mean()


def gan_losses(kind: str, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator loss, generator adversarial loss) from patch logits of real and fake pairs.
    For the discriminator loss `fake` must be detached by the caller."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean(), -fake.mean()
    if kind == "nonsaturating":  # Goodfellow et al. 2014, the generator's -log D form
        d = F.binary_cross_entropy_with_logits
        return d(real, torch.ones_like(real)) + d(fake, torch.zeros_like(fake)), d(fake, torch.ones_like(fake))
    if kind == "relativistic":  # RaGAN as in ESRGAN
        d = F.binary_cross_entropy_with_logits
        rf, fr = real - fake.mean(), fake - real.mean()
        d_loss = (d(rf, torch.ones_like(rf)) + d(fr, torch.zeros_like(fr))) / 2
        g_loss = (d(rf, torch.zeros_like(rf)) + d(fr, torch.ones_like(fr))) / 2
        return d_loss, g_loss
    raise ValueError(f"gan_loss must be hinge, relativistic or nonsaturating, not {kind!r}")


def load_real_pairs(folder: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(noisy, ground truth) images of a real-noise folder: each `NAME_real.*` beside its `NAME_mean.*`."""
    from ganlib.images import load_image

    return [(load_image(noisy).pixels, load_image(mean).pixels) for _, noisy, mean in real_pairs(folder)]


def validate_real(model: Generator, pairs: list[tuple[torch.Tensor, torch.Tensor]], estimator: NoiseEstimator | None) -> dict[str, float]:
    """Mean PSNR/SSIM on real noise at the automatic strength (never trained on)."""
    model.eval()
    ps, ss = [], []
    for noisy, clean in pairs:
        den = denoise(model, noisy, estimate_sigma(noisy, estimator))
        ps.append(psnr(den, clean))
        ss.append(ssim(den, clean))
    model.train()
    return {"psnr_real": sum(ps) / len(ps), "ssim_real": sum(ss) / len(ss)}


@torch.no_grad()
def discriminator_accuracy(disc: torch.nn.Module, model: Generator, images: list[torch.Tensor], sigma: float, seed: int,
                           crop: int = 128, relativistic: bool = False) -> float:
    """Share of held-back validation scores the discriminator gets right: clean crops scored > 0 and
    denoised crops scored < 0, or with a relativistic loss above / below the other class's mean score
    (0.5 = it cannot tell them apart)."""
    model.eval()
    disc = disc.module if isinstance(disc, torch.nn.parallel.DistributedDataParallel) else disc
    right, total = 0.0, 0
    for i, clean in enumerate(images):
        clean = clean[..., :crop, :crop]
        noisy = add_noise(clean, "gaussian", seed=seed + i, sigma=sigma, quantize=True)
        p = next(disc.parameters())
        den = denoise(model, noisy, sigma).to(p)
        real, fake = disc(noisy.to(p), clean.to(p)).float(), disc(noisy.to(p), den).float()
        if relativistic:  # only the difference is trained: each score against the other class's mean
            real, fake = real - fake.mean(), fake - real.mean()
        right += float((real > 0).float().sum() + (fake < 0).float().sum())
        total += real.numel() + fake.numel()
    model.train()
    return right / max(1, total)


def validate(model: Generator, images: list[torch.Tensor], sigmas: list[float], seed: int) -> dict[str, float]:
    """Mean PSNR/SSIM per sigma with the literature's protocol (Gaussian noise, seeded, unclipped)."""
    model.eval()
    out: dict[str, float] = {}
    for sigma in sigmas:
        ps, ss = [], []
        for i, clean in enumerate(images):
            noisy = add_noise(clean, "gaussian", seed=seed + i, clip=False, sigma=sigma)
            den = denoise(model, noisy, sigma)
            ps.append(psnr(den, clean))
            ss.append(ssim(den, clean))
        out[f"psnr{sigma:g}"] = sum(ps) / len(ps)
        out[f"ssim{sigma:g}"] = sum(ss) / len(ss)
    model.train()
    return out


# Validation noise for the estimator: what uploads look like (clipped, 8-bit), JPEG camera noise included.
ESTIMATOR_CASES = {
    "clean": ("gaussian", {"sigma": 0.0}),
    "camera": ("camera", {"peak": 30.0, "sigma": 4.0}),
    "camera_jpeg": ("camera", {"peak": 30.0, "sigma": 4.0, "quality": 80}),
}
REAL_CASES = 3  # camera pipelines (ganlib.camera, in-camera noise reduction included) per validation image


def _real_case(clean: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """(noisy, true level 0-255) of one seeded camera-pipeline shot at a low to mid ISO (real photos' range)."""
    _, noisy, smap = camera_sample(clean, torch.Generator().manual_seed(seed), jpeg_prob=0.5, shot_range=(2e-4, 3e-3), nr_prob=0.7,
                                   draws=4, map_seed=seed)
    return noisy, float(smap.mean()) * 255


def validate_estimator(model: NoiseEstimator, images: list[torch.Tensor], sigmas: list[float], seed: int) -> dict[str, float]:
    """Mean absolute error (0-255 scale) of the estimated noise level: Gaussian noise at each sigma and
    camera noise without and with JPEG, all clipped and rounded to 8 bits, and (err_real) the camera
    pipeline of `ganlib.camera` at low to mid ISO. The truth is the mean of the noise-level map that
    the generator is conditioned on."""
    model.eval()
    cases = [("gaussian", {"sigma": s}, f"err{s:g}") for s in sigmas]
    cases += [(kind, params, f"err_{name}") for name, (kind, params) in ESTIMATOR_CASES.items()]
    out: dict[str, float] = {}
    for kind, params, name in cases:
        errs = []
        for i, clean in enumerate(images):
            noisy = add_noise(clean, kind, seed=seed + i, clip=True, quantize=True, **params)
            truth = float(noise_std_map(clean, kind, **params).mean()) * 255
            errs.append(abs(estimate_sigma(noisy, model) - truth))
        out[name] = sum(errs) / len(errs)
    errs = []  # the camera pipeline's colour noise (RGB images only)
    for i, clean in enumerate(img for img in images if img.shape[1] == 3):
        for k in range(REAL_CASES):
            noisy, truth = _real_case(clean, seed + 100 * i + k)
            errs.append(abs(estimate_sigma(noisy, model) - truth))
    if errs:
        out["err_real"] = sum(errs) / len(errs)
    model.train()
    return out


def quantile_loss(pred: torch.Tensor, target: torch.Tensor, quantile: float = 0.5) -> torch.Tensor:
    """Mean pinball loss, scaled so that quantile 0.5 is exactly the L1 loss: under-predictions weigh
    2*quantile, over-predictions 2*(1 - quantile). Above 0.5 the prediction leans high where it is unsure
    (Koenker & Bassett 1978, quantile regression)."""
    d = target - pred
    return (2 * torch.maximum(quantile * d, (quantile - 1) * d)).mean()


def estimator_step(model: NoiseEstimator, opt: torch.optim.Optimizer, noisy: torch.Tensor, smap: torch.Tensor, grad_clip: float, step: int = 0,
                   quantile: float = 0.5) -> torch.Tensor:
    """One step of the estimator: the pinball loss at `quantile` (0.5: L1) between log noise levels, on 4x4
    blocks (its output resolution)."""
    target = torch.log(F.avg_pool2d(smap, 4) + NoiseEstimator.eps)
    loss = quantile_loss(model.log_sigma(noisy), target, quantile)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def save_grid(model: Generator, images: list[torch.Tensor], sigma: float, seed: int, path: Path, n: int = 4) -> None:
    """PNG grid, one row per image: noisy | denoised | clean."""
    model.eval()
    rows = []
    for i, clean in enumerate(images[:n]):
        side = min(clean.shape[-2], clean.shape[-1], 192)
        clean = clean[..., :side, :side]
        noisy = add_noise(clean, "gaussian", seed=seed + i, sigma=sigma)
        rows.append(torch.cat([noisy, denoise(model, noisy, sigma), clean], dim=-1))
    model.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(torch.cat(rows, dim=-2)).save(path)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach().float(), 1 - decay)


def lowpass_loss(fake: torch.Tensor, clean: torch.Tensor, block: int = 8) -> torch.Tensor:
    """L1 between the block means of two (N,C,H,W) images: blind to texture that averages out within a
    block, sensitive to any shift of tone or colour (the GAN stage's `lowpass_weight`)."""
    return F.l1_loss(F.avg_pool2d(fake, block, ceil_mode=True), F.avg_pool2d(clean, block, ceil_mode=True))


@torch.no_grad()
def with_estimated_maps(noisy: torch.Tensor, smap: torch.Tensor, estimator: NoiseEstimator, share: float, seed: int) -> torch.Tensor:
    """A (N,1,H,W) batch of maps (0-1 scale) where a random `share` of the samples (seeded) carry
    `estimate_noise_map`'s blind map of their (N,C,H,W) noisy crop instead of the exact one."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(noisy.shape[0], generator=g) < share
    if not pick.any():
        return smap
    smap = smap.clone()
    for i in pick.nonzero().flatten().tolist():
        smap[i] = estimate_noise_map(noisy[i : i + 1].float().cpu(), estimator)[0][0].to(smap) / 255.0
    return smap


def train_step(
    cfg: TrainConfig,
    generator: torch.nn.Module,
    disc: torch.nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    smap: torch.Tensor,
    amp: torch.autocast,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step: the discriminator update (stage gan), then the generator update.

    `generator` and `disc` may be DistributedDataParallel wrappers. Returns the detached
    (pixel loss, adversarial loss, discriminator loss); the gradients stay on the parameters."""
    with amp:
        fake = generator(noisy, smap)
    fake = fake.float()
    loss_pix = F.l1_loss(fake, clean)
    if cfg.ssim_weight:
        loss_pix = loss_pix + cfg.ssim_weight * ssim_loss(fake, clean)
    loss_adv = loss_d = torch.zeros((), device=clean.device)
    loss = loss_pix
    if disc is not None:
        # Real and fake pairs in one forward: one spectral-norm power iteration and one DDP reduction.
        real = clean.detach().requires_grad_(cfg.r1_weight > 0)
        with amp:
            d_real, d_fake = disc(torch.cat([noisy, noisy]), torch.cat([real, fake.detach()])).float().chunk(2)
        loss_d, _ = gan_losses(cfg.gan_loss, d_real, d_fake)
        if cfg.r1_weight > 0:  # R1: the squared gradient norm of the discriminator on real pairs
            grad, = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss_d = loss_d + cfg.r1_weight / 2 * grad.pow(2).flatten(1).sum(1).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # The generator's adversarial pass bypasses the DDP wrapper: no discriminator gradient is
        # wanted there, and DDP would wait for one that never comes.
        plain = disc.module if isinstance(disc, torch.nn.parallel.DistributedDataParallel) else disc
        plain.requires_grad_(False)
        try:
            with amp:
                logits, feats = plain.features(torch.cat([noisy, noisy]), torch.cat([clean, fake]))
            d_real, d_fake = logits.float().chunk(2)
            _, loss_adv = gan_losses(cfg.gan_loss, d_real.detach(), d_fake)
            loss_fm = sum(F.l1_loss(f.float().chunk(2)[1], f.float().chunk(2)[0].detach()) for f in feats) / max(1, len(feats))
        finally:
            plain.requires_grad_(True)
        ramp = min(1.0, (step + 1) / cfg.adv_warmup) if cfg.adv_warmup else 1.0
        loss = cfg.pixel_weight * loss_pix + ramp * (cfg.adv_weight * loss_adv + cfg.fm_weight * loss_fm)
        if cfg.lowpass_weight:
            loss = loss + cfg.lowpass_weight * lowpass_loss(fake, clean)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}")
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(generator.parameters(), cfg.grad_clip)
    opt_g.step()
    return loss_pix.detach(), loss_adv.detach(), loss_d.detach()


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); torchrun sets the environment for several GPUs/machines."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run one stage; returns the exported generator folder (OUTPUT_DIR/final), written once
    max_steps is reached. SIGINT/SIGTERM save a checkpoint and stop; the previous handlers are
    restored on return."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(cfg, resume)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def data_split(cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    """(training, validation) image paths of a run: `val_data` when given, else `val_count` images of
    `data` held back (`split`, seeded by `split_seed`, not `seed`: a new `seed` keeps the held-back photos)."""
    paths = list_folders(cfg.data, cfg.min_size, cfg.channels)
    if cfg.val_data:
        return paths, list_images(cfg.val_data, 1, cfg.channels)
    return split(paths, cfg.val_count, cfg.split_seed)


def _run(cfg: TrainConfig, resume: bool) -> Path:
    rank, world, device = setup_distributed()
    main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoint"

    train_paths, val_paths = data_split(cfg)
    val_images = load_validation(val_paths, cfg.val_max_side or None, gray=cfg.val_gray)
    real_val = load_real_pairs(cfg.val_real) if cfg.val_real and cfg.stage != "estimator" else None
    val_estimator = NoiseEstimator.from_pretrained(cfg.val_estimator).eval() if cfg.val_estimator else None
    map_estimator = None
    if cfg.estimated_maps > 0:
        if not cfg.map_estimator:
            raise ValueError("--estimated-maps needs --map-estimator, a noise-estimator folder")
        map_estimator = NoiseEstimator.from_pretrained(cfg.map_estimator).eval().requires_grad_(False).to(device)
    dataset = CropDataset(train_paths, cfg.crop, cfg.noise, cfg.seed)

    estimating = cfg.stage == "estimator"
    if estimating and world > 1:
        raise ValueError("the estimator stage runs in one process (it trains in minutes); start it without torchrun")
    net, net_config = (NoiseEstimator, cfg.estimator) if estimating else (Generator, cfg.generator)
    model = net(net_config).to(device)
    if cfg.init:
        try:
            init = net.from_pretrained(cfg.init)
        except TypeError as err:  # a config.json of the other kind of network
            raise ValueError(f"--init {cfg.init} is not a {net.__name__} folder ({err})") from None
        if asdict(init.config) != asdict(net_config):
            raise ValueError(f"--init {cfg.init} has config {asdict(init.config)}, the run wants {asdict(net_config)}")
        model.load_state_dict(init.state_dict())
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt_g = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    disc = opt_d = None
    if cfg.stage == "gan":
        disc = Discriminator(DiscriminatorConfig(**{**asdict(cfg.discriminator), "channels": cfg.channels})).to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99), weight_decay=0.0)

    step, seconds_before = 0, 0.0
    if resume and (ckpt_dir / "state.json").exists():
        state = load_state(ckpt_dir)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["opt_d"])
        step = state["step"]
        seconds_before = float(state.get("seconds", 0.0))  # absent in checkpoints of older runs
        log.info("resumed from %s at step %d", ckpt_dir, step)
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)

    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if disc is not None:
            disc = torch.nn.parallel.DistributedDataParallel(disc, device_ids=[device.index] if device.type == "cuda" else None)

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    saved = {"step": -1}
    t_start = time.time()

    def elapsed() -> float:
        """Training seconds over all sessions of this run."""
        return seconds_before + time.time() - t_start

    def save_checkpoint() -> None:
        if not main or saved["step"] == step:
            return
        saved["step"] = step
        state = {"step": step, "seconds": elapsed(), "model": model.state_dict(), "ema": ema.state_dict(), "opt_g": opt_g.state_dict()}
        if disc is not None:
            state["disc"] = (disc.module if world > 1 else disc).state_dict()
            state["opt_d"] = opt_d.state_dict()
        save_state(ckpt_dir, state)
        (ckpt_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        ema.save_pretrained(ckpt_dir / "generator")
        log.info("checkpoint saved at step %d", step)

    stop = {"flag": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["flag"] = True
        log.warning("signal %d: saving a checkpoint and stopping", signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    per_rank = cfg.batch_size
    sampler = range((step * world + rank) * per_rank, 2**62)  # sample index -> its own seed
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=_Strided(sampler, per_rank, world),
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=_ignore_interrupts,
    )
    log_path = out / "log.csv"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        new_log = not log_path.exists()
        log_file = open(log_path, "a", newline="")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "time", "lr", "loss_pix", "loss_adv", "loss_d", "metrics"])
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not main, dynamic_ncols=True, desc=cfg.stage)
    t0, seen = time.time(), 0
    model.train()
    for clean, noisy, smap in loader:
        if step >= cfg.max_steps or stop["flag"]:
            break
        clean, noisy, smap = (t.to(device, non_blocking=True) for t in (clean, noisy, smap))
        for group in opt_g.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step)
        if estimating:
            loss_pix = estimator_step(model, opt_g, noisy, smap, cfg.grad_clip, step, cfg.estimator_quantile)
            loss_adv = loss_d = torch.zeros(())
        else:
            if map_estimator is not None:
                smap = with_estimated_maps(noisy, smap, map_estimator, cfg.estimated_maps, seed=cfg.seed * 1_000_003 + step * world + rank)
            loss_pix, loss_adv, loss_d = train_step(cfg, ddp_model, disc, opt_g, opt_d, clean, noisy, smap, amp, step)
        ema_update(ema, model, cfg.ema_decay if step >= cfg.warmup_steps else 0.0)
        step += 1
        seen += clean.shape[0] * world
        bar.update(1)
        if main and step % cfg.log_every == 0:
            rate = seen / (time.time() - t0)
            bar.set_postfix(l1=f"{loss_pix.item():.4f}", adv=f"{loss_adv.item():.3f}", d=f"{loss_d.item():.3f}", img_s=f"{rate:.1f}")
            writer.writerow([step, f"{time.time():.0f}", f"{opt_g.param_groups[0]['lr']:.3g}", f"{loss_pix.item():.5f}", f"{loss_adv.item():.4f}", f"{loss_d.item():.4f}", ""])
            log_file.flush()
        if main and (step % cfg.val_every == 0 or step == cfg.max_steps):
            metrics = run_validation(cfg, ema, val_images)
            if real_val:
                metrics.update(validate_real(ema, real_val, val_estimator))
            if disc is not None:
                metrics["d_accuracy"] = discriminator_accuracy(disc, ema, val_images, cfg.val_sigmas[len(cfg.val_sigmas) // 2], 10_000,
                                                               relativistic=cfg.gan_loss == "relativistic")
            if not estimating:
                save_grid(ema, val_images, cfg.val_sigmas[len(cfg.val_sigmas) // 2], 10_000, out / "val" / f"step{step:07d}.png")
            writer.writerow([step, f"{time.time():.0f}", "", "", "", "", json.dumps(metrics)])
            log_file.flush()
            log.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if step % cfg.ckpt_every == 0:
            save_checkpoint()
        if step >= cfg.max_steps or stop["flag"]:
            break  # before fetching one more batch
    bar.close()
    save_checkpoint()
    final = out / "final"
    if main and step >= cfg.max_steps:
        metrics = run_validation(cfg, ema, val_images)
        from .export import export

        export(ema, final, cfg, metrics, steps=step, train_images=len(train_paths), val_images=len(val_paths), seconds=elapsed())
        if cfg.push_to_hub:
            from .export import push

            push(final, cfg.push_to_hub)
    elif main:
        log.info("stopped at step %d of %d; continue with --resume", step, cfg.max_steps)
    if main:
        log_file.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return final


def run_validation(cfg: TrainConfig, model: torch.nn.Module, images: list[torch.Tensor]) -> dict[str, float]:
    if cfg.stage == "estimator":
        return validate_estimator(model, images, cfg.val_sigmas, seed=10_000)
    return validate(model, images, cfg.val_sigmas, seed=10_000)


def _ignore_interrupts(_worker_id: int) -> None:
    """Loader workers leave Ctrl-C (sent to the whole process group) to the main process, which
    finishes its step, saves a checkpoint and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Strided(torch.utils.data.Sampler):
    """Indices start, start+1, ... in batches of `per_rank`, skipping the other ranks' batches."""

    def __init__(self, indices: range, per_rank: int, world: int) -> None:
        self.indices, self.per_rank, self.world = indices, per_rank, world

    def __iter__(self):
        i = self.indices.start
        while True:
            yield from range(i, i + self.per_rank)
            i += self.per_rank * self.world

    def __len__(self) -> int:
        return 2**62


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, args = parse_config(argv)
    try:
        train(cfg, resume=args.resume)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
