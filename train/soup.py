"""Weight averaging of two generators of the same shape (a "model soup": Wortsman et al. 2022, "Model
soups: averaging weights of multiple fine-tuned models improves accuracy without increasing inference
time"; here two points of one fine-tuning path, as in weight-space ensembling, Wortsman et al. 2022,
"Robust fine-tuning of zero-shot models").

    python -m train.soup A B --weight 0.5 --output-dir runs/soup

writes (1 - weight) * A + weight * B as a weights folder (config.json, model.safetensors,
training.json with both histories), ready for `--init` or shipping: when A has its train_config.json,
the soup is validated on A's held-back images and gets A's model card with its own metrics and history.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ganlib.hub import Weights
from ganlib.models import Generator

from .export import training_history, validated_card

log = logging.getLogger(__name__)


def soup(a: Generator, b: Generator, weight: float) -> Generator:
    """(1 - weight) * a + weight * b, parameter by parameter (buffers too; integer buffers from a): the
    network interpolation that `Weights.generator(realism)` does between the fidelity and GAN stages.

    Raises ValueError when weight is outside [0, 1] or the two configs differ."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    if a.config != b.config:
        raise ValueError(f"the two generators differ: {a.config} against {b.config}")
    return Weights(fidelity=a, gan=b).generator(weight)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="weights folder A (weight 0)")
    parser.add_argument("b", help="weights folder B (weight 1)")
    parser.add_argument("--weight", type=float, default=0.5, help="share of B, 0-1 (default 0.5)")
    parser.add_argument("--output-dir", required=True, help="folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = soup(Generator.from_pretrained(args.a), Generator.from_pretrained(args.b), args.weight)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    out = Path(args.output_dir)
    model.save_pretrained(out)
    history = [*training_history(args.a), {"stage": "soup", "a": args.a, "b": args.b, "weight": args.weight,
                                           "b_history": training_history(args.b)}]
    (out / "training.json").write_text(json.dumps(history, indent=2))
    config = Path(args.a) / "train_config.json"
    if config.is_file():
        validated_card(model, out, json.loads(config.read_text()), history)
    else:
        log.warning("%s has no train_config.json: the soup gets no model card or validation metrics", args.a)
    log.info("wrote %.2f x %s + %.2f x %s to %s", 1 - args.weight, args.a, args.weight, args.b, out)
    return out


if __name__ == "__main__":
    main()
