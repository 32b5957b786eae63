"""The Gradio demo: add noise to a photo (or bring a noisy one), denoise it, compare, download.

A thin UI over ganlib: weights come from `ganlib.hub.load_weights()` (env GANLIB_WEIGHTS / GANLIB_REVISION,
falling back to the bundled checkpoints/), images are read and written by `ganlib.images` (lossless PNG,
16-bit, grayscale and alpha kept), denoising is `ganlib.inference.denoise_image` (tiled, any size).

Run: `python app.py` (serves on localhost; port from GRADIO_SERVER_PORT, default 7860).
Settings (environment): GANLIB_MAX_PIXELS (default 16 000 000), GANLIB_MAX_FILE_MB (upload limit, 50),
GANLIB_QUEUE_SIZE (waiting requests, 16), GANLIB_CONCURRENCY (requests run at once, 1), GANLIB_TILE (512).
API: one endpoint, `/denoise(image, noise_kind, noise_level, seed, strength, realism, ensemble) -> (png file, metrics)`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from ganlib.hub import Weights, load_weights
from ganlib.images import ImageData, ImageError, load_image, save_image
from ganlib.inference import denoise_image, estimate_sigma, resolve_precision
from ganlib.metrics import psnr, ssim
from ganlib.noise import DEFAULTS, KINDS, add_noise

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

NOISE_KINDS = ("none", *KINDS)
# The API's single `noise_level` is the main parameter of each kind (the others keep their defaults).
LEVEL_PARAM = {"gaussian": "sigma", "poisson": "peak", "salt_pepper": "amount", "speckle": "sigma", "camera": "peak"}
LEVEL_HELP = "gaussian: sigma 0-255; poisson: peak photons (lower = noisier); salt_pepper: amount 0-1; speckle: sigma; camera: peak photons"


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
    sigma_estimated: float
    sigma_used: float
    metrics: dict[str, Any]
    seconds: float
    files: dict[str, Path]  # original / noisy / denoised display PNGs and the download


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


def _noise_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    allowed = DEFAULTS[kind]
    out = {k: v for k, v in params.items() if k in allowed and v is not None}
    if "quality" in out:
        out["quality"] = None if float(out["quality"]) <= 0 else int(out["quality"])
    return out


def _psnr(result: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR in dB, or None when the images are identical (infinite PSNR has no JSON form)."""
    value = psnr(result, reference)
    return round(value, 3) if math.isfinite(value) else None


def _ssim(result: torch.Tensor, reference: torch.Tensor) -> float | None:
    """SSIM, or None for images under 7 pixels on a side (too small for its 7x7 window)."""
    return round(ssim(result, reference), 4) if min(reference.shape[-2:]) >= 7 else None


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
def _run_network(weights: Weights, noisy: ImageData, sigma: float, realism: float, progress, ensemble: bool = False) -> ImageData:
    if torch.cuda.is_available():
        weights.fidelity.to("cuda")
        if weights.gan is not None:
            weights.gan.to("cuda")
    return denoise_image(weights, noisy, sigma=sigma, realism=realism, tile=TILE, overlap=OVERLAP, progress=progress, precision=PRECISION,
                         ensemble=ensemble)


def run(
    image: Any,
    noise_kind: str = "none",
    noise_params: dict[str, Any] | None = None,
    seed: int | float | None = 0,
    strength: float | None = None,
    realism: float = 0.0,
    progress: Any = None,
    ensemble: bool = False,
) -> Result:
    """Load, optionally add synthetic noise, denoise, measure and save. Every bad input -> gr.Error (one sentence).

    strength: the noise level (0-255 scale) given to the network; None = estimated from the image.
    progress: a gr.Progress (or None); called once per tile.
    ensemble: x8 self-ensemble (8 flips/rotations averaged): 8 times the time for about +0.2 dB.
    """
    try:
        return _run(image, noise_kind, noise_params, seed, strength, realism, progress, bool(ensemble))
    except gr.Error:
        raise
    except Exception as err:  # a failure nobody anticipated: logged in full, one sentence for the user
        log.exception("denoising failed")
        detail = (str(err).splitlines() or [""])[0][:200]
        raise gr.Error(f"Denoising failed ({type(err).__name__}{': ' + detail if detail else ''}).") from None


