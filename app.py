"""The Gradio demo: a photo fixer and a noise lab on one page.

- "Denoise my photo" (the default): nothing is added; the noise level is estimated from the upload (or set
  by hand) and the photo is denoised at full resolution. "Camera / phone photo: blotchy noise" denoises it
  pixel-shuffled (stride 2: the four interleaved half-size sub-images one by one, then the whole refined
  once per sub-image), which removes the spatially correlated noise of real camera photos (off by default:
  it softens fine texture).
- "Noise lab": synthetic noise of a chosen kind is added to a clean photo, the network is told the exact
  noise-level map of that noise ("informed"), and PSNR/SSIM against the clean photo are shown; one click
  compares all five kinds on the same photo (a labelled centre crop of large photos).

Every result shows the noise-level map that conditioned the network (heat map, 0-255 scale) and the
removed residual (noisy minus denoised, amplified). A thin UI over ganlib: weights from
`ganlib.hub.load_weights()` (env GANLIB_WEIGHTS / GANLIB_REVISION, else the bundled checkpoints/), images
through `ganlib.images` (lossless PNG; 16-bit, grayscale, alpha, ICC and EXIF kept), denoising through
`ganlib.inference.restore` (tiled, any size).

Run: `.venv/bin/python app.py` (serves on localhost; port from GRADIO_SERVER_PORT, default 7860).
Settings (environment): GANLIB_MAX_PIXELS (default 16 000 000), GANLIB_MAX_FILE_MB (upload limit, 50),
GANLIB_QUEUE_SIZE (waiting requests, 16), GANLIB_CONCURRENCY (requests run at once, 1), GANLIB_TILE (512),
GANLIB_PRECISION (auto).
API: `/denoise(image, noise_kind, sigma, peak, amount, salt_ratio, whole_pixel, speckle_sigma, camera_peak,
camera_read, camera_quality, seed, informed, strength, realism, ensemble, stride) -> (png file, metrics)` and
`/compare_kinds(image, seed) -> (table, gallery)`; see the README.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ganlib.compare import KindComparison, compare_kinds, crop_for_compare, most_textured_window
from ganlib.hub import Weights, load_weights
from ganlib.images import ImageData, ImageError, load_image, save_image, to_pil
from ganlib.impulse import may_have_impulses
from ganlib.inference import IMPULSE_MIN_FRACTION, Restored, resolve_precision, restore
from ganlib.jpeg import estimate_jpeg_quality
from ganlib.noise_level import JPEG_LIFT_MIN_SIGMA
from ganlib.noise import DEFAULTS, KINDS, add_noise, informed_noise_map

try:  # Hugging Face ZeroGPU: present on Spaces only; a plain CPU run never needs it
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger("ganlib.app")

HERE = Path(__file__).resolve().parent
MAX_PIXELS = int(os.environ.get("GANLIB_MAX_PIXELS", 16_000_000))
MAX_FILE_MB = int(os.environ.get("GANLIB_MAX_FILE_MB", 50))
QUEUE_SIZE = int(os.environ.get("GANLIB_QUEUE_SIZE", 16))
CONCURRENCY = int(os.environ.get("GANLIB_CONCURRENCY", 1))
TILE = int(os.environ.get("GANLIB_TILE", 512))
OVERLAP = 64
PRECISION = os.environ.get("GANLIB_PRECISION", "auto")  # auto: bfloat16 where the hardware runs it natively
resolve_precision(PRECISION)  # a bad GANLIB_PRECISION stops the app at start, with the accepted values
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "ganlib-demo-outputs"
OUTPUT_MAX_AGE_S = 3600
PNG_LEVEL = 1  # zlib level of every PNG the demo writes: lossless, several times faster than the default 6
VIEW_MAX_SIDE = 1024  # the noise-level map is shown at most this large (it is smooth)
RESIDUAL_MAX_SIDE = 1024  # larger photos show the residual of a labelled centre crop at full resolution
COMPARE_MAX_SIDE = 512  # /compare_kinds works on a labelled centre crop of larger photos

MODES = ("Denoise my photo", "Noise lab")
NOISE_KINDS = ("none", *KINDS)
HAS_WHOLE_PIXEL = "whole_pixel" in DEFAULTS["salt_pepper"]

# One name per setting, shared by the UI, the /denoise API and the README; defaults from ganlib.noise.DEFAULTS.
LAB_DEFAULTS: dict[str, Any] = {
    "sigma": float(DEFAULTS["gaussian"]["sigma"]),
    "peak": float(DEFAULTS["poisson"]["peak"]),
    "amount": float(DEFAULTS["salt_pepper"]["amount"]),
    "salt_ratio": float(DEFAULTS["salt_pepper"]["salt_ratio"]),
    "whole_pixel": bool(DEFAULTS["salt_pepper"].get("whole_pixel", False)),
    "speckle_sigma": float(DEFAULTS["speckle"]["sigma"]),
    "camera_peak": float(DEFAULTS["camera"]["peak"]),
    "camera_read": float(DEFAULTS["camera"]["sigma"]),
    "camera_quality": int(DEFAULTS["camera"]["quality"] or 0),  # 0 = no JPEG
}
# Which setting feeds which parameter of ganlib.noise.add_noise, per kind.
KIND_SETTINGS: dict[str, dict[str, str]] = {
    "gaussian": {"sigma": "sigma"},
    "poisson": {"peak": "peak"},
    "salt_pepper": {"amount": "amount", "salt_ratio": "salt_ratio", **({"whole_pixel": "whole_pixel"} if HAS_WHOLE_PIXEL else {})},
    "speckle": {"speckle_sigma": "sigma"},
    "camera": {"camera_peak": "peak", "camera_read": "sigma", "camera_quality": "quality"},
}
SETTING_NAMES = tuple(LAB_DEFAULTS)


# ----------------------------------------------------------------------------- weights

_weights: Weights | None = None
_weights_error: str | None = None
_weights_lock = threading.Lock()


def get_weights() -> Weights:
    """The demo's weights, loaded once (env GANLIB_WEIGHTS / GANLIB_REVISION, else bundled checkpoints/)."""
    global _weights, _weights_error
    with _weights_lock:
        if _weights is None and _weights_error is None:
            try:
                _weights = load_weights()
                log.info("weights in use: %s", _weights.source)
            except Exception as err:  # the page still comes up and says what is wrong
                _weights_error = str(err) or type(err).__name__
                log.error("no weights could be loaded: %s", _weights_error)
        if _weights is None:
            raise gr.Error(f"No denoising weights are available: {_weights_error}")
        return _weights


def weights_banner() -> str:
    try:
        w = get_weights()
    except gr.Error as err:
        return f"**Weights: none loaded.** {err.message}"
    gan = "fidelity + GAN (realism slider enabled)" if w.gan is not None else "fidelity only (no GAN weights: realism disabled)"
    auto = "learned noise-level estimator" if w.estimator is not None else "wavelet noise estimate (no estimator/ weights)"
    return f"**Weights in use:** `{w.source}` - {gan}; auto strength: {auto}"


# ----------------------------------------------------------------------------- core


@dataclass
class Result:
    original: ImageData
    noisy: ImageData | None  # None when no synthetic noise was added
    denoised: ImageData
    noise_map: torch.Tensor  # (1,1,H,W), 0-255: what conditioned the network
    metrics: dict[str, Any]
    seconds: float
    files: dict[str, Path]  # original / noisy / denoised display PNGs, the download, the map and residual views
    captions: dict[str, str] = field(default_factory=dict)  # map / residual labels


def _source(image: Any) -> tuple[Any, str, int | None]:
    """Gradio's raw image payload (dict), a path, or bytes -> (loadable source, display name, size in bytes)."""
    if image is None:
        raise gr.Error("Upload an image first (or pick an example).")
    if isinstance(image, dict):
        path, url, orig = image.get("path"), image.get("url"), image.get("orig_name")
        if not path and isinstance(url, str) and url.startswith("data:"):
            try:
                data = base64.b64decode(url.split(",", 1)[1])
            except (IndexError, ValueError):
                raise gr.Error("The image could not be decoded (bad data URL).") from None
            return data, orig or "image", len(data)
        if not path:
            raise gr.Error("Upload an image first (or pick an example).")
        image = path
        name = orig or Path(path).name
    elif isinstance(image, (bytes, bytearray)):
        return bytes(image), "image", len(image)
    else:
        name = Path(str(image)).name
    path = Path(str(image))
    if not path.is_file():
        raise gr.Error(f"The uploaded file {name!r} was not found on the server; upload it again.")
    return path, name, path.stat().st_size


