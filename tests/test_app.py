"""The Gradio demo (app.py): the predict function directly, then the `/denoise` API through gradio_client
against a server started here on a free local port. Tiny random weights in a temp folder (GANLIB_WEIGHTS)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ganlib.images import ImageData, load_image, save_image  # noqa: E402
from ganlib.models import Generator, GeneratorConfig  # noqa: E402

TINY = GeneratorConfig(widths=[8, 16], blocks=[1, 1])


def make_weights(folder: Path, gan: bool = True) -> Path:
    torch.manual_seed(0)
    Generator(TINY).save_pretrained(folder / "fidelity")
    if gan:
        torch.manual_seed(1)
        Generator(TINY).save_pretrained(folder / "gan")
    return folder


def scene(h: int = 40, w: int = 48, channels: int = 3) -> np.ndarray:
    """A smooth, seeded test picture in [0, 1] (HxWxC)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.sin(6 * x * y)][:channels]
    return np.clip(np.stack(planes, -1), 0, 1)


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """app.py imported with tiny weights (fidelity + gan) and a small tile so the tiling path runs."""
    weights = make_weights(tmp_path_factory.mktemp("weights"))
    old = os.environ.get("GANLIB_WEIGHTS")
    os.environ["GANLIB_WEIGHTS"] = str(weights)
    import app as module

    module._weights, module._weights_error = None, None
    saved = module.TILE, module.MAX_PIXELS
    module.TILE = 32
    yield module
    module.TILE, module.MAX_PIXELS = saved
    module._weights, module._weights_error = None, None
    if old is None:
        os.environ.pop("GANLIB_WEIGHTS", None)
    else:
        os.environ["GANLIB_WEIGHTS"] = old


@pytest.fixture()
def rgb_png(tmp_path) -> Path:
    return write_png(tmp_path / "photo.png", (scene() * 255).round().astype(np.uint8))


def test_gaussian_noise_metrics_and_download(app, rgb_png):
    calls, stages = [], []

    def progress(value, desc=None, **kwargs):
        (calls if isinstance(value, tuple) else stages).append(value if isinstance(value, tuple) else desc)

    res = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=3, progress=progress)
    m = res.metrics
    # the noise really was added: the noisy image is about sigma=25 away from the original (PSNR ~ 20.2 dB)
    assert 18.5 < m["psnr_noisy"] < 22.0
    assert 0 < m["ssim_noisy"] < 0.9
    assert np.isfinite(m["psnr_denoised"]) and -1 <= m["ssim_denoised"] <= 1
    # the lab told the network the exact map of the noise it added
    assert m["noise_map"] == "informed" and m["sigma_used"] == pytest.approx(25) and m["strength"] == "auto"
    assert torch.allclose(res.noise_map, torch.full((1, 1, 40, 48), 25.0))
    assert m["seconds_total"] >= m["seconds_network"] > 0
    # progress: each stage by name, then per tile (48x40 with 32-pixel tiles -> several), counted up to the total
    for stage in ("Reading the image", "Adding gaussian noise", "Measuring PSNR / SSIM", "Writing lossless PNGs"):
        assert stage in stages
    assert set(m["seconds"]) >= {"read", "noise", "network", "metrics", "write", "views"}
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1] == len(calls)
    out = res.files["denoised"]
    assert out.name == "photo_denoised.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (48, 40) and im.mode == "RGB"
    with Image.open(res.files["noisy"]) as im:
        noisy = np.asarray(im)
    assert np.abs(noisy.astype(int) - np.asarray(Image.open(rgb_png)).astype(int)).mean() > 5
    assert res.files["original"] == rgb_png  # a PNG upload is shown as it is: no third encode


def test_ensemble_averages_eight_passes(app, rgb_png):
    calls = []
    plain = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=3, strength=25)
    best = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=3, strength=25, ensemble=True,
                   progress=lambda value, **k: calls.append(value) if isinstance(value, tuple) else None)
    assert best.metrics["ensemble"] is True and plain.metrics["ensemble"] is False
    assert plain.metrics["precision"] == app.resolve_precision(app.PRECISION)  # what really ran, e.g. bfloat16
    assert calls[-1][0] == calls[-1][1] == len(calls) and len(calls) % 8 == 0  # every tile of all 8 views
    assert torch.equal(plain.noisy.pixels, best.noisy.pixels)
    assert not torch.equal(plain.denoised.pixels, best.denoised.pixels)


def test_ensemble_progress_on_a_one_tile_image_names_views_not_tiles(app, tmp_path, monkeypatch):
    """Defect: 'Denoising tile 3/8' on a one-tile image with best quality. It counts views there."""
    monkeypatch.setattr(app, "TILE", 512)
    src = write_png(tmp_path / "small.png", (scene() * 255).round().astype(np.uint8))
    descs = []
    app.run(str(src), "gaussian", {"sigma": 25}, seed=0, ensemble=True, progress=lambda value, desc=None, **k: descs.append(desc))
    tiles = [d for d in descs if d.startswith("Denoising ")]
    assert tiles == [f"Denoising view {v}/8, tile 1/1" for v in range(1, 9)]
    assert not any("tile 3/8" in d for d in descs)


def test_seed_makes_noise_reproducible(app, rgb_png):
    a = app.run(str(rgb_png), "poisson", {"peak": 20}, seed=5)
    b = app.run(str(rgb_png), "poisson", {"peak": 20}, seed=5)
    c = app.run(str(rgb_png), "poisson", {"peak": 20}, seed=6)
    assert torch.equal(a.noisy.pixels, b.noisy.pixels)
    assert not torch.equal(a.noisy.pixels, c.noisy.pixels)
    assert a.metrics["psnr_noisy"] == b.metrics["psnr_noisy"]


@pytest.mark.parametrize("kind", ["salt_pepper", "speckle", "camera"])
def test_every_noise_kind_runs(app, rgb_png, kind):
    params = {"camera": {"peak": 50, "sigma": 3, "quality": 80}, "salt_pepper": {"amount": 0.1, "salt_ratio": 0.5}}.get(kind, {})
    res = app.run(str(rgb_png), kind, params, seed=0)
    assert res.metrics["noise_kind"] == kind and res.metrics["psnr_noisy"] < 35