def _run(image, noise_kind, noise_params, seed, strength, realism, progress, ensemble=False) -> Result:
    t0 = time.perf_counter()
    src, name, nbytes = _source(image)
    if nbytes is not None and nbytes > MAX_FILE_MB * 1024 * 1024:
        raise gr.Error(f"The file is {nbytes / 1e6:.0f} MB; the limit is {MAX_FILE_MB} MB.")
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
    weights = get_weights()
    if realism > 0 and weights.gan is None:
        raise gr.Error("These weights have no GAN stage, so realism must be 0.")

    try:
        original = load_image(src, max_pixels=MAX_PIXELS)
    except ImageError as err:
        raise gr.Error(str(err)) from None
    except Exception as err:  # anything the loader did not anticipate is still one sentence, never a traceback
        log.exception("unexpected error while reading %s", name)
        raise gr.Error(f"{name!r} could not be read as an image ({type(err).__name__}).") from None

    params: dict[str, Any] = {}
    noisy: ImageData | None = None
    if noise_kind != "none":
        params = _noise_params(noise_kind, noise_params or {})
        try:
            pixels = add_noise(original.pixels, noise_kind, seed=seed, quantize=original.bit_depth == 8, **params)
        except ValueError as err:
            raise gr.Error(f"Bad noise settings: {err}.") from None
        noisy = original.with_pixels(pixels)
    source = noisy if noisy is not None else original

    try:
        estimated = estimate_sigma(source.pixels, weights.estimator)
    except ValueError:  # too small to estimate anything from
        estimated = float("nan")
    if not math.isfinite(estimated):  # e.g. a flat or tiny image: nothing to estimate, so nothing to remove
        estimated = 0.0
    sigma = float(strength) if strength is not None else estimated

    def tile_progress(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc=f"Denoising tile {done}/{total}", unit="tiles")

    t1 = time.perf_counter()
    try:
        denoised = _run_network(weights, source, sigma, float(realism), tile_progress, ensemble)
    except torch.OutOfMemoryError:
        raise gr.Error("Out of memory while denoising; try a smaller image.") from None
    t_net = time.perf_counter() - t1

    metrics: dict[str, Any] = {
        "file": name,
        "width": original.pixels.shape[-1],
        "height": original.pixels.shape[-2],
        "channels": original.pixels.shape[1],
        "bit_depth": original.bit_depth,
        "alpha": original.alpha is not None,
        "noise_kind": noise_kind,
        "noise_params": params,
        "seed": seed if noisy is not None else None,
        "sigma_estimated": round(estimated, 3),
        "sigma_estimator": "learned (estimator/)" if weights.estimator is not None else "wavelet (scikit-image)",
        "sigma_used": round(sigma, 3),
        "strength": "manual" if strength is not None else "auto",
        "realism": float(realism),
        "ensemble": ensemble,
        "precision": resolve_precision(PRECISION, "cuda" if torch.cuda.is_available() else "cpu"),
        "weights": weights.source,
        "notes": list(original.notes),
    }
    if noisy is not None:
        ref = original.pixels
        metrics.update(
            psnr_noisy=_psnr(noisy.pixels, ref),
            ssim_noisy=_ssim(noisy.pixels, ref),
            psnr_denoised=_psnr(denoised.pixels, ref),
            ssim_denoised=_ssim(denoised.pixels, ref),
        )

    out = _out_dir()
    stem = _safe_stem(name)
    view = out / "view"  # display copies; the download sits alone in `out` under its final name
    view.mkdir()
    files = {"denoised": save_image(denoised, out / f"{stem}_denoised.png"), "original": save_image(original, view / f"{stem}_original.png")}
    if noisy is not None:
        files["noisy"] = save_image(noisy, view / f"{stem}_noisy.png")
    metrics["seconds_network"] = round(t_net, 3)
    metrics["seconds_total"] = round(time.perf_counter() - t0, 3)
    log.info("%s %dx%d %s: %.2fs", name, metrics["width"], metrics["height"], noise_kind, metrics["seconds_total"])
    return Result(original, noisy, denoised, estimated, sigma, metrics, metrics["seconds_total"], files)


# ----------------------------------------------------------------------------- API and UI wrappers


