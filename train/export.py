"""Export a trained generator as a Hub-ready folder (config.json, model.safetensors, README.md model
card, train_config.json, metrics.json, training.json) and publish it with huggingface_hub."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ganlib.models import count_macs_per_pixel

log = logging.getLogger(__name__)

CARD = """---
license: mit
library_name: ganlib
pipeline_tag: image-to-image
tags:
- image-denoising
- gan
- ganlib
datasets:
- {dataset}
metrics:
- psnr
- ssim
---

# ganlib denoiser ({stage} stage)

{what} ({params:,} parameters, {macs:,.0f} multiply-adds per pixel).
Stage `{stage}`: {stage_text}

## Training
- Data: `{data}` ({train_images} training images, {val_images} held back for validation; random
  crops, flips and 90-degree rotations). Never trained on the test sets.
- Noise model: a mixture {mix}; gaussian sigma in {sigma} (0-255 scale); {clip_pct:.0f}% of samples
  clipped and rounded to 8 bits as uploaded photos are{clean_note}{gray_note}. {map_note}
- Runs, oldest first ({total_hours:.2f} hours in all; each run starts from the previous one's weights):
{runs}

## Validation ({val_text})
{metrics}

## Use
{use}

## Intended use and limitations
{limits}
"""

USE = """```bash
python -m ganlib denoise photo.jpg -o out/ --weights <this folder or repo id>
```"""
LIMITS = """Removing sensor noise and synthetic noise from photos. It does not restore blur or JPEG artefacts
beyond mild ones, and it was trained on natural photos (BSDS, SUN scenes), so drawings, text and medical or
scientific images are out of its domain. The GAN stage adds plausible texture that is not in the
input: do not use it where exact detail matters (forensics, medicine, science)."""
ESTIMATOR_USE = """Place this folder as `estimator/` beside `fidelity/` (and `gan/`) in a weights folder or repo; the CLI
(`--sigma auto`, the default), the demo's automatic strength and `denoise_image(weights, image)` then
take the noise level from it (the mean of its noise-level map) instead of the wavelet estimate."""
ESTIMATOR_LIMITS = """Setting the strength of the ganlib denoiser on photos. It knows the noise kinds it was trained on
(Gaussian, Poisson, speckle, salt and pepper, camera noise with and without JPEG); heavily processed real
noise (strong phone noise reduction, film grain, scans) can read lower or higher than the strength that
looks best: set the strength by hand then."""


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"a {os.cpu_count()}-core CPU"


def training_history(init: str) -> list[dict]:
    """The training runs behind the --init weights, oldest first (their training.json).

    A local folder without one (or a Hub repo id) gives a single entry that names it."""
    if not init:
        return []
    path = Path(init) / "training.json"
    if path.is_file():
        return json.loads(path.read_text())
    return [{"stage": "unrecorded", "init": str(init)}]


def data_names(data: str) -> str:
    """'../a/train-X,../b/train-Y' -> 'train-X + train-Y' (the folder names of a --data list)."""
    return " + ".join(Path(p.strip()).name for p in str(data).split(",") if p.strip()) or "custom"


def this_run(cfg, *, steps: int, seconds: float) -> dict:
    return {"stage": cfg.stage, "data": data_names(cfg.data), "init": cfg.init, "steps": steps, "batch": cfg.batch_size,
            "crop": cfg.crop, "lr": cfg.lr, "hours": round(seconds / 3600, 3), "device": device_name()}


def _run_line(run: dict) -> str:
    if run.get("stage") == "unrecorded":
        return f"  - weights from `{run['init']}` (their training was not recorded)"
    if run.get("stage") == "soup":
        return f"  - weight average: {1 - run['weight']:g} x `{run['a']}` + {run['weight']:g} x `{run['b']}` (`train/soup.py`)"
    if run.get("stage") == "grow":
        return f"  - grown to {run['blocks']} residual blocks per level, the new ones starting as the identity (`train/grow.py`)"
    if run.get("stage") == "transplant":
        made = "; ".join(_run_line(r).strip()[2:] for r in run.get("gan_runs", []))
        return (f"  - plus the GAN stage's weight change, `{run['gan']}` minus `{run['base']}` that it was trained from "
                f"({run['tensors']} tensors; task arithmetic, `train/transplant.py`)" + (f"; that change: {made}" if made else ""))
    return (f"  - {run['stage']}: {run['steps']} steps of batch {run['batch']}, {run['crop']}x{run['crop']} crops, "
            f"peak lr {run['lr']:g}, {run['hours']:.2f} hours on {run['device']}")


def _gray_note(gray_prob: float) -> str:
    if gray_prob >= 1.0:
        return ("; every sample gray (the crop's luma) with the same noise in every channel, without the colour-only "
                "camera pipeline: the generator for gray photos (`gray/` in a weights folder)")
    return f"; {100 * gray_prob:.0f}% gray with the same noise in every channel" if gray_prob else ""


def model_card(cfg, metrics: dict[str, float], *, train_images: int, val_images: int, model: torch.nn.Module, history: list[dict]) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    what = "A noise-level-conditioned residual U-Net that removes noise from photos"
    val_text = "held-back training images" + (" made gray (their luma)" if getattr(cfg, "val_gray", False) else "") + ", Gaussian noise, unclipped"
    if cfg.stage == "fidelity":
        stage_text = "trained with the L1 pixel loss for the highest PSNR."
    elif cfg.stage == "gan":
        disc = "U-Net discriminator (Real-ESRGAN)" if getattr(cfg.discriminator, "kind", "patch") == "unet" else "PatchGAN"
        fm = f", feature matching weight {cfg.fm_weight}" if getattr(cfg, "fm_weight", 0) else ""
        stage_text = (f"fine-tuned from the fidelity model against a conditional {disc} ({cfg.gan_loss} loss, weight "
                      f"{cfg.adv_weight}{fm}) for texture closer to the clean photo's.")
    else:
        what = "A small CNN that estimates the noise level of a photo, to set the denoiser's strength automatically"
        stage_text = "trained to predict the generator's noise-level map (L1 on log noise levels) from the noisy image alone."
        val_text = "held-back training images; mean absolute error of the estimated level, 0-255 scale, noise clipped and rounded to 8 bits"
    estimating = cfg.stage == "estimator"
    clean_prob = getattr(cfg.noise, "clean_prob", 0.0)
    return CARD.format(
        what=what,
        clean_note=f"; {100 * clean_prob:.0f}% left clean" if clean_prob else "",
        gray_note=_gray_note(getattr(cfg.noise, "gray_prob", 0.0)),
        map_note="The target is the per-pixel noise level." if estimating else "The generator sees the per-pixel noise level.",
        use=ESTIMATOR_USE if estimating else USE,
        limits=ESTIMATOR_LIMITS if estimating else LIMITS,
        val_text=val_text,
        dataset=data_names(cfg.data).split(" + ")[0],
        stage=cfg.stage,
        stage_text=stage_text,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs_per_pixel(model, channels=model.config.channels),
        data=data_names(cfg.data),
        train_images=train_images,
        val_images=val_images,
        mix=json.dumps(cfg.noise.mix),
        sigma=str(list(cfg.noise.sigma)) + (f" (drawn as low + (high - low) * u^{cfg.noise.sigma_power:g}, u uniform)"
                                            if cfg.noise.sigma_power != 1.0 else ""),
        clip_pct=100 * cfg.noise.clip_prob,
        total_hours=sum(r.get("hours", 0.0) for r in history),
        runs="\n".join(_run_line(r) for r in history),
        metrics="| metric | value |\n|---|---|\n" + rows,
    )


def save_derived(model: torch.nn.Module, out: Path, history: list[dict], config_from: str | Path) -> None:
    """Save weights made without a training run (`train/grow.py`, `train/transplant.py`) into `out`:
    the model (safetensors and config), its `training.json` (`history`), and, when the folder
    `config_from` has a train_config.json, that config with this generator's shape, validated into a
    model card (`validated_card`)."""
    model.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(history, indent=2))
    config = Path(config_from) / "train_config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        values["generator"] = asdict(model.config)
        validated_card(model, out, values, history)


def validated_card(model: torch.nn.Module, out: Path, values: dict, history: list[dict]) -> None:
    """For weights made without a training run (`train/soup.py`, `train/grow.py`): validate `model` on
    the held-back images of the run config `values` and write its model card, metrics.json and
    train_config.json (`values`) into `out`."""
    from .data import load_validation
    from .train import TrainConfig, _coerce, data_split, run_validation

    cfg = _coerce(TrainConfig, values)
    train_paths, val_paths = data_split(cfg)
    metrics = run_validation(cfg, model, load_validation(val_paths, cfg.val_max_side or None, gray=cfg.val_gray))
    model.eval()
    card = model_card(cfg, metrics, train_images=len(train_paths), val_images=len(val_paths), model=model, history=history)
    (out / "README.md").write_text(card)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "train_config.json").write_text(json.dumps(values, indent=2))


def export(model: torch.nn.Module, folder: str | Path, cfg, metrics: dict[str, float], *, steps: int, seconds: float,
           train_images: int, val_images: int) -> Path:
    """Write the Hub-ready folder: weights + config, model card, resolved training config, validation
    metrics and training.json (every run from scratch to these weights, for the card's history)."""
    folder = Path(folder)
    history = [*training_history(cfg.init), this_run(cfg, steps=steps, seconds=seconds)]
    model.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(cfg, metrics, model=model, train_images=train_images, val_images=val_images, history=history))
    (folder / "training.json").write_text(json.dumps(history, indent=2))
    (folder / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("exported %s model to %s", cfg.stage, folder)
    return folder


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create the repo if needed and upload the folder; returns the commit id (token from env/login)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload ganlib denoiser")
    log.info("pushed %s to %s at commit %s", folder, repo_id, info.oid)
    print(f"pushed to {repo_id}: commit {info.oid}")
    return info.oid
