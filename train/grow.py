"""Function-preserving growth of a generator: more residual blocks per U-Net level, each new block
starting as the identity (its last convolution zero), so the grown network computes exactly what the
original does and fine-tuning starts from its quality (Chen, Goodfellow and Shlens 2016, "Net2Net:
accelerating learning via knowledge transfer"; the zero-initialised residual branch as in Goyal et al.
2017 and Fixup).

    python -m train.grow checkpoints/fidelity --blocks 4,2,4 --output-dir runs/grown
    python -m train.grow checkpoints/gan --like runs/grown-trained/final --output-dir runs/gan-grown

New blocks are appended after a level's existing ones, in its encoder and its decoder. `--like REF`
grows to REF's shape and copies the new blocks' first convolution from REF (their last stays zero):
the GAN stage and the gray generator are grown to match a grown and fine-tuned fidelity model, so that
realism's weight interpolation between them (`Weights.generator`) scales the new blocks' residual
instead of mixing it with random weights, and each grown model's own output is unchanged.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from ganlib.models import Generator, GeneratorConfig

from .export import save_derived, training_history

log = logging.getLogger(__name__)


def grow(model: Generator, blocks: list[int], *, like: Generator | None = None, seed: int = 0) -> Generator:
    """A copy of `model` with `blocks` residual blocks per level (each at least the current count), the
    new ones identity at first: (1) their last convolution zero, (2) their first convolution from `like`
    (a generator of the grown shape) or freshly initialised (seeded by `seed`).

    Raises ValueError when a level would lose blocks, the number of levels differs, or `like` has
    another shape."""
    old = list(model.config.blocks)
    blocks = [int(b) for b in blocks]
    if len(blocks) != len(old) or any(b < a for a, b in zip(old, blocks)):
        raise ValueError(f"blocks must list {len(old)} levels, each at least the current {old}; got {blocks}")
    config = GeneratorConfig(**{**asdict(model.config), "blocks": blocks})
    if like is not None and asdict(like.config) != asdict(config):
        raise ValueError(f"--like has config {asdict(like.config)}, the grown model would have {asdict(config)}")
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
        torch.manual_seed(seed)
        grown = Generator(config)
    ours, ref = model.state_dict(), like.state_dict() if like is not None else {}
    state = grown.state_dict()
    for key, value in state.items():
        if key in ours:
            value.copy_(ours[key])
        elif ".conv2." in key:
            value.zero_()
        elif key in ref:
            value.copy_(ref[key])
    grown.load_state_dict(state)
    return grown


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="weights folder to grow")
    parser.add_argument("--blocks", default="", help="residual blocks per level, e.g. 4,2,4")
    parser.add_argument("--like", default="", help="grown weights folder: its shape, and the new blocks' first convolution")
    parser.add_argument("--output-dir", required=True, help="folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.blocks) == bool(args.like):
        parser.error("give either --blocks or --like")
    try:
        model = Generator.from_pretrained(args.source)
        like = Generator.from_pretrained(args.like) if args.like else None
        blocks = like.config.blocks if like is not None else [int(b) for b in args.blocks.split(",")]
        grown = grow(model, blocks, like=like)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    out = Path(args.output_dir)
    save_derived(grown, out, [*training_history(args.source), {"stage": "grow", "blocks": list(blocks), "like": args.like}], args.source)
    log.info("grew %s from blocks %s to %s in %s", args.source, model.config.blocks, list(blocks), out)
    return out


if __name__ == "__main__":
    main()