def api_denoise(
    image: Any,
    noise_kind: str = "none",
    noise_level: float | None = None,
    seed: int | None = 0,
    strength: float | None = None,
    realism: float = 0.0,
    ensemble: bool = False,
    progress: gr.Progress = gr.Progress(),
) -> tuple[str, dict[str, Any]]:
    """Denoise one image (optionally after adding synthetic noise) and return (denoised PNG, metrics).

    noise_kind: none | gaussian | poisson | salt_pepper | speckle | camera.
    noise_level: the kind's main parameter (gaussian: sigma 0-255; poisson: peak; salt_pepper: amount;
      speckle: sigma; camera: peak); empty = the library default.
    strength: noise level 0-255 given to the network; empty = estimated from the image.
    realism: 0 (fidelity) .. 1 (GAN); needs GAN weights.
    ensemble: average the 8 flips/rotations (8 times the time, about +0.2 dB).
    """
    params = {LEVEL_PARAM[noise_kind]: noise_level} if noise_kind in LEVEL_PARAM and noise_level is not None else {}
    res = run(image, noise_kind, params, seed, strength, realism, progress, ensemble)
    return str(res.files["denoised"]), res.metrics


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _metrics_markdown(res: Result) -> str:
    m = res.metrics
    lines = [
        f"**{m['file']}** - {m['width']} x {m['height']}, {'gray' if m['channels'] == 1 else 'RGB'}"
        f"{' + alpha' if m['alpha'] else ''}, {m['bit_depth']}-bit",
        f"- noise level: estimated sigma = {m['sigma_estimated']:.2f}, used sigma = {m['sigma_used']:.2f} ({m['strength']})",
    ]
    if "psnr_noisy" in m:
        lines += [
            "",
            "| vs original | PSNR (dB) | SSIM |",
            "|---|---|---|",
            f"| noisy | {_num(m['psnr_noisy'], 2)} | {_num(m['ssim_noisy'])} |",
            f"| denoised | {_num(m['psnr_denoised'], 2)} | {_num(m['ssim_denoised'])} |",
            "",
        ]
    else:
        lines.append("- no synthetic noise added, so there is no clean reference to score against")
    how = m["precision"] + (", x8 ensemble" if m["ensemble"] else "")
    lines.append(f"- time: {m['seconds_network']:.2f} s network ({how}), {m['seconds_total']:.2f} s in all")
    lines += [f"- note: {n}" for n in m["notes"]]
    return "\n".join(lines)


def ui_denoise(
    image: Any,
    noise_kind: str,
    gauss_sigma: float,
    poisson_peak: float,
    sp_amount: float,
    sp_salt_ratio: float,
    speckle_sigma: float,
    camera_peak: float,
    camera_read: float,
    camera_quality: float,
    seed: float,
    strength_mode: str,
    strength: float,
    realism: float,
    ensemble: bool = False,
    progress: gr.Progress = gr.Progress(),
):
    per_kind = {
        "gaussian": {"sigma": gauss_sigma},
        "poisson": {"peak": poisson_peak},
        "salt_pepper": {"amount": sp_amount, "salt_ratio": sp_salt_ratio},
        "speckle": {"sigma": speckle_sigma},
        "camera": {"peak": camera_peak, "sigma": camera_read, "quality": camera_quality},
    }
    res = run(image, noise_kind, per_kind.get(noise_kind, {}), seed, strength if strength_mode == "manual" else None, realism, progress, ensemble)
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
    )


def describe_upload(image: Any) -> str:
    """File name, size and pixel format of the upload, from its header only (no full decode)."""
    if image is None:
        return ""
    try:
        src, name, nbytes = _source(image)
    except gr.Error as err:
        return err.message
    from PIL import Image  # header only; decoding is ganlib.images' job

    size = f"{nbytes / 1e6:.2f} MB" if nbytes and nbytes >= 1e5 else f"{(nbytes or 0) / 1e3:.1f} kB"
    try:
        with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as im:
            w, h, mode, fmt = im.width, im.height, im.mode, im.format
    except Exception:
        return f"**{name}** ({size}) - not a readable image"
    warn = f" - over the {MAX_PIXELS / 1e6:.0f} MP limit" if w * h > MAX_PIXELS else ""
    return f"**{name}** - {w} x {h} px, {fmt} {mode}, {size}{warn}"