def test_no_noise_means_no_reference_metrics(app, rgb_png):
    res = app.run(str(rgb_png), "none", {}, seed=0, strength=10.0)
    assert res.noisy is None and "noisy" not in res.files
    assert "psnr_noisy" not in res.metrics and "psnr_denoised" not in res.metrics
    assert res.metrics["sigma_used"] == 10.0 and res.metrics["strength"] == "manual"
    assert "no synthetic noise" in app._metrics_markdown(res)


def test_alpha_preserved(app, tmp_path):
    rgba = np.concatenate([(scene() * 255).astype(np.uint8), np.tile(np.arange(48, dtype=np.uint8)[None, :, None] * 5, (40, 1, 1))], -1)
    src = write_png(tmp_path / "logo.png", rgba)
    res = app.run(str(src), "gaussian", {"sigma": 15}, seed=0)
    with Image.open(res.files["denoised"]) as im:
        assert im.mode == "RGBA" and im.size == (48, 40)
        assert np.array_equal(np.asarray(im)[..., 3], rgba[..., 3])


def test_gray_preserved(app, tmp_path):
    src = write_png(tmp_path / "gray.png", (scene(channels=1)[..., 0] * 255).astype(np.uint8))
    res = app.run(str(src), "gaussian", {"sigma": 15}, seed=0)
    assert res.metrics["channels"] == 1
    assert res.metrics["generator"] == "colour (fidelity/)"  # these test weights have no gray/ folder
    with Image.open(res.files["denoised"]) as im:
        assert im.mode == "L" and im.size == (48, 40)


def test_16_bit_preserved(app, tmp_path):
    pixels = torch.from_numpy(scene()).permute(2, 0, 1)[None].float()
    src = save_image(ImageData(pixels=pixels, bit_depth=16), tmp_path / "deep.png")
    res = app.run(str(src), "gaussian", {"sigma": 10}, seed=0)
    assert res.metrics["bit_depth"] == 16
    back = load_image(res.files["denoised"])
    assert back.bit_depth == 16 and back.size == (40, 48)
    # really 16-bit: far more distinct levels than 8 bits could hold
    assert len(torch.unique(back.pixels)) > 256


def test_gradio_payload_dict_keeps_the_upload_name(app, rgb_png):
    file, metrics = app.api_denoise({"path": str(rgb_png), "orig_name": "holiday shot.png"}, "gaussian", 20, progress=None)
    assert Path(file).name == "holiday_shot_denoised.png" and metrics["file"] == "holiday shot.png"


@pytest.mark.parametrize(
    "content, words",
    [(b"", "empty"), (b"this is not a picture at all", "not an image"), (None, "truncated or corrupt")],
)
def test_bad_file_is_a_gradio_error(app, tmp_path, content, words):
    path = tmp_path / "bad.png"
    if content is None:  # a truncated PNG
        good = write_png(tmp_path / "good.png", (scene(64, 64) * 255).astype(np.uint8)).read_bytes()
        content = good[: len(good) // 2]
    path.write_bytes(content)
    with pytest.raises(gr.Error) as err:
        app.run(str(path), "gaussian", {"sigma": 25}, seed=0)
    assert words in err.value.message and "Traceback" not in err.value.message


def test_too_many_pixels_is_a_gradio_error(app, rgb_png, monkeypatch):
    monkeypatch.setattr(app, "MAX_PIXELS", 1000)
    with pytest.raises(gr.Error, match="megapixels"):
        app.run(str(rgb_png), "none", {}, seed=0)


def test_decompression_bomb_is_a_gradio_error(app, tmp_path):
    """A tiny PNG whose header declares 100000 x 100000 pixels is refused before decoding."""
    import struct
    import zlib

    good = write_png(tmp_path / "small.png", np.zeros((8, 8), np.uint8)).read_bytes()
    ihdr = good[12:16] + struct.pack(">II", 100_000, 100_000) + good[24:29]
    bomb = good[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + good[33:]
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(gr.Error, match="megapixels|decompression bomb"):
        app.run(str(tmp_path / "bomb.png"), "gaussian", {"sigma": 25}, seed=0)


def test_file_size_limit(app, rgb_png, monkeypatch):
    monkeypatch.setattr(app, "MAX_FILE_MB", 0)
    with pytest.raises(gr.Error, match="the limit is 0 MB"):
        app.run(str(rgb_png))


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (5, 4)])
def test_tiny_and_thin_images_work(app, tmp_path, shape):
    """Too small for noise estimation or SSIM: still a result of the right size, with 'n/a' where a metric cannot exist."""
    src = write_png(tmp_path / "thin.png", np.full((*shape, 3), 120, np.uint8))
    for kind in ("none", "gaussian"):
        res = app.run(str(src), kind, {"sigma": 20}, seed=0)
        with Image.open(res.files["denoised"]) as im:
            assert im.size == shape[::-1]
        assert np.isfinite(res.metrics["sigma_used"])
        if kind == "gaussian":
            assert res.metrics["ssim_noisy"] is None and "n/a" in app._metrics_markdown(res)


def test_unexpected_failure_is_one_sentence(app, rgb_png, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(app, "_run_network", broken)
    with pytest.raises(gr.Error) as err:
        app.run(str(rgb_png))
    assert err.value.message == "Denoising failed (RuntimeError: kernel exploded)."


def test_bad_settings_are_gradio_errors(app, rgb_png):
    with pytest.raises(gr.Error, match="Upload an image"):
        app.run(None)
    with pytest.raises(gr.Error, match="Unknown noise kind"):
        app.run(str(rgb_png), "rain")
    with pytest.raises(gr.Error, match="Bad noise settings"):
        app.api_denoise(str(rgb_png), "gaussian", -5, progress=None)
    with pytest.raises(gr.Error, match="Strength"):
        app.run(str(rgb_png), "none", strength=-1.0)
    with pytest.raises(gr.Error, match="Realism"):
        app.run(str(rgb_png), "none", realism=2.0)


def test_realism_needs_gan_weights(app, rgb_png, tmp_path, monkeypatch):
    res = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=0, realism=1.0)  # fidelity + gan: fine
    assert res.metrics["realism"] == 1.0
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(make_weights(tmp_path / "fid", gan=False)))
    with pytest.raises(gr.Error, match="no GAN stage"):
        app.run(str(rgb_png), "none", realism=0.5)
    assert "fidelity only" in app.weights_banner()


