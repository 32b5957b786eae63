"""End to end in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, installed by
`make chromium`; browser downloads are not reachable) against the demo served on a free local port.

Upload an image, pick gaussian noise, click Denoise, see the before/after slider, download the PNG and
check its name and size."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path(os.environ.get("GANLIB_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ganlib.models import Generator, GeneratorConfig

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 1])).save_pretrained(folder / "fidelity")
    old = os.environ.get("GANLIB_WEIGHTS")
    os.environ["GANLIB_WEIGHTS"] = str(folder)
    import app

    app._weights, app._weights_error = None, None
    demo = app.build_demo(tmp_path_factory.mktemp("examples"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    app._weights, app._weights_error = None, None
    if old is None:
        os.environ.pop("GANLIB_WEIGHTS", None)
    else:
        os.environ["GANLIB_WEIGHTS"] = old


@pytest.fixture()
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser.new_page(accept_downloads=True)
        finally:
            browser.close()


def test_upload_noise_denoise_download(server, page, tmp_path):
    h, w = 72, 100
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 2.5, y * 3.0, (x + y) % 200], -1).astype(np.uint8)
    src = tmp_path / "street.png"
    Image.fromarray(arr).save(src)

    page.goto(server)
    page.wait_for_selector("#denoise-btn", timeout=60_000)
    page.locator("#input-image input[type=file]").set_input_files(str(src))
    # the original file name and size are shown once the upload is in
    page.wait_for_function("document.querySelector('#file-info')?.innerText.includes('street.png')", timeout=30_000)
    assert f"{w} x {h}" in page.locator("#file-info").inner_text()

    page.locator("#noise-kind").get_by_label("speckle").check()
    page.locator("#noise-kind").get_by_label("gaussian").check()
    page.click("#denoise-btn")

    page.wait_for_selector("#slider img", timeout=60_000)
    assert page.locator("#slider img").count() == 2  # before and after
    page.wait_for_function("document.querySelector('#metrics')?.innerText.includes('PSNR')", timeout=30_000)
    assert "denoised" in page.locator("#metrics").inner_text()

    download_button = page.locator("#download")
    assert "street_denoised.png" in download_button.inner_text()
    with page.expect_download(timeout=30_000) as info:
        download_button.click()
    download = info.value
    assert download.suggested_filename == "street_denoised.png"
    saved = tmp_path / "downloaded.png"
    download.save_as(saved)
    with Image.open(saved) as im:
        assert im.format == "PNG" and im.size == (w, h) and im.mode == "RGB"