# ----------------------------------------------------------------------------- examples


def make_examples(folder: Path) -> list[list[Any]]:
    """Example inputs from scikit-image's bundled sample photos (one per noise kind), written once as PNG.

    Rows: [path, kind, gauss_sigma, poisson_peak, sp_amount, sp_salt_ratio, speckle_sigma, camera_peak,
    camera_read, camera_quality, seed]."""
    import skimage.data as data

    folder.mkdir(parents=True, exist_ok=True)

    def png(name: str, make) -> str:
        path = folder / f"{name}.png"
        if not path.exists():
            save_image(make(), path)
        return str(path)

    def noisy_cat() -> ImageData:  # a photo that already carries camera noise: denoise it as it is
        cat = load_image(data.chelsea())
        return cat.with_pixels(add_noise(cat.pixels, "camera", seed=7, peak=60.0, sigma=4.0, quality=92))

    d = {"g": 25, "p": 30, "a": 0.05, "r": 0.5, "s": 0.2, "cp": 200, "cr": 2, "cq": 90}  # slider defaults
    rows = [
        ("astronaut", lambda: load_image(data.astronaut()), "gaussian", {"g": 25}),
        ("coffee", lambda: load_image(data.coffee()), "poisson", {"p": 20}),
        ("camera", lambda: load_image(data.camera()), "salt_pepper", {"a": 0.08}),
        ("rocket", lambda: load_image(data.rocket()), "speckle", {"s": 0.25}),
        ("immunohistochemistry", lambda: load_image(data.immunohistochemistry()), "camera", {"cp": 80, "cr": 3, "cq": 85}),
        ("logo_rgba", lambda: load_image(data.logo()), "gaussian", {"g": 35}),
        ("chelsea_noisy", noisy_cat, "none", {}),
    ]
    out = []
    for name, make, kind, over in rows:
        v = {**d, **over}
        out.append([png(name, make), kind, v["g"], v["p"], v["a"], v["r"], v["s"], v["cp"], v["cr"], v["cq"], 0])
    return out


# ----------------------------------------------------------------------------- page

INTRO = """# GAN image denoiser
Drop in a photo (or paste one, or use the webcam), optionally add noise of a chosen kind, and compare the
noisy and the denoised picture at full resolution. Nothing is downscaled or JPEG-compressed: every view is a
lossless PNG, and the download keeps 16-bit depth, grayscale and transparency."""