def _use_weights_whose_estimator_says_17(app, tmp_path, monkeypatch) -> None:
    """The demo on tiny weights with an estimator that reads sigma 17 everywhere."""
    from ganlib.models import EstimatorConfig, NoiseEstimator

    folder = make_weights(tmp_path / "w", gan=False)
    est = NoiseEstimator(EstimatorConfig(width=8))
    with torch.no_grad():
        est.out.weight.zero_()
        est.out.bias.fill_(float(np.log(17 / 255 + NoiseEstimator.eps)))  # says sigma 17 everywhere
    est.save_pretrained(folder / "estimator")
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(folder))


def test_auto_strength_uses_the_weights_estimator(app, rgb_png, tmp_path, monkeypatch):
    _use_weights_whose_estimator_says_17(app, tmp_path, monkeypatch)
    m = app.run(str(rgb_png), "gaussian", {"sigma": 40}, seed=0, informed=False).metrics
    assert m["sigma_estimated"] == pytest.approx(17, abs=1e-3) and m["sigma_used"] == m["sigma_estimated"]
    assert m["sigma_estimator"] == "learned (estimator/)" and m["noise_map"] == "estimated"
    assert "learned noise-level estimator" in app.weights_banner()
    photo = app.run(str(rgb_png), "none", {}, seed=0)  # photo mode: nothing added, the map is estimated
    assert photo.metrics["noise_map"] == "estimated" and photo.metrics["sigma_used"] == pytest.approx(17, abs=1e-3)
    assert "estimated" in photo.captions["map"]
    informed = app.run(str(rgb_png), "gaussian", {"sigma": 40}, seed=0).metrics  # lab default: the exact map
    assert informed["noise_map"] == "informed" and informed["sigma_used"] == pytest.approx(40)
    assert app.run(str(rgb_png), "gaussian", {"sigma": 40}, seed=0, strength=30).metrics["sigma_used"] == 30  # manual wins


def test_a_jpeg_upload_is_estimated_as_the_noise_before_compression(app, tmp_path, monkeypatch):
    """Photo mode on a noisy JPEG: the quality is read from the pixels and reported, and the automatic
    strength is the estimator's reading raised by the JPEG lift (a note says so); the same pixels as a
    PNG get the reading as it is."""
    import skimage

    _use_weights_whose_estimator_says_17(app, tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    clean = skimage.data.astronaut()[60:188, 160:288].astype(np.float64)  # 128 x 128: 256 JPEG blocks
    photo = np.clip(clean + rng.normal(0, 12, clean.shape), 1, 254).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "noisy.jpg", quality=60)
    Image.fromarray(photo).save(tmp_path / "noisy.png")
    jpeg = app.run(str(tmp_path / "noisy.jpg"), "none", {}, seed=0).metrics
    png = app.run(str(tmp_path / "noisy.png"), "none", {}, seed=0).metrics
    assert jpeg["jpeg_quality"] == pytest.approx(60, abs=3) and png["jpeg_quality"] is None
    assert png["sigma_used"] == pytest.approx(17, abs=1e-3) and jpeg["sigma_used"] > 1.1 * 17
    assert any("JPEG compression" in n for n in jpeg["notes"]) and not any("JPEG compression" in n for n in png["notes"])


def test_no_weights_gives_a_clear_error(app, rgb_png, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setattr(app, "_weights_error", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(tmp_path / "empty-but-present"))
    (tmp_path / "empty-but-present").mkdir()
    with pytest.raises(gr.Error, match="No denoising weights"):
        app.run(str(rgb_png), "none")
    assert "none loaded" in app.weights_banner()


def ui_args(app, image, mode="Noise lab", kind="gaussian", **over):
    """The Denoise button's inputs, in the page's order, with the page's defaults."""
    values = {**app.LAB_DEFAULTS, "seed": 0, "informed": True, "auto_strength": True, "strength": 25.0, "realism": 0.0,
              "ensemble": False, "camera_noise": False, **over}
    return (image, mode, kind, *[values[k] for k in app.SETTING_NAMES], values["seed"], values["informed"],
            values["auto_strength"], values["strength"], values["realism"], values["ensemble"], values["camera_noise"])


def test_ui_function_returns_every_view(app, rgb_png):
    outs = app.ui_denoise(*ui_args(app, {"path": str(rgb_png), "orig_name": "photo.png"}, auto_strength=False, strength=20), progress=None)
    assert len(outs) == app.DENOISE_OUTPUTS
    slider, original, noisy, denoised, md, download, metrics, heat, heat_md, resid, resid_md, real_img, real_md, status = outs
    assert real_img is None and real_md == app.REALISM_HINT  # realism 0: nothing to compare
    assert slider == (noisy["value"], denoised) and noisy["visible"] is True
    assert Path(download["value"]).name == "photo_denoised.png" and download["label"] == "Download photo_denoised.png"
    assert metrics["sigma_used"] == 20 and metrics["noise_map"] == "manual" and "PSNR" in md
    assert f"s network ({metrics['precision']})" in md
    assert all(Path(p).suffix == ".png" for p in (original, noisy["value"], denoised, heat, resid))
    assert "set by hand" in heat_md and "amplified x" in resid_md and status == ""


def test_photo_mode_adds_nothing(app, rgb_png):
    """'Denoise my photo' is the page's default mode: whatever the lab's kind says, no noise is added."""
    outs = app.ui_denoise(*ui_args(app, str(rgb_png), mode="Denoise my photo", kind="gaussian", sigma=50), progress=None)
    metrics = outs[6]
    assert metrics["mode"] == "photo" and metrics["noise_kind"] == "none" and "psnr_noisy" not in metrics
    assert metrics["noise_map"] == "estimated" and "estimated" in outs[8]
    assert outs[2]["visible"] is False  # no noisy view
    assert outs[0][0] == str(rgb_png)  # the slider's 'before' is the upload itself


def test_an_error_keeps_the_previous_results(app, rgb_png, tmp_path):
    """Defect: an error wiped the previous results. The UI handler now leaves every output unchanged."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    outs = app.ui_denoise(*ui_args(app, str(bad)), progress=None)
    assert len(outs) == app.DENOISE_OUTPUTS
    for out in outs[:-1]:
        assert out == gr.update()  # no change
    assert "not an image" in outs[-1] and "previous results are kept" in outs[-1]
    gallery, table, note, status = app.ui_compare(None, *[app.LAB_DEFAULTS[k] for k in app.SETTING_NAMES], 0, 0.0, progress=None)
    assert gallery == gr.update() and table == gr.update() and note == gr.update() and "Upload an image" in status


def test_metrics_say_which_realism_ran(app, rgb_png):
    """Defect: the metrics did not say which realism ran."""
    res = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=0, realism=0.5)
    assert res.metrics["realism"] == 0.5
    assert "realism 0.50 (blend)" in app._metrics_markdown(res)
    assert "realism 0.00 (fidelity)" in app._metrics_markdown(app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=0))


def use_weights_reading_17(app, tmp_path, monkeypatch, gan: bool = False) -> Path:
    """Tiny fidelity weights (and GAN stage) plus an estimator that reads sigma 17 everywhere, as the app's weights."""
    from ganlib.models import EstimatorConfig, NoiseEstimator

    folder = make_weights(tmp_path / "w", gan=gan)
    est = NoiseEstimator(EstimatorConfig(width=8))
    with torch.no_grad():
        est.out.weight.zero_()
        est.out.bias.fill_(float(np.log(17 / 255 + NoiseEstimator.eps)))
    est.save_pretrained(folder / "estimator")
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(folder))
    return folder