def _safe_stem(name: str) -> str:
    stem = Path(name).stem if name else ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem[:100] or "image"


def kind_params(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The add_noise parameters of `kind` from the demo's settings (missing ones: LAB_DEFAULTS).
    camera_quality 0 means no JPEG; whole_pixel only where this ganlib has it."""
    if kind == "none":
        return {}
    out: dict[str, Any] = {}
    for name, param in KIND_SETTINGS[kind].items():
        value = settings.get(name)
        value = LAB_DEFAULTS[name] if value is None else value
        if name == "camera_quality":
            value = None if float(value) <= 0 else int(value)
        elif name == "whole_pixel":
            value = bool(value)
        out[param] = value
    return out


def _noise_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """add_noise parameters as given to `run` (None = the library default; quality <= 0 = no JPEG)."""
    out = {k: v for k, v in params.items() if v is not None}
    if "quality" in params and (params["quality"] is None or float(params["quality"]) <= 0):
        out["quality"] = None
    elif "quality" in out:
        out["quality"] = int(out["quality"])
    return out


def describe_params(kind: str, params: dict[str, Any]) -> str:
    """'sigma 25' / 'peak 80, read 3, JPEG 85' - the settings that apply to `kind`, for labels."""
    if kind == "none":
        return "nothing added"
    names = {"camera": {"peak": "peak", "sigma": "read", "quality": "JPEG"}}.get(kind, {})
    parts = []
    for key, value in params.items():
        if key == "quality":
            parts.append("no JPEG" if value is None else f"JPEG {value}")
        elif key == "whole_pixel":
            parts.append("whole pixels" if value else "per channel")
        else:
            parts.append(f"{names.get(key, key.replace('_', ' '))} {value:g}")
    return ", ".join(parts)


# --- metrics: each computed once, in float32 torch (exact formulas of ganlib.metrics, several times faster)

_SSIM_RADIUS = 5  # skimage: gaussian sigma 1.5, truncate 3.5 -> 11x11 window, 5-pixel border left out
_SSIM_ROWS = 2048


def quality(reference: torch.Tensor, *images: torch.Tensor) -> list[tuple[float | None, float | None]]:
    """(PSNR dB, SSIM) of each (1,C,H,W) image (clipped to [0, 1]) against `reference`, one pass each.

    The same numbers as `ganlib.metrics.psnr` / `ssim` (Gaussian-window SSIM of Wang et al., as
    scikit-image computes it: sigma 1.5, population covariance, 5-pixel border excluded), in float32
    with OpenCV's separable filter on blocks of rows (a 12 MP pair in about a second instead of ~8 s),
    the reference's local statistics computed once for all images. PSNR is None for identical images
    (infinite), SSIM None for images under 11 pixels on a side."""
    import cv2  # opencv-python-headless: already a runtime requirement (16-bit colour decoding)

    ref = reference.detach().float().cpu()
    c, h, w = ref.shape[1:]
    outs = [img.detach().float().cpu() for img in images]
    sq = [0.0] * len(outs)
    for i, img in enumerate(outs):
        for ch in range(c):
            d = img[0, ch].clamp(0, 1) - ref[0, ch]
            sq[i] += float(torch.dot(d.flatten(), d.flatten()).double())
    psnrs = [None if s == 0 else round(10 * math.log10(c * h * w / s), 3) for s in sq]
    r = _SSIM_RADIUS
    if min(h, w) < 2 * r + 1:
        return [(p, None) for p in psnrs]
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / 1.5) ** 2)
    g = (g / g.sum()).astype(np.float32)

    def blur(a: np.ndarray) -> np.ndarray:  # 'valid' part only: the border rows/columns are left out anyway
        return cv2.sepFilter2D(a, cv2.CV_32F, g, g, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]

    c1, c2 = 0.01**2, 0.03**2
    totals = [0.0] * len(outs)
    count = 0
    for ch in range(c):
        for y0 in range(0, h - 2 * r, _SSIM_ROWS):
            y1 = min(h, y0 + _SSIM_ROWS + 2 * r)
            b = np.ascontiguousarray(ref[0, ch, y0:y1].numpy())
            uy = blur(b)
            vy = blur(b * b) - uy * uy
            count += uy.size
            for i, img in enumerate(outs):
                a = np.ascontiguousarray(img[0, ch, y0:y1].clamp(0, 1).numpy())
                ux = blur(a)
                vx = blur(a * a) - ux * ux
                vxy = blur(a * b) - ux * uy
                s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
                totals[i] += float(s.sum(dtype=np.float64))
    return [(p, round(t / count, 4)) for p, t in zip(psnrs, totals)]


# --- views: the noise-level heat map and the amplified residual

# A perceptually ordered colour map (dark blue -> purple -> orange -> yellow), 256 entries.
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float32)
LUT = np.stack([np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, i]) for i in range(3)], -1).astype(np.uint8)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= value (at least 1): a colour bar's top."""
    value = max(float(value), 1.0)
    base = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if m * base >= value - 1e-9:
            return m * base
    return 10 * base


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def heatmap_image(noise_map: torch.Tensor, title: str) -> tuple[Image.Image, float]:
    """(1,1,H,W) noise-level map (0-255 scale) -> RGB heat map, at most VIEW_MAX_SIDE, with a labelled
    colour bar (0 .. top, in 0-255 units) and a title; returns (image, top of the scale)."""
    m = noise_map.detach().float().cpu()
    h, w = m.shape[-2:]
    scale = min(1.0, VIEW_MAX_SIDE / max(h, w))
    if scale < 1:
        m = F.adaptive_avg_pool2d(m, (max(1, round(h * scale)), max(1, round(w * scale))))
    vmax = _nice_ceiling(float(m.max()))
    idx = (m[0, 0].clamp(0, vmax) / vmax * 255).round().to(torch.uint8).numpy()
    body = Image.fromarray(LUT[idx])
    if min(body.size) < 64:  # tiny images: make the map visible
        f = math.ceil(64 / min(body.size))
        body = body.resize((body.width * f, body.height * f), Image.NEAREST)
    bar_w, pad, text_h = 18, 8, 16
    font = _font(13)
    labels = [vmax * i / 4 for i in range(5)]
    label_w = max(int(ImageDraw.Draw(body).textlength(f"{v:g}", font=font)) for v in labels) + 6
    canvas = Image.new("RGB", (body.width + 2 * pad + bar_w + label_w + pad, body.height + text_h + 2 * pad), "white")
    canvas.paste(body, (pad, text_h + pad))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill="black", font=font)
    x0, y0, y1 = body.width + 2 * pad, text_h + pad, text_h + pad + body.height
    grad = np.linspace(255, 0, y1 - y0).round().astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(LUT[grad][:, None], bar_w, axis=1)), (x0, y0))
    for v in labels:
        y = y1 - 1 - round((y1 - y0 - 1) * v / vmax)
        draw.line([(x0 + bar_w, y), (x0 + bar_w + 3, y)], fill="black")
        draw.text((x0 + bar_w + 5, min(max(y - 7, y0 - 7), y1 - 12)), f"{v:g}", fill="black", font=font)
    return canvas, vmax


def residual_view(noisy: torch.Tensor, denoised: torch.Tensor) -> tuple[torch.Tensor, int, tuple[int, int, int, int] | None]:
    """The removed noise, noisy minus denoised ((1,C,H,W), [-1, 1]) amplified around mid-grey:
    0.5 + gain * residual. Gain: a power of two (1-64) that puts about 3 standard deviations at the
    edge of the range. Photos larger than RESIDUAL_MAX_SIDE give a centre crop at full resolution
    (its box (y, x, h, w) is returned, else None) so single pixels stay visible."""
    h, w = noisy.shape[-2:]
    box = None
    if max(h, w) > RESIDUAL_MAX_SIDE:
        ch, cw = min(h, RESIDUAL_MAX_SIDE), min(w, RESIDUAL_MAX_SIDE)
        y, x = (h - ch) // 2, (w - cw) // 2
        box = (y, x, ch, cw)
        noisy, denoised = noisy[..., y : y + ch, x : x + cw], denoised[..., y : y + ch, x : x + cw]
    r = noisy.float() - denoised.float()
    std = float(r.std()) if r.numel() > 1 else 0.0
    gain = 1 if std <= 0 else int(2 ** min(6, max(0, math.floor(math.log2(0.5 / (3 * std))))))
    return (0.5 + gain * r).clamp(0, 1), gain, box


# --- the pipeline


