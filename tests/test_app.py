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
    calls = []
    res = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=3, progress=lambda *a, **k: calls.append(a[0]))
    m = res.metrics
    # the noise really was added: the noisy image is about sigma=25 away from the original (PSNR ~ 20.2 dB)
    assert 18.5 < m["psnr_noisy"] < 22.0
    assert 0 < m["ssim_noisy"] < 0.9
    assert np.isfinite(m["psnr_denoised"]) and -1 <= m["ssim_denoised"] <= 1
    assert 15 < m["sigma_estimated"] < 35 and m["sigma_used"] == m["sigma_estimated"] and m["strength"] == "auto"
    assert m["sigma_estimator"] == "wavelet (scikit-image)"  # these weights have no estimator/
    assert m["seconds_total"] >= m["seconds_network"] > 0
    # per-tile progress: 48x40 with 32-pixel tiles and 64 overlap -> several tiles, counted up to the total
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1] == len(calls)
    out = res.files["denoised"]
    assert out.name == "photo_denoised.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (48, 40) and im.mode == "RGB"
    with Image.open(res.files["noisy"]) as im:
        noisy = np.asarray(im)
    assert np.abs(noisy.astype(int) - np.asarray(Image.open(rgb_png)).astype(int)).mean() > 5


def test_ensemble_averages_eight_passes(app, rgb_png):
    calls = []
    plain = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=3, strength=25)
    best = app.run(str(rgb_png), "gaussian", {"sigma": 25}, seed=3, strength=25, ensemble=True,
                   progress=lambda *a, **k: calls.append(a[0]))
    assert best.metrics["ensemble"] is True and plain.metrics["ensemble"] is False
    assert plain.metrics["precision"] == app.resolve_precision(app.PRECISION)  # what really ran, e.g. bfloat16
    assert calls[-1][0] == calls[-1][1] == len(calls) and len(calls) % 8 == 0  # every tile of all 8 views
    assert torch.equal(plain.noisy.pixels, best.noisy.pixels)
    assert not torch.equal(plain.denoised.pixels, best.denoised.pixels)


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
    file, metrics = app.api_denoise({"path": str(rgb_png), "orig_name": "holiday shot.png"}, "gaussian", 20, 0, None, 0.0, progress=None)
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
        app.api_denoise(str(rgb_png), "gaussian", -5, 0, None, 0.0, progress=None)
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


def test_auto_strength_uses_the_weights_estimator(app, rgb_png, tmp_path, monkeypatch):
    from ganlib.models import EstimatorConfig, NoiseEstimator

    folder = make_weights(tmp_path / "w", gan=False)
    est = NoiseEstimator(EstimatorConfig(width=8))
    with torch.no_grad():
        est.out.weight.zero_()
        est.out.bias.fill_(float(np.log(17 / 255 + NoiseEstimator.eps)))  # says sigma 17 everywhere
    est.save_pretrained(folder / "estimator")
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(folder))
    m = app.run(str(rgb_png), "gaussian", {"sigma": 40}, seed=0).metrics
    assert m["sigma_estimated"] == pytest.approx(17, abs=1e-3) and m["sigma_used"] == m["sigma_estimated"]
    assert m["sigma_estimator"] == "learned (estimator/)"
    assert "learned noise-level estimator" in app.weights_banner()
    assert app.run(str(rgb_png), "gaussian", {"sigma": 40}, seed=0, strength=30).metrics["sigma_used"] == 30  # manual wins


def test_no_weights_gives_a_clear_error(app, rgb_png, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "_weights", None)
    monkeypatch.setattr(app, "_weights_error", None)
    monkeypatch.setenv("GANLIB_WEIGHTS", str(tmp_path / "empty-but-present"))
    (tmp_path / "empty-but-present").mkdir()
    with pytest.raises(gr.Error, match="No denoising weights"):
        app.run(str(rgb_png), "none")
    assert "none loaded" in app.weights_banner()


def test_ui_function_returns_every_view(app, rgb_png):
    slider, original, noisy, denoised, md, download, metrics = app.ui_denoise(
        {"path": str(rgb_png), "orig_name": "photo.png"}, "gaussian", 25, 30, 0.05, 0.5, 0.2, 200, 2, 0, 1, "manual", 20, 0.0, progress=None
    )
    assert slider == (noisy["value"], denoised) and noisy["visible"] is True
    assert Path(download["value"]).name == "photo_denoised.png" and download["label"] == "Download photo_denoised.png"
    assert metrics["sigma_used"] == 20 and "PSNR" in md
    assert f"s network ({metrics['precision']})" in md
    assert all(Path(p).suffix == ".png" for p in (original, noisy["value"], denoised))


def test_examples_cover_every_noise_kind(app, tmp_path):
    rows = app.make_examples(tmp_path / "ex")
    assert {r[1] for r in rows} == set(app.NOISE_KINDS)
    modes = {Image.open(r[0]).mode for r in rows}
    assert {"RGB", "L", "RGBA"} <= modes


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
    assert [p["parameter_name"] for p in info["parameters"]] == ["image", "noise_kind", "noise_level", "seed", "strength", "realism", "ensemble"]
    file, metrics = client.predict(image=handle_file(str(rgb_png)), noise_kind="gaussian", noise_level=25, seed=0, api_name="/denoise")
    assert Path(file).name == "photo_denoised.png"
    with Image.open(file) as im:
        assert im.format == "PNG" and im.size == (48, 40)
    assert metrics["noise_kind"] == "gaussian" and 18.5 < metrics["psnr_noisy"] < 22.0 and "psnr_denoised" in metrics
    # bad input comes back as the one-sentence gr.Error message, and the server keeps serving
    bad = rgb_png.with_name("fake.png")
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception, match="not an image"):
        client.predict(image=handle_file(str(bad)), api_name="/denoise")
    file, metrics = client.predict(image=handle_file(str(rgb_png)), api_name="/denoise")
    assert metrics["noise_kind"] == "none" and Path(file).is_file()


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
