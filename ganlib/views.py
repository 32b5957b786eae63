"""The eight flips/rotations of an NCHW tensor (the dihedral group), for self-ensembles: a network run
on several views of its input, each output turned back and averaged (Lim et al. 2017, "Enhanced Deep
Residual Networks for Single Image Super-Resolution", the x8 self-ensemble).

A view is (k, flip): k quarter turns (`torch.rot90` on H, W), then mirrored left-right if flip.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

ALL_VIEWS = [(k, flip) for k in range(4) for flip in (False, True)]
# Four views, one per quarter turn, mirrored every other turn (on a camera's 2x2 Bayer mosaic they
# give two of its four phases, each twice).
FOUR_VIEWS = [(0, False), (1, True), (2, False), (3, True)]


def view(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """One of the 8 flips/rotations of an NCHW tensor: rotate by k quarter turns, then mirror if flip.
    The identity view is `t` itself: torch.rot90 by 0 would copy it (and materialize an expanded map)."""
    if k % 4 == 0 and not flip:
        return t
    t = torch.rot90(t, k, (2, 3))
    return t.flip(3) if flip else t


def unview(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of `view` (the identity view is `t` itself, as there)."""
    if k % 4 == 0 and not flip:
        return t
    return torch.rot90(t.flip(3) if flip else t, -k, (2, 3))


def view_mean(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, views: list[tuple[int, bool]]) -> torch.Tensor:
    """The mean over `views` of fn run on each view of the NCHW tensor x and turned back: an output
    that does not depend on the image's orientation (fn must map (N,C,H,W) to (N,C',H,W))."""
    out = None
    for k, flip in views:
        y = unview(fn(view(x, k, flip)), k, flip)
        out = y if out is None else out + y
    return out / len(views)