def _out_dir() -> Path:
    """A fresh folder per request (same upload names never collide); folders older than an hour are removed."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        try:
            if now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(dir=OUTPUT_ROOT))


def _gpu(fn):
    """spaces.GPU on ZeroGPU Spaces, the plain function everywhere else."""
    return spaces.GPU(duration=120)(fn) if spaces is not None else fn


@_gpu
def _run_network(weights: Weights, noisy: ImageData, sigma: float | torch.Tensor | None, realism: float, progress,
                 ensemble: bool = False, impulses: bool | None = None, stride: int = 1) -> Restored:
    """restore() on the GPU when there is one: returns its result (image, noise_map, sigma, estimated, ...)."""
    if torch.cuda.is_available():
        weights.to("cuda")
    return restore(weights, noisy, sigma=sigma, impulses=impulses, realism=realism, tile=TILE, overlap=OVERLAP, progress=progress,
                   precision=PRECISION, ensemble=ensemble, stride=stride)


def _may_have_impulses(pixels: torch.Tensor, rows: int = 1024) -> bool:
    """Whether restore()'s salt & pepper check could find anything (`ganlib.impulse.may_have_impulses`): with
    fewer than IMPULSE_MIN_FRACTION of the values at 0 or 1, the check (1.2 s on a 12 MP photo) cannot reach its
    threshold and is skipped with the same outcome."""
    return may_have_impulses(pixels, min_fraction=IMPULSE_MIN_FRACTION, rows=rows)


def _flat(pixels: torch.Tensor) -> bool:
    """Every channel a single value (a 1x1 image, a flat strip): there is no noise to read or remove."""
    flat = pixels.flatten(2)
    return bool((flat.amax(-1) == flat.amin(-1)).all())


class _Stages:
    """Progress per stage ('Reading the image', 'Denoising tile 3/70', ...) and the seconds each took."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._t = time.perf_counter()

    def start(self, name: str, desc: str) -> None:
        self.stop()
        self._name, self._t = name, time.perf_counter()
        if self.progress is not None:
            self.progress(0.0, desc=desc)

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t, 3)
            self._name = None


class _TileClock:
    """ganlib's progress(done, total) -> the page's progress ('Denoising tile 3/8', with the x8 ensemble
    'Denoising view 2/8, tile 1/1', pixel-shuffled 'Denoising sub-image 2/4, tile 3/5' then 'Denoising
    refinement 1/4, tile 2/9' (the whole image, once per sub-image), with realism
    above 0 'Denoising pass 1/2 (texture), tile 3/8'), timing the tiles: the network's own time is its
    pace between tiles times the number of tiles; the rest of restore() (noise estimate, impulse check)
    is what came before the first tile and, pixel-shuffled or in the second realism pass, between the
    sub-images and passes (each sub-image is estimated just before it is denoised), so those steps do
    not count in the pace. passes: 2 when restore() runs the texture and the tone pass (realism above 0,
    no impulse noise), else 1."""

    PASS_NAMES = ("texture", "tone")

    def __init__(self, progress: Any, ensemble: bool, stride: int = 1, passes: int = 1) -> None:
        # pixel-shuffled, restore() denoises the stride x stride sub-images, then refines the whole as many times
        self.progress, self.ensemble, self.subs, self.passes = progress, ensemble, stride * stride, passes
        self.parts = 2 * self.subs if stride > 1 else 1
        self.first = self.last = 0.0
        self.calls = 0
        self.gaps, self.crossings = 0.0, 0  # time and count of the steps from one sub-image or pass to the next
        self._part = (0, 0)

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        passes = self.passes if total % self.passes == 0 else 1
        span = total // passes
        pass_, done = (done - 1) // span, (done - 1) % span + 1  # within the pass
        parts = self.parts if span % self.parts == 0 else 1
        per = span // parts
        part, done, total = (done - 1) // per, (done - 1) % per + 1, per  # within the sub-image
        if self.calls and (pass_, part) != self._part:
            self.gaps, self.crossings = self.gaps + now - self.last, self.crossings + 1
        self._part = (pass_, part)
        self.first = self.first or now
        self.last, self.calls = now, self.calls + 1
        if self.progress is None:
            return
        where = f"pass {pass_ + 1}/{passes} ({self.PASS_NAMES[pass_ % 2]}), " if passes > 1 else ""
        if parts > 1:
            where += f"sub-image {part + 1}/{self.subs}, " if part < self.subs else f"refinement {part + 1 - self.subs}/{self.subs}, "
        if self.ensemble and total % 8 == 0:
            tiles = total // 8
            view, tile = (done - 1) // tiles + 1, (done - 1) % tiles + 1
            desc = f"Denoising {where}view {view}/8, tile {tile}/{tiles}"
        else:
            desc = f"Denoising {where}tile {done}/{total}"
        self.progress((pass_ * span + part * per + done, passes * span), desc=desc, unit="tiles")

    def network_seconds(self, restore_seconds: float) -> float:
        """The network's share of `restore_seconds` (all of it when no two tiles ran back to back)."""
        steps = self.calls - 1 - self.crossings
        if steps < 1:
            return restore_seconds
        return min(restore_seconds, (self.last - self.first - self.gaps) / steps * self.calls)


def run(
    image: Any,
    noise_kind: str = "none",
    noise_params: dict[str, Any] | None = None,
    seed: int | float | None = 0,
    strength: float | None = None,
    realism: float = 0.0,
    progress: Any = None,
    ensemble: bool = False,
    informed: bool = True,
    stride: int = 1,
) -> Result:
    """Load, optionally add synthetic noise, denoise, measure and save. Every bad input -> gr.Error (one sentence).

    noise_params: add_noise parameters of `noise_kind` (see `kind_params`).
    strength: the noise level (0-255 scale) given to the network; None = automatic: the exact map of
      the added noise when the lab added it and `informed`, else estimated from the image.
    progress: a gr.Progress (or None): called at each stage and once per tile.
    ensemble: x8 self-ensemble (8 flips/rotations averaged): 8 times the time for about +0.2 dB.
    stride: pixel-shuffle stride of `restore` (1 = off; 2 = the page's "Camera / phone photo: blotchy noise":
      each of the 4 interleaved sub-images estimated and denoised on its own; 1-4 accepted). It applies with
      an automatic and a manual strength; not to salt & pepper noise (the metrics' `stride` says what ran).
    """
    try:
        return _run(image, noise_kind, noise_params, seed, strength, realism, progress, bool(ensemble), bool(informed), stride)
    except gr.Error:
        raise
    except Exception as err:  # a failure nobody anticipated: logged in full, one sentence for the user
        log.exception("denoising failed")
        detail = (str(err).splitlines() or [""])[0][:200]
        raise gr.Error(f"Denoising failed ({type(err).__name__}{': ' + detail if detail else ''}).") from None


def _check_settings(noise_kind: str, seed: Any, strength: Any, realism: Any) -> tuple[int, float]:
    if noise_kind not in NOISE_KINDS:
        raise gr.Error(f"Unknown noise kind {noise_kind!r}; choose one of {', '.join(NOISE_KINDS)}.")
    try:
        seed = int(seed if seed is not None else 0)
    except (TypeError, ValueError):
        raise gr.Error(f"The seed must be an integer, got {seed!r}.") from None
    if strength is not None and not (isinstance(strength, (int, float)) and 0 <= float(strength) <= 255):
        raise gr.Error(f"Strength must be a noise level between 0 and 255 (or empty for automatic), got {strength!r}.")
    realism = 0.0 if realism is None else realism
    if not (isinstance(realism, (int, float)) and 0 <= float(realism) <= 1):
        raise gr.Error(f"Realism must be between 0 (fidelity) and 1 (GAN), got {realism!r}.")
    return seed, float(realism)


def camera_make(exif: bytes | None) -> str | None:
    """The camera named in a photo's EXIF block (Make and Model, tags 271 and 272, with the ISO of the
    shot when the Exif sub-IFD gives it, tag 34855), or None: a hint that its noise is a camera's,
    blotchy after in-camera processing (the demo then points to the camera option)."""
    if not exif:
        return None
    try:
        tags = Image.Exif()
        tags.load(exif)
        name = " ".join(str(tags.get(t, "")).strip("\x00 ") for t in (271, 272)).strip()[:60]
        iso = tags.get_ifd(0x8769).get(34855)
        iso = iso[0] if isinstance(iso, tuple) and iso else iso
    except Exception:  # a damaged EXIF block is no reason to fail a denoising
        return None
    if not name:
        return None
    return f"{name}, ISO {int(iso)}" if isinstance(iso, (int, float)) and iso > 0 else name


