"""Bad input to ganlib.images: every case raises ImageError with one clear sentence, never a raw
traceback; extreme-but-valid sizes (1x1, 1x20000) work."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

import ganlib  # noqa: F401  (importing the library must not enable truncated-image loading)
from ganlib.images import ImageData, ImageError, encode_png, load_image, save_image


def read_pil(path) -> Image.Image:
    """Open an image file without leaving a file handle open."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def noisy(h=48, w=48) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w, 3)).astype(np.uint8)


def declared_png(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares width x height (8-bit RGB): a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def one_sentence(msg: str) -> None:
    assert msg and "\n" not in msg and "Traceback" not in msg and len(msg) < 300
    assert msg.endswith(".")


def expect_error(src, match: str, **kw) -> str:
    with pytest.raises(ImageError, match=match) as info:
        load_image(src, **kw)
    msg = str(info.value)
    one_sentence(msg)
    return msg


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    msg = expect_error(tmp_path / "empty.png", "empty")
    assert "empty.png" in msg
    expect_error(b"", "empty")


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture\n" * 10)
    msg = expect_error(tmp_path / "notes.png", "not an image in a supported format")
    assert "notes.png" in msg


@pytest.mark.parametrize("name,content", [("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
                                          ("data.bin", bytes(range(256)) * 4)])
def test_unsupported_format(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    assert name in expect_error(tmp_path / name, "not an image in a supported format")


def test_missing_file_and_folder(tmp_path):
    expect_error(tmp_path / "nope.png", "does not exist")
    expect_error(tmp_path, "is a folder")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_file(tmp_path, fmt, keep):
    data = (png_bytes if fmt == "png" else jpeg_bytes)(noisy())
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: int(len(data) * keep)])
    assert "cut." in expect_error(path, "truncated or corrupt")


def test_png_missing_end_marker_is_truncated():
    data = png_bytes(noisy())
    expect_error(data[:-12], "truncated or corrupt")  # IEND chunk cut off


def test_png_corrupt_byte_detected():
    data = bytearray(png_bytes(noisy()))
    data[len(data) // 2] ^= 0xFF
    expect_error(bytes(data), "truncated or corrupt")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncation_detected_even_if_pillow_was_told_to_accept_it(monkeypatch, fmt):
    data = (png_bytes if fmt == "png" else jpeg_bytes)(noisy())
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might do
    expect_error(data[: len(data) * 3 // 4], "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global setting is restored


def test_importing_ganlib_does_not_enable_truncated_loading():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_over_max_pixels_is_checked_before_decoding():
    bomb = declared_png(10000, 6000)  # 60 MP declared, 1 KB of data
    start = time.perf_counter()
    msg = expect_error(bomb, r"is 60\.0 megapixels")
    assert "the limit is 50.0" in msg and "10000x6000" in msg
    assert time.perf_counter() - start < 1.0


def test_decompression_bomb_beyond_pillow_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(declared_png(100_000, 100_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may leak either
        msg = expect_error(path, "bomb|megapixels")
        assert "bomb.png" in msg
        # between Pillow's warning and error thresholds: still our message, no warning
        expect_error(declared_png(12000, 10000), r"is 120\.0 megapixels")


def test_small_max_pixels(tmp_path):
    expect_error(png_bytes(noisy(100, 100)), r"is 0\.01 megapixels \(100x100\); the limit is 0\.005", max_pixels=5000)
    expect_error(noisy(100, 100), r"0\.01 megapixels", max_pixels=5000)  # arrays are checked too
    assert load_image(png_bytes(noisy(100, 100)), max_pixels=10_000).pixels.shape == (1, 3, 100, 100)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 20000), (20000, 1)])
def test_extreme_shapes_work(tmp_path, h, w):
    arr = np.random.default_rng(2).integers(0, 256, (h, w, 3)).astype(np.uint8)
    path = tmp_path / "thin.png"
    Image.fromarray(arr).save(path)
    data = load_image(path)
    assert data.pixels.shape == (1, 3, h, w)
    np.testing.assert_array_equal(np.asarray(read_pil(save_image(data, tmp_path / "out.png"))), arr)


def test_bad_arrays_and_objects():
    expect_error(np.zeros((4, 4, 5), np.uint8), "shape")
    expect_error(np.zeros((2, 2, 2, 2), np.uint8), "shape")
    expect_error(np.zeros((4, 4), np.int64), "dtype")
    expect_error(np.zeros((0, 4), np.uint8), "no pixels")
    expect_error(12345, "cannot load an image from a int")
    expect_error(io.StringIO("text"), "binary mode")


def test_bad_save_inputs(tmp_path):
    with pytest.raises(ImageError, match="lossless PNG") as info:
        save_image(load_image(noisy(4, 4)), tmp_path / "x.jpg")
    one_sentence(str(info.value))
    with pytest.raises(ImageError, match="1 or 3 channels"):
        encode_png(ImageData(pixels=torch.zeros(1, 2, 4, 4)))
    with pytest.raises(ImageError, match="alpha"):
        encode_png(ImageData(pixels=torch.zeros(1, 3, 4, 4), alpha=np.zeros((3, 3), np.uint8)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageError, match="cannot write"):
        save_image(load_image(noisy(4, 4)), blocker / "out.png")  # parent is a file


def _valid_files() -> list[bytes]:
    arr = noisy(16, 16)
    out = [png_bytes(arr), jpeg_bytes(arr)]
    for fmt in ("GIF", "BMP", "TIFF", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


VALID = _valid_files()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(VALID))), st.floats(0, 1), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_property_damaged_files_load_or_raise_image_error(which, keep, flips):
    """Truncated / bit-flipped files of every common format: a clean result or ImageError, nothing else."""
    data = bytearray(VALID[which][: max(1, int(len(VALID[which]) * keep))])
    for pos, value in flips:
        data[min(int(pos * len(data)), len(data) - 1)] = value
    try:
        out = load_image(bytes(data))
    except ImageError as e:
        one_sentence(str(e))
    else:
        assert out.pixels.dim() == 4 and 0 <= out.pixels.min() and out.pixels.max() <= 1


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=200))
def test_property_random_bytes_raise_image_error(blob):
    try:
        load_image(blob)
    except ImageError as e:
        one_sentence(str(e))