@pytest.mark.parametrize("shape", [(1, 1), (1, 3000)])
def test_flat_and_tiny_images_are_noise_free_and_unchanged(app, tmp_path, monkeypatch, shape):
    """Defect: a clean 1x1 image was read as sigma 54 (colour changed), a flat 3000x1 strip as sigma 32.
    With an estimator that reads 17 everywhere, a flat image with noise 'none' is still sigma 0 and unchanged."""
    use_weights_reading_17(app, tmp_path, monkeypatch)
    pixels = np.zeros((*shape, 3), np.uint8)
    pixels[...] = (200, 90, 31)
    src = write_png(tmp_path / "flat.png", pixels)
    res = app.run(str(src), "none", {}, seed=0)
    assert res.metrics["sigma_used"] == 0 and res.metrics["noise_map"] == "estimated"
    assert any("noise-free" in n for n in res.metrics["notes"])
    with Image.open(res.files["denoised"]) as im:
        assert np.array_equal(np.asarray(im), pixels)


def test_strength_slider_covers_its_label(app, tmp_path):
    """Defect: the strength was labelled (0-255) but the slider stopped at 100."""
    demo = app.build_demo(tmp_path / "ex")
    slider = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "strength")
    assert "0-255" in slider.label and slider.minimum == 0 and slider.maximum == 255


def test_quality_matches_ganlib_metrics(app, monkeypatch):
    """The demo's one-pass PSNR/SSIM give ganlib.metrics' numbers, also across row blocks."""
    from ganlib.metrics import psnr, ssim

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 57, 43, generator=g)
    a = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    b = ref * 0.8 + 0.3  # partly above 1: clipped first, as ganlib.metrics does
    monkeypatch.setattr(app, "_SSIM_ROWS", 16)
    for (p, s), img in zip(app.quality(ref, a, b), (a, b)):
        assert p == pytest.approx(psnr(img, ref), abs=2e-3) and s == pytest.approx(ssim(img, ref), abs=2e-4)
    assert app.quality(ref, ref)[0] == (None, 1.0)  # identical: infinite PSNR has no number
    assert app.quality(ref[..., :8, :8], a[..., :8, :8])[0][1] is None  # too small for the 11x11 window


def test_heat_map_has_a_labelled_scale(app):
    m = torch.linspace(0, 40, 80).view(1, 1, 1, 80).expand(1, 1, 64, 80)
    img, top = app.heatmap_image(m, "noise level")
    assert top == 50  # a round top above the largest value (40)
    arr = np.asarray(img)
    assert img.width > 80 + 18 and img.height > 64  # map + colour bar + labels + title
    body = arr[img.height - 64 - 8 : img.height - 8, 8 : 8 + 80]  # the map, below the title, inside the padding
    assert np.array_equal(body[0, 0], app.LUT[0]) and np.array_equal(body[0, -1], app.LUT[round(40 / 50 * 255)])


def test_residual_is_amplified_and_cropped_on_large_images(app, monkeypatch):
    g = torch.Generator().manual_seed(0)
    clean = torch.full((1, 3, 40, 48), 0.5)
    noisy = clean + 0.01 * torch.randn(clean.shape, generator=g)  # std 0.01 -> gain 16 (0.5 / 0.03 = 16.7)
    view, gain, box = app.residual_view(noisy, clean)
    assert gain == 16 and box is None and view.shape == clean.shape
    assert torch.allclose(view, (0.5 + 16 * (noisy - clean)).clamp(0, 1))
    assert app.residual_view(clean, clean)[1] == 1  # nothing removed: no amplification, flat grey
    monkeypatch.setattr(app, "RESIDUAL_MAX_SIDE", 16)
    view, gain, box = app.residual_view(noisy, clean)
    assert view.shape[-2:] == (16, 16) and box == (12, 16, 16, 16)


def test_compare_all_five_kinds(app, rgb_png, monkeypatch):
    calls = []
    table, gallery, note = app.compare(str(rgb_png), {"sigma": 30, "camera_quality": 80}, seed=1,
                                       progress=lambda value, **k: calls.append(value))
    assert [r["kind"] for r in table] == list(app.KINDS)
    assert table[0]["settings"] == "sigma 30" and "JPEG 80" in table[-1]["settings"]  # the lab's current levels
    for r in table:
        assert {"psnr_noisy", "psnr_denoised", "ssim_noisy", "ssim_denoised"} <= set(r) and r["psnr_noisy"] < 35
    assert len(gallery) == 10 and all(Path(p).is_file() for p, _ in gallery)
    assert "gaussian" in gallery[0][1] and "noisy" in gallery[0][1] and "denoised" in gallery[1][1]
    assert note == "Whole photo, 48x40."
    monkeypatch.setattr(app, "COMPARE_MAX_SIDE", 32)  # a 'large' photo: a labelled centre crop, never downscaled
    table, gallery, note = app.compare(str(rgb_png), None, seed=1)
    assert note.startswith("Centre crop 32x32 at x=8, y=4 of the 48x40 photo")
    with Image.open(gallery[0][0]) as im:
        assert im.size == (32, 32)