def _check_stride(stride: Any) -> int:
    """The pixel-shuffle stride as an int 1-4 (None = 1, off); anything else -> gr.Error."""
    if stride is None:
        return 1
    if isinstance(stride, float) and stride.is_integer():
        stride = int(stride)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 4:
        raise gr.Error(f"Stride must be a whole number from 1 to 4 (1 = off, 2 = pixel-shuffle for the blotchy noise of "
                       f"camera and phone photos), got {stride!r}.")
    return stride


BROWSER_SHOWS = {".png", ".jpg", ".jpeg"}  # uploads shown as they are in the "original" view (no extra encode)


def _load(image: Any) -> tuple[ImageData, str, Path | None]:
    """-> (image, display name, the uploaded file when a browser can show it as it is, else None)."""
    src, name, nbytes = _source(image)
    if nbytes is not None and nbytes > MAX_FILE_MB * 1024 * 1024:
        raise gr.Error(f"The file is {nbytes / 1e6:.0f} MB; the limit is {MAX_FILE_MB} MB.")
    shown = src if isinstance(src, Path) and src.suffix.lower() in BROWSER_SHOWS else None
    try:
        return load_image(src, max_pixels=MAX_PIXELS), name, shown
    except ImageError as err:
        raise gr.Error(str(err)) from None
    except Exception as err:  # anything the loader did not anticipate is still one sentence, never a traceback
        log.exception("unexpected error while reading %s", name)
        raise gr.Error(f"{name!r} could not be read as an image ({type(err).__name__}).") from None


def _run(image, noise_kind, noise_params, seed, strength, realism, progress, ensemble=False, informed=True, stride=1) -> Result:
    t0 = time.perf_counter()
    stages = _Stages(progress)
    seed, realism = _check_settings(noise_kind, seed, strength, realism)
    stride = _check_stride(stride)
    weights = get_weights()
    if realism > 0 and weights.gan is None:
        raise gr.Error("These weights have no GAN stage, so realism must be 0.")
    stages.start("read", "Reading the image")
    original, name, shown = _load(image)

    params: dict[str, Any] = {}
    noisy: ImageData | None = None
    sigma: float | torch.Tensor | None = None if strength is None else float(strength)
    impulses: bool | None = None
    if noise_kind != "none":
        stages.start("noise", f"Adding {noise_kind} noise")
        params = _noise_params(noise_kind, noise_params or {})
        try:
            pixels = add_noise(original.pixels, noise_kind, seed=seed, quantize=original.bit_depth == 8, **params)
            if strength is None and informed:
                sigma = informed_noise_map(original.pixels, noise_kind, **params)
                impulses = noise_kind == "salt_pepper"  # the lab knows: no impulse detection for the other kinds
        except ValueError as err:
            raise gr.Error(f"Bad noise settings: {err}.") from None
        noisy = original.with_pixels(pixels)
    source = noisy if noisy is not None else original

    if sigma is None and _flat(source.pixels):  # nothing to read noise from and nothing to remove
        stages.start("network", "Flat image: nothing to denoise")
        h, w = source.size
        restored = Restored(image=source, noise_map=torch.zeros(1, 1, h, w), sigma=0.0, estimated=True)
        skipped = True
    else:
        if sigma is None and weights.estimator is not None:
            stages.start("estimate", "Checking for salt & pepper noise")
            if not _may_have_impulses(source.pixels):  # else restore() checks for impulses (1.2 s on 12 MP)
                impulses = False
        # restore() estimates the map itself (and, for camera noise, decides on its second pass from it)
        stages.start("network", "Estimating the noise level" if sigma is None else "Denoising")
        clock = _TileClock(progress, ensemble, stride, passes=2 if realism > 0 and impulses is False else 1)
        try:
            restored = _run_network(weights, source, sigma, realism, clock, ensemble, impulses, stride)
        except torch.OutOfMemoryError:
            raise gr.Error("Out of memory while denoising; try a smaller image.") from None
        stages.stop()
        total = stages.seconds["network"]
        stages.seconds["network"] = round(clock.network_seconds(total), 3)
        if total - stages.seconds["network"] > 0.0005:  # restore()'s own noise estimate and impulse check
            stages.seconds["estimate"] = round(stages.seconds.get("estimate", 0.0) + total - stages.seconds["network"], 3)
        skipped = False
    denoised: ImageData = restored.image
    map_kind = "manual" if strength is not None else ("estimated" if restored.estimated else "informed")
    shuffled = 1 if skipped or restored.impulses else stride  # restore() removes impulses without pixel-shuffle
    notes = list(original.notes)
    if skipped:
        notes.append("flat image: read as noise-free (sigma 0) and returned unchanged")
    elif shuffled != stride:
        notes.append(f"salt & pepper noise was removed by the switching median; pixel-shuffle (stride {stride}) does not apply to it")
    elif noise_kind == "none" and stride == 1 and not restored.impulses:
        # real camera noise is left at stride 1 and realism sharpens it (real-CC15: detail ratio 1.21 -> 1.32 at
        # realism 1, against 0.93 -> 1.05 in the camera-photo mode)
        sharpen = " (realism sharpens whatever noise is left)" if realism > 0 else ""
        if camera := camera_make(original.exif):
            notes.append(f"a camera photo ({camera}): if colour blotches remain, tick 'Camera / phone photo: blotchy noise'{sharpen}")
        elif realism > 0:
            notes.append("realism sharpens whatever noise is left: for a camera or phone photo, tick "
                         "'Camera / phone photo: blotchy noise' so that the noise goes first")

    # the automatic strength allows for the noise JPEG compression removed (colour photos; see ganlib.noise_level)
    jpeg_quality = estimate_jpeg_quality(source.pixels) if map_kind == "estimated" and not skipped else None
    if jpeg_quality is not None and shuffled == 1 and not restored.gray_model and not restored.impulses and restored.sigma >= JPEG_LIFT_MIN_SIGMA:
        notes.append(f"JPEG compression read from the pixels (quality about {jpeg_quality}): the estimated noise level "
                     "is that of the noise before compression, which JPEG partly removed")

    out = _out_dir()
    stem = _safe_stem(name)
    view = out / "view"  # display copies; the download sits alone in `out` under its final name
    view.mkdir()
    stages.start("write", "Writing lossless PNGs")
    # the full-size PNGs are encoded in the background (zlib releases the GIL) while the metrics run
    pool = ThreadPoolExecutor(max_workers=2)
    pending: dict[str, Future] = {"denoised": pool.submit(save_image, denoised, out / f"{stem}_denoised.png", compress_level=PNG_LEVEL)}
    if noisy is not None:
        pending["noisy"] = pool.submit(save_image, noisy, view / f"{stem}_noisy.png", compress_level=PNG_LEVEL)
    if shown is None:  # a browser shows PNG and JPEG uploads as they are (upright by their EXIF, like ours)
        pending["original"] = pool.submit(save_image, original, view / f"{stem}_original.png", compress_level=PNG_LEVEL)

    metrics: dict[str, Any] = {
        "file": name,
        "mode": "lab" if noisy is not None else "photo",
        "width": original.pixels.shape[-1],
        "height": original.pixels.shape[-2],
        "channels": original.pixels.shape[1],
        "bit_depth": original.bit_depth,
        "alpha": original.alpha is not None,
        "exif": original.exif is not None,
        "noise_kind": noise_kind,
        "noise_params": params,
        "seed": seed if noisy is not None else None,
        "noise_map": map_kind,  # informed (the lab's exact map), estimated, or manual
        "sigma_estimator": ("learned (estimator/)" if weights.estimator is not None else "wavelet (scikit-image)") if map_kind == "estimated" else None,
        "sigma_used": round(float(restored.sigma), 3),
        "sigma_estimated": round(float(restored.sigma), 3) if map_kind == "estimated" else None,
        "jpeg_quality": jpeg_quality,  # the quality the input was last JPEG-compressed at, read from its pixels (estimated maps only)
        "strength": "manual" if strength is not None else "auto",
        "impulses_removed": bool(restored.impulses),
        "impulse_fraction": round(float(restored.impulse_fraction), 5),
        "realism": realism,
        "ensemble": ensemble,
        "stride": shuffled,  # 2: pixel-shuffled for camera noise (the 4 interleaved sub-images denoised one by one, then refined)
        "network_skipped": skipped,
        "precision": resolve_precision(PRECISION, "cuda" if torch.cuda.is_available() else "cpu"),
        "weights": weights.source,
        "generator": "gray (gray/)" if restored.gray_model else "colour (fidelity/)",
        "notes": notes,
    }
    try:
        stages.start("metrics", "Measuring PSNR / SSIM")
        if noisy is not None:
            (pn, sn), (pd, sd) = quality(original.pixels, noisy.pixels, denoised.pixels)
            metrics.update(psnr_noisy=pn, ssim_noisy=sn, psnr_denoised=pd, ssim_denoised=sd)
        stages.start("views", "Drawing the noise-level map and the residual")
        files: dict[str, Path] = {}
        captions = _write_views(view, stem, source.pixels, denoised.pixels, restored.noise_map, map_kind, files, shuffled)
        if realism > 0 and not skipped:
            stages.start("views", "Comparing realism 0 on a textured crop")
            files["realism"] = view / f"{stem}_realism.png"
            captions["realism"] = realism_view(weights, source.pixels, denoised.pixels, restored.noise_map, realism, files["realism"],
                                               shuffled, impulses=restored.impulses)
        stages.start("write", "Writing lossless PNGs")
        for key, fut in pending.items():
            files[key] = fut.result()
        if shown is not None:
            files["original"] = shown
    finally:
        pool.shutdown(wait=True)
    stages.stop()
    metrics["seconds"] = stages.seconds
    metrics["seconds_network"] = stages.seconds.get("network", 0.0)
    metrics["seconds_total"] = round(time.perf_counter() - t0, 3)
    log.info("%s %dx%d %s: %s", name, metrics["width"], metrics["height"], noise_kind, stages.seconds)
    return Result(original, noisy, denoised, restored.noise_map, metrics, metrics["seconds_total"], files, captions)


