"""Task arithmetic for the GAN stage: the adversarial stage's weight change (GAN weights minus the
fidelity weights it was trained from) added to newer fidelity weights, so that realism's weight
interpolation (`Weights.generator`) moves from today's fidelity model along the adversarial
direction only (Ilharco et al. 2023, "Editing Models with Task Arithmetic"; the task vector here is
one GAN fine-tune).

    python -m train.transplant GAN --base FIDELITY_THE_GAN_STARTED_FROM --onto NEW_FIDELITY --output-dir runs/gan-ta

Without it, realism 1 blended today's fidelity weights 0.75 of the way towards a GAN stage whose
weights are mostly the older fidelity model's (the adversarial change is 1.4% of the weights' norm,
the fidelity model's own drift since 28%), and it scaled the residual of every block grown since to a
quarter. Parameters that `base` lacks (blocks grown after the GAN stage was trained) take the new
fidelity weights unchanged: the GAN stage never trained them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ganlib.models import Generator

from .export import save_derived, training_history

log = logging.getLogger(__name__)


def transplant(gan: Generator, base: Generator, onto: Generator) -> tuple[Generator, int]:
    """A copy of `onto` plus (gan - base) on every parameter that `gan` and `base` both have with
    `onto`'s shape: (the new generator, how many parameter tensors moved). `gan` may be `base` grown
    and fine-tuned (`train.grow`): the extra blocks carry no task vector.

    Raises ValueError when no parameter is shared or when `gan` and `base` disagree on a shared shape."""
    g, b = gan.state_dict(), base.state_dict()
    state = {k: v.clone() for k, v in onto.state_dict().items()}
    moved = 0
    for key, value in state.items():
        if key not in g or key not in b:
            continue
        if g[key].shape != b[key].shape or value.shape != b[key].shape:
            raise ValueError(f"{key}: shapes differ (gan {tuple(g[key].shape)}, base {tuple(b[key].shape)}, onto {tuple(value.shape)})")
        value += g[key] - b[key]
        moved += 1
    if moved == 0:
        raise ValueError("the GAN, base and new fidelity weights share no parameter: not the same network")
    out = Generator(onto.config)
    out.load_state_dict(state)
    return out, moved


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gan", help="GAN-stage weights folder")
    parser.add_argument("--base", required=True, help="the fidelity weights folder the GAN stage was trained from")
    parser.add_argument("--onto", required=True, help="the new fidelity weights folder")
    parser.add_argument("--output-dir", required=True, help="folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        gan, base, onto = (Generator.from_pretrained(p) for p in (args.gan, args.base, args.onto))
        model, moved = transplant(gan, base, onto)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    with torch.no_grad():
        norm = sum(float(p.pow(2).sum()) for p in onto.parameters()) ** 0.5
        delta = sum(float((a - o).pow(2).sum()) for a, o in zip(model.parameters(), onto.parameters())) ** 0.5
    out = Path(args.output_dir)
    adversarial = [r for r in training_history(args.gan) if r.get("stage") == "gan"]  # the runs that made the change
    history = [*training_history(args.onto), {"stage": "transplant", "gan": args.gan, "base": args.base, "tensors": moved,
                                               "gan_runs": adversarial}]
    save_derived(model, out, history, args.gan)
    log.info("added %s - %s (%d tensors, %.2f%% of the weights' norm) to %s in %s",
             args.gan, args.base, moved, 100 * delta / max(norm, 1e-12), args.onto, out)
    return out


if __name__ == "__main__":
    main()
