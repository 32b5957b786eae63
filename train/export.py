"""Export a trained generator as a Hub-ready folder (config.json, model.safetensors, README.md model
card, train_config.json) and publish it with huggingface_hub."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ganlib.models import Generator, count_macs_per_pixel

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

A noise-level-conditioned residual U-Net ({params:,} parameters, {macs:,.0f} multiply-adds per pixel)
that removes noise from photos. Stage `{stage}`: {stage_text}

## Training
- Data: `{data}` ({train_images} training images, {val_images} held back for validation; random
  {crop}x{crop} crops, flips and 90-degree rotations). Never trained on the test sets.
- Noise model: a mixture {mix}; gaussian sigma in {sigma} (0-255 scale); {clip_pct:.0f}% of samples
  clipped and rounded to 8 bits as uploaded photos are. The generator sees the per-pixel noise level.
- {steps} steps of batch {batch}, {hours:.2f} hours on {device}.

## Validation (held-back training images, Gaussian noise, unclipped)
{metrics}

## Use
```bash
python -m ganlib denoise photo.jpg -o out/ --weights <this folder or repo id>
```

## Intended use and limitations
Removing sensor noise and synthetic noise from photos. It does not restore blur or JPEG artefacts
beyond mild ones, and it was trained on natural photos (BSDS), so drawings, text and medical or
scientific images are out of its domain. The GAN stage adds plausible texture that is not in the
input: do not use it where exact detail matters (forensics, medicine, science).
"""


def model_card(cfg, metrics: dict[str, float], *, steps: int, train_images: int, val_images: int, seconds: float, model: Generator) -> str:
    import torch

    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    stage_text = (
        "trained with the L1 pixel loss for the highest PSNR."
        if cfg.stage == "fidelity"
        else f"fine-tuned from the fidelity model with a conditional PatchGAN ({cfg.gan_loss} loss, weight {cfg.adv_weight}) for sharper texture."
    )
    return CARD.format(
        dataset=Path(cfg.data).name or "custom",
        stage=cfg.stage,
        stage_text=stage_text,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs_per_pixel(model, channels=model.config.channels),
        data=Path(cfg.data).name,
        train_images=train_images,
        val_images=val_images,
        crop=cfg.crop,
        mix=json.dumps(cfg.noise.mix),
        sigma=list(cfg.noise.sigma),
        clip_pct=100 * cfg.noise.clip_prob,
        steps=steps,
        batch=cfg.batch_size,
        hours=seconds / 3600,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"a {os.cpu_count()}-core CPU",
        metrics="| metric | value |\n|---|---|\n" + rows,
    )


def export(model: Generator, folder: str | Path, cfg, metrics: dict[str, float], **facts) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "README.md").write_text(model_card(cfg, metrics, model=model, **facts))
    (folder / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("exported generator to %s", folder)
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