REALISM_CROP = 128  # side of the realism comparison crop, shown at 200%
REALISM_HINT = "Set **realism** above 0 and denoise: this tab then shows a textured crop at realism 0 beside the chosen realism, at 200%."


def realism_view(weights: Weights, noisy: torch.Tensor, denoised: torch.Tensor, noise_map: torch.Tensor, realism: float,
                 path: Path, stride: int = 1, *, impulses: bool = False) -> str:
    """Side by side at 200%, the most textured REALISM_CROP window: realism 0 (computed here on that window
    plus a margin, with the same map and pixel-shuffle `stride` as the result; `impulses`: the result's
    salt & pepper was removed first, so it is here too) | the result at `realism`.
    Writes the PNG to `path`, returns its caption."""
    h, w = denoised.shape[-2:]
    side = min(REALISM_CROP, h, w)
    y, x = most_textured_window(denoised, side)
    m = 32 * stride  # the same margin in the (sub-)images the network sees
    y0, x0, y1, x1 = max(0, y - m), max(0, x - m), min(h, y + side + m), min(w, x + side + m)
    # every stride-th pixel of the window is every stride-th pixel of the photo: the same sub-images, cropped
    base = restore(weights, ImageData(pixels=noisy[..., y0:y1, x0:x1]), sigma=noise_map[..., y0:y1, x0:x1].float(),
                   impulses=impulses, realism=0.0, tile=None, precision=PRECISION, stride=stride).image.pixels
    a = base[..., y - y0 : y - y0 + side, x - x0 : x - x0 + side]
    b = denoised[..., y : y + side, x : x + side].float()
    pair = torch.nn.functional.interpolate(torch.cat([a, torch.ones_like(a[..., :4]), b], -1), scale_factor=2, mode="nearest")
    img = to_pil(pair)
    canvas = Image.new("RGB", (img.width, img.height + 20), "white")
    canvas.paste(img.convert("RGB"), (0, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "realism 0 (fidelity)", fill="black", font=_font(13))
    draw.text((img.width // 2 + 6, 3), f"realism {realism:g}", fill="black", font=_font(13))
    canvas.save(path, compress_level=PNG_LEVEL)
    diff = float((a - b).abs().mean()) * 255
    return (f"**Realism {realism:g} against 0** on the most textured {side}x{side} window (x={x}, y={y}), at 200%: "
            f"mean difference {diff:.2f} levels. Realism blends the two networks' weights towards the GAN stage for texture, "
            "then raises the fine detail that denoising shrank, in proportion to the noise level (when the noise is known, "
            "up to the clean photo's detail, estimated from the noisy one). "
            "The GAN's texture goes only where the photo has detail: flat areas (sky, skin, walls) stay smooth.")


def _write_views(folder: Path, stem: str, noisy: torch.Tensor, denoised: torch.Tensor, noise_map: torch.Tensor,
                 map_kind: str, files: dict[str, Path], stride: int = 1) -> dict[str, str]:
    """The heat map and the residual PNGs (into `files`); returns their captions."""
    how = {
        "informed": "informed: the exact map of the noise the lab added",
        "estimated": "estimated from the image",
        "manual": "set by hand (strength)",
    }[map_kind]
    if stride > 1 and map_kind == "estimated":
        how += f", each of the {stride * stride} pixel-shuffled sub-images on its own, interleaved"
    heat, vmax = heatmap_image(noise_map, f"noise level, 0-255 scale ({map_kind})")
    files["map"] = folder / f"{stem}_noise_map.png"
    heat.save(files["map"], compress_level=PNG_LEVEL)
    m = noise_map.float()
    map_caption = (f"**Noise-level map** that conditioned the network ({how}): mean {float(m.mean()):.2f}, "
                   f"min {float(m.min()):.2f}, max {float(m.max()):.2f} on the 0-255 scale; colour bar 0-{vmax:g}.")
    resid, gain, box = residual_view(noisy, denoised)
    files["residual"] = save_image(ImageData(pixels=resid), folder / f"{stem}_residual.png", compress_level=PNG_LEVEL)
    where = f"centre crop {box[3]}x{box[2]} at x={box[1]}, y={box[0]}, full resolution" if box else "whole image"
    resid_caption = (f"**Removed noise** (noisy minus denoised) amplified x{gain} around mid-grey "
                     f"(grey = nothing removed; {where}).")
    return {"map": map_caption, "residual": resid_caption}


# ----------------------------------------------------------------------------- compare every kind


def compare(image: Any, settings: dict[str, Any] | None = None, seed: int | float | None = 0, realism: float = 0.0,
            progress: Any = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]], str]:
    """All five noise kinds on the same photo (a centre crop of at most COMPARE_MAX_SIDE of larger ones),
    each at the lab's settings, denoised with its informed map.

    Returns (table rows: kind, settings, psnr_noisy, psnr_denoised, ssim_noisy, ssim_denoised, seconds;
    gallery items (PNG path, caption): noisy and denoised per kind; a note on the crop)."""
    seed, realism = _check_settings("none", seed, None, realism)
    weights = get_weights()
    if realism > 0 and weights.gan is None:
        raise gr.Error("These weights have no GAN stage, so realism must be 0.")
    if progress is not None:
        progress(0.0, desc="Reading the image")
    original, name, _ = _load(image)
    h, w = original.size
    crop, (y, x, ch, cw) = crop_for_compare(original.pixels, max_side=COMPARE_MAX_SIDE)
    note = (f"Centre crop {cw}x{ch} at x={x}, y={y} of the {w}x{h} photo (comparisons run on at most "
            f"{COMPARE_MAX_SIDE}x{COMPARE_MAX_SIDE} pixels)." if (ch, cw) != (h, w) else f"Whole photo, {w}x{h}.")
    levels = {kind: kind_params(kind, settings or {}) for kind in KINDS}
    try:
        rows = _compare_kinds(weights, crop, levels, seed, realism, progress)
    except ValueError as err:
        raise gr.Error(f"Bad noise settings: {err}.") from None
    out = _out_dir()
    stem = _safe_stem(name)
    table, gallery = [], []
    for r in rows:
        desc = describe_params(r.kind, r.params)
        table.append({
            "kind": r.kind, "settings": desc,
            "psnr_noisy": _round(r.psnr_noisy, 3), "psnr_denoised": _round(r.psnr_denoised, 3),
            "ssim_noisy": _round(r.ssim_noisy, 4), "ssim_denoised": _round(r.ssim_denoised, 4),
            "seconds": round(float(r.seconds), 3),
        })
        for which in ("noisy", "denoised"):
            shown = ImageData(pixels=getattr(r, which), bit_depth=original.bit_depth, icc_profile=original.icc_profile)
            path = save_image(shown, out / f"{stem}_{r.kind}_{which}.png", compress_level=PNG_LEVEL)
            p, s = (r.psnr_noisy, r.ssim_noisy) if which == "noisy" else (r.psnr_denoised, r.ssim_denoised)
            gallery.append((str(path), f"{r.kind} ({desc}) {which}: {_fmt(p, 2)} dB, SSIM {_fmt(s, 4)}"))
    return table, gallery, note


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{x:.{digits}f}"


def _compare_kinds(weights: Weights, clean: torch.Tensor, levels: dict[str, dict], seed: int, realism: float,
                   progress: Any) -> list[KindComparison]:
    """`ganlib.compare.compare_kinds` (noise clipped and 8-bit, informed maps) with the page's progress."""

    def report(done: int, total: int, kind: str) -> None:
        if progress is not None:
            progress((done, total), desc=f"Compared {kind} ({done}/{total})")

    return compare_kinds(weights, clean, levels=levels, seed=seed, realism=realism, precision=PRECISION, informed=True, progress=report)


# ----------------------------------------------------------------------------- API and UI wrappers


def _settings(**values: Any) -> dict[str, Any]:
    return {k: values[k] for k in SETTING_NAMES}


def api_denoise(
    image: Any,
    noise_kind: str = "none",
    sigma: float = LAB_DEFAULTS["sigma"],
    peak: float = LAB_DEFAULTS["peak"],
    amount: float = LAB_DEFAULTS["amount"],
    salt_ratio: float = LAB_DEFAULTS["salt_ratio"],
    whole_pixel: bool = LAB_DEFAULTS["whole_pixel"],
    speckle_sigma: float = LAB_DEFAULTS["speckle_sigma"],
    camera_peak: float = LAB_DEFAULTS["camera_peak"],
    camera_read: float = LAB_DEFAULTS["camera_read"],
    camera_quality: int = LAB_DEFAULTS["camera_quality"],
    seed: int | None = 0,
    informed: bool = True,
    strength: float | None = None,
    realism: float = 0.0,
    ensemble: bool = False,
    stride: int = 1,
    progress: gr.Progress = gr.Progress(),
) -> tuple[str, dict[str, Any]]:
    """Denoise one image (optionally after adding synthetic noise) and return (denoised PNG, metrics).

    noise_kind: none (photo mode: nothing added) | gaussian | poisson | salt_pepper | speckle | camera.
    Lab settings (only the chosen kind's apply): sigma (gaussian, 0-255), peak (poisson photons at white),
    amount, salt_ratio, whole_pixel (salt_pepper), speckle_sigma, camera_peak, camera_read (0-255),
    camera_quality (JPEG 1-100, 0 = none). informed: tell the network the exact noise-level map of the
    added noise. strength: noise level 0-255 for the network; empty = automatic. realism: 0 (fidelity)
    .. 1 (GAN). ensemble: average the 8 flips/rotations (8 times the time, about +0.2 dB).
    stride: 1 = off (the default); 2 = pixel-shuffle for the blotchy, spatially correlated noise of camera
    and phone photos (the page's "Camera / phone photo: blotchy noise"; about +1.6 dB on CC15, 5x the time), at an
    automatic or a manual strength. It softens fine texture and is worse on fine-grained and synthetic
    noise, so leave it at 1 for those (the page offers it in photo mode only). 1-4 accepted; the metrics'
    `stride` says what ran (1 when salt & pepper noise was removed instead).
    """
    settings = _settings(sigma=sigma, peak=peak, amount=amount, salt_ratio=salt_ratio, whole_pixel=whole_pixel,
                         speckle_sigma=speckle_sigma, camera_peak=camera_peak, camera_read=camera_read, camera_quality=camera_quality)
    res = run(image, noise_kind, kind_params(noise_kind, settings) if noise_kind in KIND_SETTINGS else {}, seed, strength,
              realism, progress, ensemble, informed, stride)
    return str(res.files["denoised"]), res.metrics


def api_compare_kinds(image: Any, seed: int | None = 0, progress: gr.Progress = gr.Progress()) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """All five noise kinds at the default lab settings on the same photo (a labelled centre crop of large
    ones): (table rows with kind, settings, psnr_noisy, psnr_denoised, ssim_noisy, ssim_denoised, seconds,
    crop; gallery of (PNG, caption), noisy and denoised per kind)."""
    table, gallery, note = compare(image, None, seed, 0.0, progress)
    for row in table:
        row["crop"] = note
    return table, gallery


def _metrics_markdown(res: Result) -> str:
    m = res.metrics
    lines = [
        f"**{m['file']}** - {m['width']} x {m['height']}, {'gray' if m['channels'] == 1 else 'RGB'}"
        f"{' + alpha' if m['alpha'] else ''}, {m['bit_depth']}-bit",
    ]
    if m["mode"] == "lab":
        lines.append(f"- noise added: {m['noise_kind']} ({describe_params(m['noise_kind'], m['noise_params'])}), seed {m['seed']}")
    how = {"informed": "informed (the exact map of the added noise)", "estimated": f"estimated ({m['sigma_estimator']})",
           "manual": "set by hand"}[m["noise_map"]]
    lines.append(f"- noise level given to the network: sigma = {m['sigma_used']:.2f} (0-255), {how}")
    if m["stride"] > 1:
        lines.append(f"- pixel-shuffled ×{m['stride']} for camera noise: the {m['stride'] ** 2} interleaved sub-images denoised one by one, "
                     f"then the whole refined once per sub-image")
    if m["generator"].startswith("gray"):
        lines.append("- gray photo: denoised by the generator trained on gray photos")
    if m["impulses_removed"]:
        lines.append(f"- impulses removed first by a switching median: {100 * m['impulse_fraction']:.2f}% of values")
    realism = "fidelity" if m["realism"] == 0 else ("GAN" if m["realism"] == 1 else "blend")
    lines.append(f"- realism {m['realism']:.2f} ({realism}), precision {m['precision']}{', x8 ensemble' if m['ensemble'] else ''}")
    if "psnr_noisy" in m:
        lines += [
            "",
            "| vs original | PSNR (dB) | SSIM |",
            "|---|---|---|",
            f"| noisy | {_fmt(m['psnr_noisy'], 2)} | {_fmt(m['ssim_noisy'], 4)} |",
            f"| denoised | {_fmt(m['psnr_denoised'], 2)} | {_fmt(m['ssim_denoised'], 4)} |",
            "",
        ]
    else:
        lines.append("- no synthetic noise added, so there is no clean reference to score against")
    s = m["seconds"]
    rest = m["seconds_total"] - m["seconds_network"]
    lines.append(f"- time: {m['seconds_network']:.2f} s network ({m['precision']}{', x8 ensemble' if m['ensemble'] else ''}), "
                 f"{m['seconds_total']:.2f} s in all ({rest:.2f} s outside the network: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k != "network") + ")")
    lines += [f"- note: {n}" for n in m["notes"]]
    return "\n".join(lines)


DENOISE_OUTPUTS = 14  # slider, original, noisy, denoised, metrics md, download, metrics json, map, map md, residual, residual md,
#                      realism crop, realism md, status


def ui_denoise(
    image: Any,
    mode: str,
    noise_kind: str,
    sigma: float,
    peak: float,
    amount: float,
    salt_ratio: float,
    whole_pixel: bool,
    speckle_sigma: float,
    camera_peak: float,
    camera_read: float,
    camera_quality: float,
    seed: float,
    informed: bool,
    auto_strength: bool,
    strength: float,
    realism: float,
    ensemble: bool = False,
    camera_noise: bool = False,
    progress: gr.Progress = gr.Progress(),
) -> tuple:
    """The page's Denoise button. Photo mode adds nothing. An error leaves the previous results on the page
    (every output unchanged) and is shown in the status line and as a toast. camera_noise (photo mode only,
    hidden in the lab): pixel-shuffle stride 2 for the blotchy noise of camera photos."""
    kind = noise_kind if mode == MODES[1] else "none"
    stride = 2 if camera_noise and kind == "none" else 1
    settings = _settings(sigma=sigma, peak=peak, amount=amount, salt_ratio=salt_ratio, whole_pixel=whole_pixel,
                         speckle_sigma=speckle_sigma, camera_peak=camera_peak, camera_read=camera_read, camera_quality=camera_quality)
    try:
        res = run(image, kind, kind_params(kind, settings) if kind != "none" else {}, seed, None if auto_strength else strength,
                  realism, progress, ensemble, informed, stride)
    except gr.Error as err:
        gr.Warning(err.message)
        return (*[gr.update() for _ in range(DENOISE_OUTPUTS - 1)], f"**Error:** {err.message} (the previous results are kept)")
    before = res.files.get("noisy") or res.files["original"]
    name = res.files["denoised"].name
    return (
        (str(before), str(res.files["denoised"])),
        str(res.files["original"]),
        gr.update(value=str(res.files["noisy"]) if "noisy" in res.files else None, visible="noisy" in res.files),
        str(res.files["denoised"]),
        _metrics_markdown(res),
        gr.update(value=str(res.files["denoised"]), label=f"Download {name}", visible=True),
        res.metrics,
        str(res.files["map"]),
        res.captions["map"],
        str(res.files["residual"]),
        res.captions["residual"],
        str(res.files["realism"]) if "realism" in res.files else None,
        res.captions.get("realism", REALISM_HINT),
        "",
    )


def ui_compare(
    image: Any, sigma: float, peak: float, amount: float, salt_ratio: float, whole_pixel: bool, speckle_sigma: float,
    camera_peak: float, camera_read: float, camera_quality: float, seed: float, realism: float, progress: gr.Progress = gr.Progress(),
) -> tuple:
    """The lab's 'Compare all five kinds' button: gallery, table, note; an error keeps the previous ones."""
    settings = _settings(sigma=sigma, peak=peak, amount=amount, salt_ratio=salt_ratio, whole_pixel=whole_pixel,
                         speckle_sigma=speckle_sigma, camera_peak=camera_peak, camera_read=camera_read, camera_quality=camera_quality)
    try:
        table, gallery, note = compare(image, settings, seed, realism, progress)
    except gr.Error as err:
        gr.Warning(err.message)
        return gr.update(), gr.update(), gr.update(), f"**Error:** {err.message} (the previous results are kept)"
    cols = ["kind", "PSNR dB: noisy → denoised", "SSIM: noisy → denoised"]  # three columns: readable on a phone
    rows = [[r["kind"], f"{_fmt(r['psnr_noisy'], 2)} → {_fmt(r['psnr_denoised'], 2)}",
             f"{_fmt(r['ssim_noisy'], 3)} → {_fmt(r['ssim_denoised'], 3)}"] for r in table]
    return gallery, gr.update(value=rows, headers=cols), note, ""


def describe_upload(image: Any) -> str:
    """File name, size and pixel format of the upload, from its header only (no full decode)."""
    if image is None:
        return ""
    try:
        src, name, nbytes = _source(image)
    except gr.Error as err:
        return err.message
    size = f"{nbytes / 1e6:.2f} MB" if nbytes and nbytes >= 1e5 else f"{(nbytes or 0) / 1e3:.1f} kB"
    try:
        with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as im:
            w, h, mode, fmt = im.width, im.height, im.mode, im.format
    except Exception:
        return f"**{name}** ({size}) - not a readable image"
    warn = f" - over the {MAX_PIXELS / 1e6:.0f} MP limit" if w * h > MAX_PIXELS else ""
    return f"**{name}** - {w} x {h} px, {fmt} {mode}, {size}{warn}"


# ----------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One example: a photo, the mode it opens in, and only the settings that apply to it."""

    name: str
    label: str
    mode: str
    kind: str  # the lab's noise kind ('gaussian' for photo-mode examples: the lab's default)
    settings: dict[str, Any]
    path: str = ""


def make_examples(folder: Path) -> list[Example]:
    """Compact examples from scikit-image's bundled sample photos, written once as PNG: one per noise kind
    (Noise lab), a grayscale photo, and a real noisy photo (Denoise my photo)."""
    import skimage.data as data

    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        Example("astronaut", "Lab: gaussian, sigma 25", MODES[1], "gaussian", {"sigma": 25}),
        Example("coffee", "Lab: poisson, peak 20", MODES[1], "poisson", {"peak": 20}),
        Example("chelsea", "Lab: salt & pepper, 8%", MODES[1], "salt_pepper", {"amount": 0.08}),
        Example("rocket", "Lab: speckle, sigma 0.25", MODES[1], "speckle", {"speckle_sigma": 0.25}),
        Example("immunohistochemistry", "Lab: camera, peak 80, JPEG 85", MODES[1], "camera",
                {"camera_peak": 80, "camera_read": 3, "camera_quality": 85}),
        Example("camera_gray", "Grayscale photo: gaussian, sigma 15", MODES[1], "gaussian", {"sigma": 15}),
        Example("hubble_deep_field", "Real noisy photo: denoise as is", MODES[0], "gaussian", {}),
    ]
    makers = {
        "astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket,
        "immunohistochemistry": data.immunohistochemistry, "camera_gray": data.camera,
        "hubble_deep_field": lambda: data.hubble_deep_field()[100:612, 200:712],  # a real noisy photo (sensor noise, JPEG)
    }
    for ex in specs:
        path = folder / f"{ex.name}.png"
        if not path.exists():
            save_image(load_image(np.ascontiguousarray(makers[ex.name]())), path)
        ex.path = str(path)
    return specs