def test_kind_params_and_api_defaults_match_the_page(app):
    """One set of names and defaults for the page, the API and the README."""
    import inspect

    sig = inspect.signature(app.api_denoise).parameters
    for name, value in app.LAB_DEFAULTS.items():
        assert sig[name].default == value
    assert app.kind_params("camera", {"camera_quality": 0}) == {"peak": 200.0, "sigma": 2.0, "quality": None}
    assert app.kind_params("camera", {"camera_quality": 85, "camera_read": 3}) == {"peak": 200.0, "sigma": 3, "quality": 85}
    assert app.kind_params("speckle", {"speckle_sigma": 0.3, "sigma": 99}) == {"sigma": 0.3}
    if app.HAS_WHOLE_PIXEL:
        assert app.kind_params("salt_pepper", {"whole_pixel": True})["whole_pixel"] is True


def test_examples_one_per_kind_plus_gray_and_real_noise(app, tmp_path):
    rows = app.make_examples(tmp_path / "ex")
    lab = [r for r in rows if r.mode == "Noise lab"]
    assert {r.kind for r in lab} == set(app.KINDS)
    photo = [r for r in rows if r.mode == "Denoise my photo"]
    assert len(photo) == 1 and "noisy" in photo[0].label
    assert any(Image.open(r.path).mode == "L" for r in rows) and len(rows) == 7
    for r in rows:  # only the settings that apply to each example's kind
        assert set(r.settings) <= set(app.KIND_SETTINGS[r.kind]) and len(r.label) <= 40
        values = app.example_updates(r)
        assert values[0] == r.path and values[1] == r.mode and values[2] == r.kind
        assert values[-2:] == [True, False]  # automatic strength, no pixel-shuffle: per-photo settings start over


# ----------------------------------------------------------------------------- the live server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app, tmp_path_factory):
    demo = app.build_demo(tmp_path_factory.mktemp("examples"))
    port = free_port()
    app.launch(demo, server_port=port, prevent_thread_lock=True, quiet=True)
    assert demo.max_file_size == app.MAX_FILE_MB * 1024 * 1024  # the upload limit is on
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_api_denoise_endpoint(server, rgb_png):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/denoise"]
    assert [p["parameter_name"] for p in info["parameters"]] == [
        "image", "noise_kind", "sigma", "peak", "amount", "salt_ratio", "whole_pixel", "speckle_sigma", "camera_peak",
        "camera_read", "camera_quality", "seed", "informed", "strength", "realism", "ensemble", "stride"]
    file, metrics = client.predict(image=handle_file(str(rgb_png)), noise_kind="gaussian", sigma=25, seed=0, api_name="/denoise")
    assert Path(file).name == "photo_denoised.png"
    with Image.open(file) as im:
        assert im.format == "PNG" and im.size == (48, 40)
    assert metrics["noise_kind"] == "gaussian" and 18.5 < metrics["psnr_noisy"] < 22.0 and "psnr_denoised" in metrics
    assert metrics["noise_map"] == "informed" and metrics["realism"] == 0
    # the camera's read noise and JPEG quality, and the salt ratio, are API parameters
    _, jpeg = client.predict(image=handle_file(str(rgb_png)), noise_kind="camera", camera_peak=50, camera_read=4,
                             camera_quality=30, api_name="/denoise")
    _, raw = client.predict(image=handle_file(str(rgb_png)), noise_kind="camera", camera_peak=50, camera_read=4, api_name="/denoise")
    assert jpeg["noise_params"]["quality"] == 30 and raw["noise_params"] == {"peak": 50, "sigma": 4, "quality": None}
    assert jpeg["psnr_noisy"] != raw["psnr_noisy"]
    _, white = client.predict(image=handle_file(str(rgb_png)), noise_kind="salt_pepper", amount=0.2, salt_ratio=1.0, api_name="/denoise")
    assert white["noise_params"]["salt_ratio"] == 1.0 and white["impulses_removed"] in (True, False)
    # bad input comes back as the one-sentence gr.Error message, and the server keeps serving
    bad = rgb_png.with_name("fake.png")
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="not an image"):
        client.predict(image=handle_file(str(bad)), api_name="/denoise")
    file, metrics = client.predict(image=handle_file(str(rgb_png)), api_name="/denoise")
    assert metrics["noise_kind"] == "none" and metrics["mode"] == "photo" and Path(file).is_file()


def test_api_compare_kinds_endpoint(server, rgb_png):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare_kinds"]
    assert [p["parameter_name"] for p in info["parameters"]] == ["image", "seed"]
    table, gallery = client.predict(image=handle_file(str(rgb_png)), seed=2, api_name="/compare_kinds")
    assert [r["kind"] for r in table] == ["gaussian", "poisson", "salt_pepper", "speckle", "camera"]
    for r in table:
        assert {"psnr_noisy", "psnr_denoised", "ssim_noisy", "ssim_denoised", "crop"} <= set(r)
        assert 5 < r["psnr_noisy"] < 40 and r["crop"] == "Whole photo, 48x40."
    assert len(gallery) == 10
    with Image.open(gallery[1]["image"]) as im:
        assert im.size == (48, 40)
    assert "gaussian" in gallery[1]["caption"] and "denoised" in gallery[1]["caption"]


