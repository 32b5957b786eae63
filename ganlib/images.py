"""The one place where images cross between PIL / numpy and tensors.

Convention, used everywhere in ganlib: float32 tensors, NCHW, values in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL image or HxW / HxWxC array (uint8, uint16 or float in [0, 1]) -> float32 (1,C,H,W) in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def to_numpy(tensor: torch.Tensor, dtype: type = np.uint8) -> np.ndarray:
    """(1,C,H,W) or (C,H,W) tensor in [0, 1] -> HxWxC (HxW for one channel) array of `dtype`, rounded."""
    t = tensor.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.clamp(0, 1).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    if dtype == np.uint8:
        return (arr * 255.0 + 0.5).astype(np.uint8)
    if dtype == np.uint16:
        return (arr * 65535.0 + 0.5).astype(np.uint16)
    return arr.astype(dtype)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """(1,C,H,W) tensor in [0, 1] -> 8-bit PIL image (L or RGB)."""
    return Image.fromarray(to_numpy(tensor, np.uint8))