def example_updates(ex: Example) -> list[Any]:
    """Values for [image, mode, noise_kind, *settings, auto_strength, camera_noise]: the example's settings, the
    rest (and the per-photo denoise settings: automatic strength, no pixel-shuffle) at defaults."""
    values = {**LAB_DEFAULTS, **ex.settings}
    return [ex.path, ex.mode, ex.kind, *[values[k] for k in SETTING_NAMES], True, False]


# ----------------------------------------------------------------------------- page

INTRO = """# GAN image denoiser
**Denoise my photo**: drop in a noisy photo (or paste one, or use the webcam) and denoise it as it is.
**Noise lab**: add noise of a chosen kind to a clean photo, compare noisy and denoised with PSNR/SSIM, or
compare all five kinds at once. Every view is a lossless PNG at full resolution, and the download keeps
16-bit depth, grayscale, transparency and EXIF."""

CSS = """
#examples .gallery-item { max-width: 150px; }
"""


def build_demo(examples_dir: Path | None = None) -> gr.Blocks:
    """The Blocks app (not launched). Loads the weights once to say on the page which are in use."""
    banner = weights_banner()
    has_gan = _weights is not None and _weights.gan is not None
    examples = make_examples(examples_dir or Path(tempfile.gettempdir()) / "ganlib-demo-examples")
    d = LAB_DEFAULTS

    with gr.Blocks(title="GAN image denoiser", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(banner, elem_id="weights")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="mode")
                image = gr.Image(label="Input image", type="filepath", image_mode=None, format="png",
                                 sources=["upload", "clipboard", "webcam"], elem_id="input-image")
                info = gr.Markdown(elem_id="file-info")
                with gr.Group(visible=False, elem_id="lab") as lab:
                    gr.Markdown("### Noise lab: noise to add")
                    kind = gr.Radio(list(KINDS), value="gaussian", label="noise_kind", elem_id="noise-kind")
                    sigma = gr.Slider(0, 100, value=d["sigma"], step=1, label="sigma: gaussian std (0-255 scale)")
                    peak = gr.Slider(1, 500, value=d["peak"], step=1, label="peak: photons at white (lower = noisier)", visible=False)
                    amount = gr.Slider(0, 0.5, value=d["amount"], step=0.01, label="amount: share of values hit", visible=False)
                    salt_ratio = gr.Slider(0, 1, value=d["salt_ratio"], step=0.05, label="salt_ratio: share of white ones", visible=False)
                    whole_pixel = gr.Checkbox(d["whole_pixel"], label="whole_pixel: all channels of a pixel hit together",
                                              visible=False, interactive=HAS_WHOLE_PIXEL)
                    speckle_sigma = gr.Slider(0, 1, value=d["speckle_sigma"], step=0.01, label="speckle_sigma: multiplicative std", visible=False)
                    camera_peak = gr.Slider(1, 1000, value=d["camera_peak"], step=1, label="camera_peak: photons at white", visible=False)
                    camera_read = gr.Slider(0, 20, value=d["camera_read"], step=0.5, label="camera_read: read noise (0-255)", visible=False)
                    camera_quality = gr.Slider(0, 100, value=d["camera_quality"], step=1, label="camera_quality: JPEG (0 = none)", visible=False)
                    seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
                    informed = gr.Checkbox(True, label="informed: tell the network the exact noise level it got (else estimated)")
                    compare_btn = gr.Button("Compare all five kinds", elem_id="compare-btn")
                with gr.Group():
                    gr.Markdown("### Denoise")
                    auto_strength = gr.Checkbox(True, label="automatic strength (lab: the exact map; photo: estimated)", elem_id="auto-strength")
                    strength = gr.Slider(0, 255, value=25, step=0.5, label="strength: noise level sigma (0-255)", visible=False, elem_id="strength")
                    camera_noise = gr.Checkbox(
                        False, label="Camera / phone photo: blotchy noise", elem_id="camera-noise",
                        info="Denoises every other pixel on its own (pixel-shuffle ×2, API stride=2), then refines the whole: it removes "
                             "the coarse, blotchy noise of real camera and phone photos, in 5x the time. It softens fine texture: "
                             "leave it off for clean or finely textured photos and for fine-grained or synthetic noise.")
                    realism = gr.Slider(0, 1, value=0, step=0.05, label="realism: fidelity (0) to GAN (1)", interactive=has_gan,
                                        info="more fine texture and detail, at a small cost in PSNR; twice the time"
                                        if has_gan else "disabled: these weights have no GAN stage")
                    ensemble = gr.Checkbox(False, label="best quality: average 8 flips/rotations (8x slower, about +0.2 dB)")
                    run_btn = gr.Button("Denoise", variant="primary", elem_id="denoise-btn")
                status = gr.Markdown(elem_id="status")
                dataset = gr.Dataset(
                    components=[gr.Image(visible=False, type="filepath")], samples=[[ex.path] for ex in examples],
                    sample_labels=[ex.label for ex in examples], type="index", layout="gallery", samples_per_page=10,
                    label="Examples (scikit-image sample photos; each opens in its mode)", elem_id="examples",
                )
            with gr.Column(scale=2, min_width=320):
                with gr.Tabs(elem_id="views") as tabs:
                    with gr.Tab("Before / after", id="slider-tab"):
                        slider = gr.ImageSlider(label="Before / after (drag)", type="filepath", format="png", elem_id="slider", max_height=700)
                    with gr.Tab("Noise-level map", id="map-tab", elem_id="map-tab"):
                        map_md = gr.Markdown(elem_id="map-caption")
                        map_img = gr.Image(label="noise-level map (0-255)", show_label=False, type="filepath", format="png", interactive=False,
                                           elem_id="noise-map", buttons=["download", "fullscreen"])
                    with gr.Tab("Removed noise", id="residual-tab", elem_id="residual-tab"):
                        resid_md = gr.Markdown(elem_id="residual-caption")
                        resid_img = gr.Image(label="residual: noisy - denoised, amplified", show_label=False, type="filepath", format="png",
                                             interactive=False, elem_id="residual", buttons=["download", "fullscreen"])
                    with gr.Tab("Realism", id="realism-tab", elem_id="realism-tab"):
                        realism_md = gr.Markdown(REALISM_HINT, elem_id="realism-caption")
                        realism_img = gr.Image(label="realism 0 | chosen realism, 200%", show_label=False, type="filepath", format="png",
                                               interactive=False, elem_id="realism-crop", buttons=["download", "fullscreen"])
                    with gr.Tab("Images", id="images-tab"):
                        with gr.Row():
                            out_original = gr.Image(label="original", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
                            out_noisy = gr.Image(label="noisy", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
                            out_denoised = gr.Image(label="denoised", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
                    with gr.Tab("Compare kinds", id="compare-tab", elem_id="compare-tab"):
                        compare_note = gr.Markdown("Noise lab: **Compare all five kinds** runs every kind on this photo.", elem_id="compare-note")
                        compare_gallery = gr.Gallery(label="noisy | denoised, per kind", columns=2, elem_id="compare-gallery",
                                                     object_fit="contain", height="auto")
                        compare_table = gr.Dataframe(label="summary", interactive=False, elem_id="compare-table", wrap=True)
                metrics_md = gr.Markdown(elem_id="metrics")
                download = gr.DownloadButton("Download", visible=False, elem_id="download")
                metrics_json = gr.JSON(label="metrics", visible=False)

        settings = [sigma, peak, amount, salt_ratio, whole_pixel, speckle_sigma, camera_peak, camera_read, camera_quality]
        owner = ["gaussian", "poisson", "salt_pepper", "salt_pepper", "salt_pepper", "speckle", "camera", "camera", "camera"]
        kind.change(lambda k: [gr.update(visible=k == o) for o in owner], kind, settings, api_visibility="private", queue=False)
        mode.change(lambda m: (gr.update(visible=m == MODES[1]), gr.update(visible=m == MODES[0])), mode, [lab, camera_noise],
                    api_visibility="private", queue=False)
        auto_strength.change(lambda a: gr.update(visible=not a), auto_strength, strength, api_visibility="private", queue=False)
        image.change(describe_upload, image, info, preprocess=False, api_visibility="private", queue=False)
        dataset.click(lambda i: example_updates(examples[i]), dataset, [image, mode, kind, *settings, auto_strength, camera_noise],
                      api_visibility="private", queue=False)

        run_btn.click(
            ui_denoise,
            inputs=[image, mode, kind, *settings, seed, informed, auto_strength, strength, realism, ensemble, camera_noise],
            outputs=[slider, out_original, out_noisy, out_denoised, metrics_md, download, metrics_json, map_img, map_md,
                     resid_img, resid_md, realism_img, realism_md, status],
            preprocess=False, api_visibility="private", concurrency_id="denoise", concurrency_limit=CONCURRENCY,
        )
        compare_btn.click(lambda: gr.Tabs(selected="compare-tab"), None, tabs, api_visibility="private", queue=False)
        compare_btn.click(
            ui_compare, inputs=[image, *settings, seed, realism], outputs=[compare_gallery, compare_table, compare_note, status],
            preprocess=False, api_visibility="private", concurrency_id="denoise", concurrency_limit=CONCURRENCY,
        )

        # The public API: fixed, documented parameters on hidden components (names = the UI's settings).
        with gr.Column(visible=False):
            a_image = gr.Image(label="image", type="filepath", image_mode=None, format="png")
            a_kind = gr.Dropdown(list(NOISE_KINDS), value="none", label="noise_kind", info="none = photo mode: nothing added")
            a_settings = [
                gr.Number(value=d["sigma"], label="sigma", info="gaussian: std on the 0-255 scale"),
                gr.Number(value=d["peak"], label="peak", info="poisson: photons at white"),
                gr.Number(value=d["amount"], label="amount", info="salt_pepper: share of values hit"),
                gr.Number(value=d["salt_ratio"], label="salt_ratio", info="salt_pepper: share of white impulses"),
                gr.Checkbox(d["whole_pixel"], label="whole_pixel", info="salt_pepper: all channels of a pixel together"),
                gr.Number(value=d["speckle_sigma"], label="speckle_sigma", info="speckle: multiplicative std"),
                gr.Number(value=d["camera_peak"], label="camera_peak", info="camera: photons at white"),
                gr.Number(value=d["camera_read"], label="camera_read", info="camera: read noise, 0-255"),
                gr.Number(value=d["camera_quality"], precision=0, label="camera_quality", info="camera: JPEG quality, 0 = none"),
            ]
            a_seed = gr.Number(value=0, precision=0, label="seed")
            a_informed = gr.Checkbox(True, label="informed", info="lab: give the network the exact map of the added noise")
            a_strength = gr.Number(value=None, label="strength", info="noise level 0-255 for the network; empty = automatic")
            a_realism = gr.Number(value=0.0, label="realism", info="0 = fidelity, 1 = GAN")
            a_ensemble = gr.Checkbox(False, label="ensemble", info="average 8 flips/rotations: 8x the time, about +0.2 dB")
            a_stride = gr.Number(value=1, precision=0, label="stride",
                                 info="1 = off; 2 = pixel-shuffle for the blotchy noise of camera/phone photos (softens fine texture)")
            a_file = gr.File(label="denoised PNG")
            a_metrics = gr.JSON(label="metrics")
            a_btn = gr.Button("api")
            c_table = gr.JSON(label="table")
            c_gallery = gr.Gallery(label="images")
            c_btn = gr.Button("compare api")
        a_btn.click(
            api_denoise,
            inputs=[a_image, a_kind, *a_settings, a_seed, a_informed, a_strength, a_realism, a_ensemble, a_stride],
            outputs=[a_file, a_metrics], preprocess=False, api_name="denoise",
            concurrency_id="denoise", concurrency_limit=CONCURRENCY,
        )
        c_btn.click(api_compare_kinds, inputs=[a_image, a_seed], outputs=[c_table, c_gallery], preprocess=False,
                    api_name="compare_kinds", concurrency_id="denoise", concurrency_limit=CONCURRENCY)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def launch(demo: gr.Blocks, **kwargs: Any):
    """Launch with the demo's limits; kwargs override (tests use prevent_thread_lock=True, server_port=...)."""
    opts: dict[str, Any] = dict(max_file_size=f"{MAX_FILE_MB}mb", show_error=True, css=CSS,
                                server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    opts.update(kwargs)
    return demo.launch(**opts)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    launch(build_demo())