def test_full_queue_says_so(app, tmp_path, rgb_png, monkeypatch):
    """A queue of 1 with one request running: further requests are turned away with 'Queue is full'."""
    from gradio_client import Client, handle_file

    monkeypatch.setattr(app, "QUEUE_SIZE", 1)
    monkeypatch.setattr(app, "CONCURRENCY", 1)
    slow = app._run_network

    def slow_network(*args, **kwargs):
        time.sleep(1.0)
        return slow(*args, **kwargs)

    monkeypatch.setattr(app, "_run_network", slow_network)
    demo = app.build_demo(tmp_path / "examples")
    port = free_port()
    app.launch(demo, server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        results: list[str] = []

        def call() -> None:
            try:
                client.predict(image=handle_file(str(rgb_png)), api_name="/denoise")
                results.append("ok")
            except Exception as e:  # noqa: BLE001 - the message is what we check
                results.append(str(e))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join(timeout=30)
        assert "ok" in results
        assert any("queue is full" in r.lower() for r in results), results
    finally:
        demo.close()


def test_network_time_is_split_from_the_estimate(app):
    """The timing line separates the network (from the tiles' pace) from what restore() did before it."""
    clock = app._TileClock(None, False)
    clock.first, clock.last, clock.calls = 10.0, 13.0, 4  # 4 tiles, 1 s apart: the network took 4 s
    assert clock.network_seconds(9.0) == pytest.approx(4.0)
    assert clock.network_seconds(3.5) == 3.5  # never more than the whole call
    single = app._TileClock(None, False)
    single(1, 1)
    assert single.network_seconds(2.0) == 2.0  # one tile: no pace to measure, all of it counts as network


def test_impulse_precheck_and_fast_estimate(app, rgb_png, tmp_path, monkeypatch):
    """Photo mode: without values at 0 or 1 there can be no impulses, so restore()'s whole-photo check is
    skipped (restore() is told impulses=False and estimates the map); with many such values restore() checks."""
    from ganlib.noise import add_noise

    smooth = load_image(rgb_png).pixels
    peppered = add_noise(smooth, "salt_pepper", seed=0, amount=0.1)
    assert not app._may_have_impulses(smooth) and app._may_have_impulses(peppered)
    assert app._may_have_impulses(peppered, rows=7)  # the same in blocks of rows
    use_weights_reading_17(app, tmp_path, monkeypatch)
    seen = []
    real = app.restore
    monkeypatch.setattr(app, "restore", lambda *a, **k: seen.append(k["impulses"]) or real(*a, **k))
    m = app.run(str(rgb_png), "none").metrics
    assert seen == [False] and m["noise_map"] == "estimated" and m["sigma_used"] == pytest.approx(17, abs=1e-3)
    assert "estimate" in m["seconds"]
    noisy_png = save_image(ImageData(pixels=peppered), tmp_path / "peppered.png")
    m = app.run(str(noisy_png), "none").metrics
    assert seen[-1] is None and m["noise_map"] == "estimated"  # restore() checks for impulses and estimates itself


def test_the_demo_reads_the_noise_level_function_once(app, rgb_png, tmp_path, monkeypatch):
    """Photo mode, automatic strength: restore() estimates the map and decides on the camera-noise second pass
    from the same noise-level function, so it is computed once per photo (the estimator on up to 8 tiles)."""
    import ganlib.inference as inference
    import ganlib.noise_level as noise_level

    use_weights_reading_17(app, tmp_path, monkeypatch)
    calls = []
    real = noise_level._noise_level_function
    for module in (inference, noise_level):  # restore() calls it directly for a given map, _blind_map for an estimated one
        monkeypatch.setattr(module, "_noise_level_function", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = app.run(str(rgb_png), "none").metrics
    assert m["noise_map"] == "estimated" and m["sigma_used"] == pytest.approx(17, abs=1e-3)
    assert len(calls) == 1


def test_the_demo_tells_restore_which_maps_it_estimated(app, rgb_png, tmp_path, monkeypatch):
    """Realism's detail gain is matched to the clean photo only for a known noise level: the demo's
    automatic estimate must reach restore() as estimated, added noise and a hand-set strength as known."""
    use_weights_reading_17(app, tmp_path, monkeypatch, gan=True)  # restore() estimates the map
    seen = []
    real = app.restore
    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.estimated)  # what restore() took the map for (fixed or matched detail gain)
        return out

    monkeypatch.setattr(app, "restore", spy)
    assert app.run(str(rgb_png), "none", realism=1.0).metrics["noise_map"] == "estimated" and seen[0] is True
    seen.clear()
    assert app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=0, realism=1.0).metrics["noise_map"] == "informed"
    assert seen[0] is False
    seen.clear()
    assert app.run(str(rgb_png), "none", strength=20.0, realism=1.0).metrics["noise_map"] == "manual" and seen[0] is False


def test_realism_tab_shows_realism_zero_beside_the_chosen_one(app, rgb_png):
    """#14: the effect of realism at a glance: a textured crop at realism 0 beside the chosen realism, 200%."""
    from PIL import Image

    res = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=0, realism=1.0)
    crop = Image.open(res.files["realism"])
    side = min(app.REALISM_CROP, res.metrics["width"], res.metrics["height"])
    assert crop.size == (2 * (2 * side + 4), 2 * side + 20)
    assert "Realism 1 against 0" in res.captions["realism"]
    assert "realism" not in app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=0).files  # realism 0: nothing to compare


# ----------------------------------------------------------------------------- pixel-shuffle for camera noise


def blotchy(tmp_path: Path, h: int = 40, w: int = 48, name: str = "phone.png") -> Path:
    """The smooth scene plus seeded, spatially correlated noise (white noise blurred over 2x2 pixels), 8-bit."""
    g = np.random.default_rng(0)
    white = g.normal(0, 20 / 255, (h + 1, w + 1, 3))
    noise = (white[:-1, :-1] + white[1:, :-1] + white[:-1, 1:] + white[1:, 1:]) / 2
    return write_png(tmp_path / name, (np.clip(scene(h, w) + noise, 0, 1) * 255).round().astype(np.uint8))


def library(app, src: Path, **kwargs):
    """ganlib.inference.restore on the app's weights, with the app's tiling and precision."""
    return app.restore(app.get_weights(), load_image(src), tile=app.TILE, overlap=app.OVERLAP, precision=app.PRECISION, **kwargs)


@pytest.mark.parametrize("shape", [(40, 48), (39, 47)])  # odd sides: restore() pads the sub-images
def test_camera_noise_is_restore_at_stride_2(app, tmp_path, shape):
    """The option is restore(stride=2) exactly, at an automatic and a manual strength, and differs from off."""
    src = blotchy(tmp_path, *shape)
    on = app.run(str(src), "none", {}, stride=2)
    off = app.run(str(src), "none", {})
    assert torch.equal(on.denoised.pixels, library(app, src, stride=2).image.pixels)
    assert torch.equal(on.noise_map, library(app, src, stride=2).noise_map)
    assert not torch.equal(on.denoised.pixels, off.denoised.pixels)
    assert on.metrics["stride"] == 2 and off.metrics["stride"] == 1 and on.metrics["noise_map"] == "estimated"
    manual = app.run(str(src), "none", {}, strength=20, stride=2)
    assert torch.equal(manual.denoised.pixels, library(app, src, sigma=20.0, stride=2).image.pixels)
    assert not torch.equal(manual.denoised.pixels, app.run(str(src), "none", {}, strength=20).denoised.pixels)
    assert manual.metrics["stride"] == 2 and manual.metrics["strength"] == "manual"