def build_demo(examples_dir: Path | None = None) -> gr.Blocks:
    """The Blocks app (not launched). Loads the weights once to say on the page which are in use."""
    banner = weights_banner()
    has_gan = _weights is not None and _weights.gan is not None
    examples = make_examples(examples_dir or Path(tempfile.gettempdir()) / "ganlib-demo-examples")

    with gr.Blocks(title="GAN image denoiser", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(banner, elem_id="weights")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Input image",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    sources=["upload", "clipboard", "webcam"],
                    elem_id="input-image",
                )
                info = gr.Markdown(elem_id="file-info")
                with gr.Group():
                    gr.Markdown("### 1. Noise")
                    kind = gr.Radio(
                        list(NOISE_KINDS), value="gaussian", label="Noise to add ('none': the photo is already noisy)", elem_id="noise-kind"
                    )
                    gauss_sigma = gr.Slider(0, 100, value=25, step=1, label="sigma (0-255 scale)", visible=True)
                    poisson_peak = gr.Slider(1, 500, value=30, step=1, label="peak photons at white (lower = noisier)", visible=False)
                    sp_amount = gr.Slider(0, 0.5, value=0.05, step=0.01, label="amount (share of pixels hit)", visible=False)
                    sp_salt = gr.Slider(0, 1, value=0.5, step=0.05, label="salt ratio (share of white ones)", visible=False)
                    speckle_sigma = gr.Slider(0, 1, value=0.2, step=0.01, label="sigma (multiplicative)", visible=False)
                    camera_peak = gr.Slider(1, 1000, value=200, step=1, label="peak photons at white", visible=False)
                    camera_read = gr.Slider(0, 20, value=2, step=0.5, label="read noise sigma (0-255)", visible=False)
                    camera_quality = gr.Slider(0, 100, value=90, step=1, label="JPEG quality (0 = no JPEG)", visible=False)
                    seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
                with gr.Group():
                    gr.Markdown("### 2. Denoise")
                    strength_mode = gr.Radio(["auto", "manual"], value="auto", label="strength (auto: estimated from the image)")
                    strength = gr.Slider(0, 100, value=25, step=0.5, label="strength: noise level sigma (0-255)", visible=False)
                    realism = gr.Slider(
                        0, 1, value=0, step=0.05, label="realism: fidelity (0) to GAN (1)", interactive=has_gan,
                        info=None if has_gan else "disabled: these weights have no GAN stage",
                    )
                    ensemble = gr.Checkbox(False, label="best quality: average 8 flips/rotations (8x slower, about +0.2 dB)")
                    run_btn = gr.Button("Denoise", variant="primary", elem_id="denoise-btn")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before / after (drag)", type="filepath", format="png", elem_id="slider", max_height=700)
                with gr.Row():
                    out_original = gr.Image(label="original", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
                    out_noisy = gr.Image(label="noisy", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
                    out_denoised = gr.Image(label="denoised", type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
                metrics_md = gr.Markdown(elem_id="metrics")
                download = gr.DownloadButton("Download", visible=False, elem_id="download")
                metrics_json = gr.JSON(label="metrics", visible=False)

        sliders = [gauss_sigma, poisson_peak, sp_amount, sp_salt, speckle_sigma, camera_peak, camera_read, camera_quality]
        owner = ["gaussian", "poisson", "salt_pepper", "salt_pepper", "speckle", "camera", "camera", "camera"]
        kind.change(
            lambda k: [gr.update(visible=k == o) for o in owner] + [gr.update(visible=k != "none")],
            kind, sliders + [seed], api_visibility="private", queue=False,
        )
        strength_mode.change(lambda m: gr.update(visible=m == "manual"), strength_mode, strength, api_visibility="private", queue=False)
        image.change(describe_upload, image, info, preprocess=False, api_visibility="private", queue=False)

        gr.Examples(examples, inputs=[image, kind, *sliders, seed], cache_examples=False, label="Examples (scikit-image sample photos)")

        run_btn.click(
            ui_denoise,
            inputs=[image, kind, *sliders, seed, strength_mode, strength, realism, ensemble],
            outputs=[slider, out_original, out_noisy, out_denoised, metrics_md, download, metrics_json],
            preprocess=False,
            api_visibility="private",
            concurrency_id="denoise",
            concurrency_limit=CONCURRENCY,
        )

        # The public API: fixed, documented parameters on hidden components.
        with gr.Column(visible=False):
            a_image = gr.Image(label="image", type="filepath", image_mode=None, format="png")
            a_kind = gr.Dropdown(list(NOISE_KINDS), value="none", label="noise_kind")
            a_level = gr.Number(value=None, label="noise_level", info=LEVEL_HELP)
            a_seed = gr.Number(value=0, precision=0, label="seed")
            a_strength = gr.Number(value=None, label="strength", info="noise level 0-255 for the network; empty = estimated")
            a_realism = gr.Number(value=0.0, label="realism", info="0 = fidelity, 1 = GAN")
            a_ensemble = gr.Checkbox(False, label="ensemble", info="average 8 flips/rotations: 8x the time, about +0.2 dB")
            a_file = gr.File(label="denoised PNG")
            a_metrics = gr.JSON(label="metrics")
            a_btn = gr.Button("api")
        a_btn.click(
            api_denoise,
            inputs=[a_image, a_kind, a_level, a_seed, a_strength, a_realism, a_ensemble],
            outputs=[a_file, a_metrics],
            preprocess=False,
            api_name="denoise",
            concurrency_id="denoise",
            concurrency_limit=CONCURRENCY,
        )
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def launch(demo: gr.Blocks, **kwargs: Any):
    """Launch with the demo's limits; kwargs override (tests use prevent_thread_lock=True, server_port=...)."""
    opts: dict[str, Any] = dict(max_file_size=f"{MAX_FILE_MB}mb", show_error=True, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    opts.update(kwargs)
    return demo.launch(**opts)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    launch(build_demo())