def test_camera_noise_with_the_learned_estimator(app, tmp_path, monkeypatch):
    """With estimator weights, pixel-shuffled, restore() estimates each sub-image: still exactly the library's
    result, and the estimate's time is not counted as the network's."""
    from ganlib.models import EstimatorConfig, NoiseEstimator

    folder = make_weights(tmp_path / "w", gan=False)
    torch.manual_seed(2)  # random weights: the map depends on what the estimator is shown (a whole photo or a sub-image)
    NoiseEstimator(EstimatorConfig(width=8)).save_pretrained(folder / "estimator")
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(folder))
    src = blotchy(tmp_path)
    descs = []
    res = app.run(str(src), "none", {}, stride=2, progress=lambda value, desc=None, **k: descs.append(desc))
    expected = library(app, src, stride=2)
    assert app.get_weights().estimator is not None and res.metrics["noise_map"] == "estimated"
    assert torch.equal(res.noise_map, expected.noise_map) and torch.equal(res.denoised.pixels, expected.image.pixels)
    assert res.metrics["sigma_used"] == round(expected.sigma, 3)
    # 48x40 pixel-shuffled: four 24x20 sub-images, one 32-pixel tile each; the refinements: 15 tiles of the whole
    assert [d for d in descs if d.startswith("Denoising ")] == ([f"Denoising sub-image {n}/4, tile 1/1" for n in range(1, 5)]
                                                              + [f"Denoising refinement {n}/4, tile {t}/15" for n in range(1, 5) for t in range(1, 16)])


def test_page_option_photo_mode_only(app, tmp_path):
    """The page's checkbox: pixel-shuffle in photo mode (the same PNG as restore(stride=2)), said in the summary
    and the map caption; ignored in the Noise lab, whose synthetic noise is white."""
    src = blotchy(tmp_path)
    outs = app.ui_denoise(*ui_args(app, str(src), mode="Denoise my photo", camera_noise=True), progress=None)
    metrics, md = outs[6], outs[4]
    assert metrics["stride"] == 2 and "pixel-shuffled ×2 for camera noise" in md
    assert "4 pixel-shuffled sub-images" in outs[8]
    expected = save_image(library(app, src, stride=2).image, tmp_path / "expected.png")
    assert torch.equal(load_image(outs[3]).pixels, load_image(expected).pixels)
    lab = app.ui_denoise(*ui_args(app, str(src), camera_noise=True), progress=None)
    assert lab[6]["mode"] == "lab" and lab[6]["stride"] == 1 and "pixel-shuffled" not in lab[4]
    plain = app.ui_denoise(*ui_args(app, str(src), mode="Denoise my photo"), progress=None)
    assert plain[6]["stride"] == 1 and "pixel-shuffled" not in plain[4]


def test_camera_noise_control_and_api_defaults_match(app, tmp_path):
    """Off by default on the page (shown in photo mode, hidden in the lab) and stride=1 in the API."""
    import inspect

    demo = app.build_demo(tmp_path / "ex")
    blocks = list(demo.blocks.values())
    box = next(b for b in blocks if getattr(b, "elem_id", None) == "camera-noise")
    assert isinstance(box, gr.Checkbox) and box.value is False and box.visible is True
    assert box.label == "Camera / phone photo: blotchy noise" and "fine texture" in box.info and "leave it off" in box.info
    api = next(b for b in blocks if isinstance(b, gr.Number) and b.label == "stride")
    assert api.value == 1 == inspect.signature(app.api_denoise).parameters["stride"].default
    assert inspect.signature(app.run).parameters["stride"].default == 1
    toggle = next(f for f in demo.fns.values() if box in f.outputs and f.inputs and f.inputs[0].elem_id == "mode")
    lab, shown = toggle.fn("Noise lab")
    assert lab["visible"] is True and shown["visible"] is False
    lab, shown = toggle.fn("Denoise my photo")
    assert lab["visible"] is False and shown["visible"] is True


@pytest.mark.parametrize("bad", [0, 5, -1, 1.5, "2", "two", True, [2]])
def test_bad_stride_is_a_gradio_error(app, rgb_png, bad):
    with pytest.raises(gr.Error, match="Stride must be a whole number from 1 to 4") as err:
        app.api_denoise(str(rgb_png), stride=bad, progress=None)
    assert "Traceback" not in err.value.message


def test_stride_accepts_whole_floats_and_none(app, rgb_png):
    assert app.api_denoise(str(rgb_png), stride=2.0, progress=None)[1]["stride"] == 2
    assert app.api_denoise(str(rgb_png), stride=None, progress=None)[1]["stride"] == 1


def test_salt_and_pepper_is_not_pixel_shuffled(app, rgb_png):
    """restore() removes impulses with the switching median whatever the stride: the metrics say stride 1, and why."""
    m = app.run(str(rgb_png), "salt_pepper", {"amount": 0.1}, seed=0, stride=2).metrics
    assert m["impulses_removed"] is True and m["stride"] == 1
    assert any("pixel-shuffle (stride 2) does not apply" in n for n in m["notes"])


def test_realism_crop_uses_the_same_stride(app, tmp_path, monkeypatch):
    """The realism tab's realism-0 crop is denoised pixel-shuffled too, with the result's map."""
    src = blotchy(tmp_path)
    calls = []
    real = app.restore
    monkeypatch.setattr(app, "restore", lambda *a, **k: calls.append((k["realism"], k["stride"])) or real(*a, **k))
    res = app.run(str(src), "none", {}, realism=0.5, stride=2)
    assert calls == [(0.5, 2), (0.0, 2)] and "realism" in res.files


def test_realism_crop_of_a_salt_and_pepper_photo_has_its_impulses_removed(app, rgb_png, monkeypatch):
    """The realism-0 crop of a salt & pepper result goes through the same impulse removal as the result."""
    calls = []
    real = app.restore
    monkeypatch.setattr(app, "restore", lambda *a, **k: calls.append((k["realism"], k["impulses"])) or real(*a, **k))
    res = app.run(str(rgb_png), "salt_pepper", {"amount": 0.1}, seed=0, realism=1.0)
    assert calls[-1] == (0.0, True) and "realism" in res.files
    crop = np.asarray(Image.open(res.files["realism"]).convert("RGB"))[20:, : crop_width(res, app)]
    assert ((crop == 0) | (crop == 255)).mean() < 0.01  # no impulses left in the realism-0 half (10% were)


def crop_width(res, app) -> int:
    """Width at 200% of one half of the realism tab's comparison."""
    return 2 * min(app.REALISM_CROP, res.metrics["width"], res.metrics["height"])


def test_tile_clock_leaves_the_sub_image_estimates_out_of_the_network(app, monkeypatch):
    """Pixel-shuffled, restore() estimates each sub-image just before denoising it: those pauses are not tiles.
    Then it refines the whole once per sub-image (bigger tiles: the count of each part is its own)."""
    from types import SimpleNamespace

    # 4 sub-images x 2 tiles, 1 s each, 5-6 s of estimate between them; then 4 refinements x 3 tiles, back to back
    times = iter([1, 2, 8, 9, 14, 15, 20, 21] + list(range(22, 34)))
    monkeypatch.setattr(app, "time", SimpleNamespace(perf_counter=lambda: float(next(times))))
    seen = []
    clock = app._TileClock(lambda value, desc=None, **k: seen.append((value, desc)), False, stride=2)
    for part, tiles in [(n, 2) for n in range(4)] + [(n, 3) for n in range(4, 8)]:
        for done in range(1, tiles + 1):
            clock(part * tiles + done, 8 * tiles)  # as ganlib's _pass(progress, part, 8) reports it
    assert clock.network_seconds(40.0) == pytest.approx(20.0)
    assert seen[2] == ((3, 16), "Denoising sub-image 2/4, tile 1/2") and seen[7] == ((8, 16), "Denoising sub-image 4/4, tile 2/2")
    assert seen[8] == ((13, 24), "Denoising refinement 1/4, tile 1/3") and seen[-1] == ((24, 24), "Denoising refinement 4/4, tile 3/3")


def test_tile_clock_names_the_two_realism_passes(app, monkeypatch):
    """Realism above 0 at stride 2: restore() reports 2 passes x (4 sub-images + 4 refinements) x 2 tiles as one count."""
    from types import SimpleNamespace

    monkeypatch.setattr(app, "time", SimpleNamespace(perf_counter=lambda: 1.0))
    seen = []
    clock = app._TileClock(lambda value, desc=None, **k: seen.append((value, desc)), False, stride=2, passes=2)
    for done in range(1, 33):
        clock(done, 32)
    assert seen[0] == ((1, 32), "Denoising pass 1/2 (texture), sub-image 1/4, tile 1/2")
    assert seen[9] == ((10, 32), "Denoising pass 1/2 (texture), refinement 1/4, tile 2/2")
    assert seen[17] == ((18, 32), "Denoising pass 2/2 (tone), sub-image 1/4, tile 2/2")
    assert seen[-1] == ((32, 32), "Denoising pass 2/2 (tone), refinement 4/4, tile 2/2")
    assert clock.crossings == 15  # 7 part steps in each pass and the step between the passes
    one = []
    app._TileClock(lambda value, desc=None, **k: one.append(desc), False, passes=2)(3, 5)  # an odd count: one pass
    assert one == ["Denoising tile 3/5"]


def test_api_stride_parameter(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/denoise"]
    stride = next(p for p in info["parameters"] if p["parameter_name"] == "stride")
    assert stride["parameter_has_default"] and stride["parameter_default"] == 1
    src = blotchy(tmp_path)
    _, default = client.predict(image=handle_file(str(src)), api_name="/denoise")
    file, shuffled = client.predict(image=handle_file(str(src)), stride=2, api_name="/denoise")
    assert default["stride"] == 1 and shuffled["stride"] == 2 and shuffled["mode"] == "photo"
    assert Path(file).is_file()
    with pytest.raises(Exception, match="Stride must be a whole number"):
        client.predict(image=handle_file(str(src)), stride=7, api_name="/denoise")


def test_camera_photo_hint_from_exif(app, tmp_path, rgb_png):
    """A photo whose EXIF names a camera gets a note pointing to the camera option (photo mode, option off)."""
    exif = Image.Exif()
    exif[271], exif[272] = "ACME", "X100"
    jpg = tmp_path / "cam.jpg"
    Image.open(rgb_png).convert("RGB").save(jpg, quality=90, exif=exif)
    hint = [n for n in app.run(str(jpg), "none", {}).metrics["notes"] if "Camera / phone photo" in n]
    assert len(hint) == 1 and "ACME X100" in hint[0] and "ISO" not in hint[0]
    exif.get_ifd(0x8769)[34855] = 3200  # the shot's ISO, in the Exif sub-IFD
    Image.open(rgb_png).convert("RGB").save(tmp_path / "iso.jpg", quality=90, exif=exif)
    hint = [n for n in app.run(str(tmp_path / "iso.jpg"), "none", {}).metrics["notes"] if "Camera / phone photo" in n]
    assert len(hint) == 1 and "ACME X100, ISO 3200" in hint[0]
    assert not any("Camera / phone photo" in n for n in app.run(str(jpg), "none", {}, stride=2).metrics["notes"])
    assert not any("Camera / phone photo" in n for n in app.run(str(rgb_png), "none", {}).metrics["notes"])  # no EXIF
    assert not any("Camera / phone photo" in n for n in app.run(str(jpg), "gaussian", {"sigma": 10}).metrics["notes"])  # lab
    assert app.camera_make(None) is None and app.camera_make(b"not an exif block") is None
    # realism sharpens the noise left at stride 1: said with the camera hint, or on its own without EXIF
    hint = [n for n in app.run(str(jpg), "none", {}, realism=0.5).metrics["notes"] if "Camera / phone photo" in n]
    assert len(hint) == 1 and "ACME X100" in hint[0] and "realism sharpens" in hint[0]
    hint = [n for n in app.run(str(rgb_png), "none", {}, realism=0.5).metrics["notes"] if "Camera / phone photo" in n]
    assert len(hint) == 1 and hint[0].startswith("realism sharpens")
    assert not any("realism sharpens" in n for n in app.run(str(rgb_png), "none", {}, realism=0.5, stride=2).metrics["notes"])
    assert not any("realism sharpens" in n for n in app.run(str(rgb_png), "gaussian", {"sigma": 10}, realism=0.5).metrics["notes"])
