"""Faithful image I/O: round trips keep bit depth, grayscale, alpha, ICC profile; EXIF orientation,
CMYK, palette, float TIFF and animated images are handled (ganlib.images)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, features

from ganlib.images import ImageData, ImageError, encode_png, load_image, save_image, to_numpy, to_pil, to_tensor

RNG = np.random.default_rng(0)


def read_pil(path) -> Image.Image:
    """Open an image file without leaving a file handle open."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


def rand(shape, dtype=np.uint8) -> np.ndarray:
    top = 65535 if dtype == np.uint16 else 255
    return RNG.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png16_cv2(arr: np.ndarray) -> bytes:
    """16-bit PNG written by OpenCV (an independent encoder), RGB(A) order in."""
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def with_exif_chunk(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk (orientation tag) right after IHDR."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    return png[:33] + chunk + png[33:]


def exact(data: ImageData, arr: np.ndarray) -> None:
    """data.pixels equals the colour part of the integer array `arr` exactly."""
    dtype = np.uint16 if data.bit_depth == 16 else np.uint8
    got = to_numpy(data.pixels, dtype)
    np.testing.assert_array_equal(got, arr)


# ----------------------------------------------------------------------------- conversions


def test_to_tensor_to_numpy_to_pil_still_work():
    a = rand((5, 7, 3))
    t = to_tensor(a)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32
    np.testing.assert_array_equal(to_numpy(t), a)
    np.testing.assert_array_equal(np.asarray(to_pil(t)), a)
    g = rand((4, 6), np.uint16)
    np.testing.assert_array_equal(to_numpy(to_tensor(g), np.uint16), g)
    assert to_numpy(torch.full((1, 1, 2, 2), float("nan"))).max() == 0  # NaN never becomes garbage


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "mode,shape",
    [("RGB", (9, 13, 3)), ("L", (9, 13)), ("RGBA", (9, 13, 4)), ("LA", (9, 13, 2))],
)
def test_8bit_roundtrip_through_files(tmp_path, mode, shape):
    a = rand(shape)
    if mode == "RGBA":
        a[..., 3] = np.arange(9 * 13).reshape(9, 13) % 256  # every alpha value distinct-ish, incl. 0 and 255
    src = tmp_path / f"in_{mode}.png"
    Image.fromarray(a, mode).save(src)
    data = load_image(src)
    channels = 1 if mode in ("L", "LA") else 3
    assert data.pixels.shape == (1, channels, 9, 13) and data.pixels.dtype == torch.float32
    assert data.bit_depth == 8 and data.name == f"in_{mode}"
    if mode in ("RGBA", "LA"):
        assert data.alpha is not None and data.alpha.dtype == np.uint8
        np.testing.assert_array_equal(data.alpha, a[..., -1])
        exact(data, a[..., :-1] if channels == 3 else a[..., 0])
    else:
        assert data.alpha is None
        exact(data, a)
    out = save_image(data, tmp_path / "out.png")
    back = read_pil(out)
    assert back.mode == mode
    np.testing.assert_array_equal(np.asarray(back), a)


def test_alpha_untouched_when_pixels_change(tmp_path):
    a = rand((6, 8, 4))
    data = load_image(a)
    alpha = data.alpha.copy()
    new = data.with_pixels(1 - data.pixels)
    assert new.alpha is data.alpha and new.bit_depth == 8 and new.notes == data.notes and new.notes is not data.notes
    out = np.asarray(read_pil(save_image(new, tmp_path / "x.png")))
    np.testing.assert_array_equal(out[..., 3], alpha)
    np.testing.assert_array_equal(out[..., :3], 255 - a[..., :3])
    with pytest.raises(ValueError, match="alpha"):
        data.with_pixels(torch.zeros(1, 3, 5, 8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        data.with_pixels(torch.zeros(1, 2, 6, 8))


def test_16bit_gray_png_and_tiff_stay_16bit(tmp_path):
    g = rand((7, 11), np.uint16)
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(g).save(tmp_path / "g.tif")
    for name in ("g.png", "g.tif"):
        data = load_image(tmp_path / name)
        assert data.bit_depth == 16 and data.pixels.shape == (1, 1, 7, 11)
        exact(data, g)
        back = read_pil(save_image(data, tmp_path / f"out_{name}.png"))
        assert back.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(back), g)


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_png_stays_16bit(tmp_path, channels):
    a = rand((5, 9, channels), np.uint16)
    (tmp_path / "c.png").write_bytes(png16_cv2(a))
    data = load_image(tmp_path / "c.png")
    assert data.bit_depth == 16 and data.pixels.shape == (1, 3, 5, 9)
    exact(data, a[..., :3])
    if channels == 4:
        assert data.alpha.dtype == np.uint16
        np.testing.assert_array_equal(data.alpha, a[..., 3])
    png = encode_png(data)
    # decoded by an independent decoder (OpenCV): exact 16-bit values, RGB(A) order
    dec = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert dec.dtype == np.uint16
    np.testing.assert_array_equal(dec[..., [2, 1, 0, 3][:channels]], a)
    assert Image.open(io.BytesIO(png)).mode == ("RGB" if channels == 3 else "RGBA")


def test_16bit_rgb_tiff_stays_16bit(tmp_path):
    import tifffile

    a = rand((6, 5, 3), np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", a, photometric="rgb")
    data = load_image(tmp_path / "c.tif")
    assert data.bit_depth == 16
    exact(data, a)


def test_16bit_gray_alpha_roundtrip():
    a = rand((4, 6, 2), np.uint16)
    data = load_image(a)
    assert data.bit_depth == 16 and data.pixels.shape == (1, 1, 4, 6) and data.alpha.dtype == np.uint16
    back = load_image(encode_png(data))
    assert back.bit_depth == 16 and back.pixels.shape == (1, 1, 4, 6)
    exact(back, a[..., 0])
    np.testing.assert_array_equal(back.alpha, a[..., 1])


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_icc_profile_preserved(tmp_path, bit_depth):
    icc = srgb_icc()
    if bit_depth == 8:
        Image.fromarray(rand((4, 4, 3))).save(tmp_path / "p.jpg", icc_profile=icc, quality=95)
        src = tmp_path / "p.jpg"
    else:
        src = tmp_path / "p.png"
        src.write_bytes(encode_png(ImageData(to_tensor(rand((4, 4, 3), np.uint16)), bit_depth=16, icc_profile=icc)))
    data = load_image(src)
    assert data.icc_profile == icc and data.bit_depth == bit_depth
    out = save_image(data, tmp_path / "out.png")
    assert read_pil(out).info.get("icc_profile") == icc
    assert load_image(out).icc_profile == icc


def test_exif_orientation_6_jpeg(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif, quality=95)
    data = load_image(tmp_path / "o.jpg")
    assert data.pixels.shape == (1, 3, 40, 20)
    top, bottom = data.pixels[0, :, :20].mean().item(), data.pixels[0, :, 20:].mean().item()
    assert top > 0.9 and bottom < 0.1  # the left half became the top half


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_every_exif_orientation_matches_pillow(orientation, bit_depth):
    a8 = rand((3, 5, 3))
    expected = np.asarray(Image.fromarray(a8).transpose(
        {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}[orientation]
    )) if orientation != 1 else a8
    if bit_depth == 8:
        png = pil_bytes(Image.fromarray(a8), "PNG")
    else:
        png = png16_cv2(a8.astype(np.uint16) * 257)  # the 16-bit colour path orients arrays itself
    data = load_image(with_exif_chunk(png, orientation))
    assert data.bit_depth == bit_depth
    exact(data, expected if bit_depth == 8 else expected.astype(np.uint16) * 257)


def test_cmyk_converted_to_rgb(tmp_path):
    c = np.zeros((2, 4, 4), np.uint8)
    c[0, 0] = (255, 0, 0, 0)  # cyan
    c[0, 1] = (0, 255, 0, 0)  # magenta
    c[0, 2] = (0, 0, 255, 0)  # yellow
    c[0, 3] = (0, 0, 0, 255)  # black
    c[1] = (0, 0, 0, 0)  # white
    Image.fromarray(c, "CMYK").save(tmp_path / "k.tif")
    data = load_image(tmp_path / "k.tif")
    assert data.pixels.shape == (1, 3, 2, 4) and data.bit_depth == 8 and data.alpha is None
    assert any("CMYK" in n for n in data.notes)
    exact(data, np.array([[[0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 0, 0]], [[255, 255, 255]] * 4], np.uint8))
    # CMYK JPEG (lossy): white stays white
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "CMYK").save(tmp_path / "k.jpg", quality=95)
    data = load_image(tmp_path / "k.jpg")
    assert data.pixels.shape == (1, 3, 8, 8) and data.pixels.min() > 0.95


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    im.save(tmp_path / "p.png")
    data = load_image(tmp_path / "p.png")
    assert data.pixels.shape == (1, 3, 2, 3) and data.alpha is None
    exact(data, colors[idx])
    im.save(tmp_path / "t.gif", transparency=1)
    data = load_image(tmp_path / "t.gif")
    assert data.alpha is not None
    np.testing.assert_array_equal(data.alpha, np.where(idx == 1, 0, 255))
    assert data.pixels.shape == (1, 3, 2, 3)
    np.testing.assert_array_equal(to_numpy(data.pixels)[idx != 1], colors[idx][idx != 1])


def test_float_tiff(tmp_path):
    f = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    data = load_image(tmp_path / "f.tif")
    assert data.pixels.shape == (1, 1, 3, 4) and data.bit_depth == 16 and data.notes == []
    np.testing.assert_allclose(data.pixels[0, 0].numpy(), f, atol=1e-7)
    out = read_pil(save_image(data, tmp_path / "f.png"))
    assert out.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(out), np.round(f * 65535).astype(np.uint16))
    # out of range values are clamped, with a note
    Image.fromarray(f * 3 - 1, "F").save(tmp_path / "g.tif")
    data = load_image(tmp_path / "g.tif")
    assert 0 <= data.pixels.min() and data.pixels.max() <= 1 and data.pixels.max() == 1 and data.pixels.min() == 0
    assert any("clamped" in n for n in data.notes)


def test_animated_gif_first_frame_with_note(tmp_path):
    frames = [Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    data = load_image(tmp_path / "a.gif")
    assert data.pixels.shape == (1, 3, 4, 6)
    exact(data, np.broadcast_to(np.array([255, 0, 0], np.uint8), (4, 6, 3)))
    assert any("animated" in n and "first frame" in n for n in data.notes)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_first_frame_with_note(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 255, 255), (0, 0, 0))]
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], lossless=True, duration=50)
    data = load_image(tmp_path / "a.webp")
    assert data.pixels.shape[-2:] == (8, 8) and data.pixels.min() > 0.95
    assert any("animated" in n for n in data.notes)


def test_sources_path_bytes_file_pil_array(tmp_path):
    a = rand((5, 6, 3))
    p = tmp_path / "s.png"
    Image.fromarray(a).save(p)
    with open(p, "rb") as f:
        from_file = load_image(f)
    with Image.open(p) as im:
        from_pil = load_image(im)
    loaded = [load_image(str(p)), load_image(p), load_image(p.read_bytes()), from_file, from_pil, load_image(a)]
    for d in loaded:
        exact(d, a)
    assert [d.name for d in loaded] == ["s", "s", "", "s", "s", ""]


def test_save_image_atomic_and_naming(tmp_path):
    data = load_image(rand((3, 3, 3)))
    out = save_image(data, tmp_path / "sub" / "dir" / "x")
    assert out == tmp_path / "sub" / "dir" / "x.png" and out.exists()
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    out.write_bytes(b"old")
    save_image(data, out)  # replaces an existing file
    exact(load_image(out), to_numpy(data.pixels))
    with pytest.raises(ImageError, match=r"lossless PNG.*x\.png"):
        save_image(data, tmp_path / "x.jpg")


def test_save_clamps_out_of_range_pixels(tmp_path):
    data = load_image(rand((2, 2)))
    wild = data.with_pixels(torch.tensor([[[[-0.5, 0.25], [1.5, float("nan")]]]]))
    back = np.asarray(read_pil(save_image(wild, tmp_path / "w.png")))
    np.testing.assert_array_equal(back, [[0, 64], [255, 0]])


# ----------------------------------------------------------------------------- properties


@st.composite
def arrays(draw):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    c = draw(st.sampled_from([0, 1, 2, 3, 4]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    shape = (h, w) if c == 0 else (h, w, c)
    seed = draw(st.integers(0, 2**32 - 1))
    top = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, top, size=shape).astype(dtype)


@settings(max_examples=25, deadline=None)
@given(arrays())
def test_property_load_save_roundtrip_exact(arr):
    data = load_image(arr)
    back = load_image(encode_png(data))
    assert back.bit_depth == (16 if arr.dtype == np.uint16 else 8)
    c = 1 if arr.ndim == 2 else arr.shape[2]
    has_alpha = c in (2, 4)
    color = arr[..., :-1] if has_alpha else arr
    if color.ndim == 3 and color.shape[2] == 1:
        color = color[..., 0]
    assert back.pixels.shape == (1, 3 if c >= 3 else 1, *arr.shape[:2])
    exact(back, color)
    if has_alpha:
        assert back.alpha.dtype == arr.dtype
        np.testing.assert_array_equal(back.alpha, arr[..., -1])
    else:
        assert back.alpha is None


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3]), st.integers(0, 2**32 - 1))
def test_property_float_roundtrip_within_16bit_precision(h, w, c, seed):
    arr = np.random.default_rng(seed).random((h, w, c), dtype=np.float32)
    back = load_image(encode_png(load_image(arr)))
    assert back.bit_depth == 16 and back.pixels.shape == (1, c, h, w)
    np.testing.assert_allclose(back.pixels[0].permute(1, 2, 0).numpy(), arr, atol=0.5 / 65535 + 1e-7)


# ----------------------------------------------------------------------------- EXIF, compression, memory


def camera_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "ACME"  # Make
    exif[0x0132] = "2024:05:01 12:00:00"  # DateTime
    return exif


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_exif_kept_with_orientation_reset(tmp_path, bit_depth):
    """Camera and date survive load -> save; the orientation tag says 1 because the pixels are upright."""
    a = rand((20, 40, 3))
    a[:, :20] = 255
    if bit_depth == 8:
        Image.fromarray(a).save(tmp_path / "o.jpg", exif=camera_exif(6), quality=95)
        src = tmp_path / "o.jpg"
    else:
        png = png16_cv2(a.astype(np.uint16) * 257)
        exif = camera_exif(6).tobytes()
        chunk = struct.pack(">I", len(exif) - 6) + b"eXIf" + exif[6:] + struct.pack(">I", zlib.crc32(b"eXIf" + exif[6:]))
        src = tmp_path / "o.png"
        src.write_bytes(png[:33] + chunk + png[33:])
    data = load_image(src)
    assert data.bit_depth == bit_depth and data.pixels.shape[-2:] == (40, 20)  # rotated upright
    out = save_image(data.with_pixels(data.pixels * 0.5), tmp_path / "out.png")  # with_pixels keeps the EXIF
    back = read_pil(out).getexif()
    assert back[0x010F] == "ACME" and back[0x0132] == "2024:05:01 12:00:00" and back[0x0112] == 1
    again = load_image(out)  # orientation 1: not rotated a second time
    assert again.pixels.shape[-2:] == (40, 20) and again.exif is not None


def test_no_exif_stays_none(tmp_path):
    Image.fromarray(rand((5, 6, 3))).save(tmp_path / "p.png")
    data = load_image(tmp_path / "p.png")
    assert data.exif is None
    assert not read_pil(save_image(data, tmp_path / "q.png")).getexif()


@pytest.mark.parametrize("bit_depth,channels", [(8, 3), (8, 1), (16, 3)])
def test_every_compress_level_is_lossless(bit_depth, channels):
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    y, x = np.mgrid[0:64, 0:80]
    arr = np.stack([(x * 3 + y) % 256, (x * y) % 256, (y * 4) % 256], -1)[..., :channels].astype(dtype)  # compressible
    data = load_image(arr[..., 0] if channels == 1 else arr)
    sizes = {}
    for level in (0, 1, 9):
        blob = encode_png(data, compress_level=level)
        sizes[level] = len(blob)
        exact(load_image(blob), arr[..., 0] if channels == 1 else arr)
    assert sizes[0] > sizes[1] >= sizes[9]
    with pytest.raises(ImageError, match="compress_level"):
        encode_png(data, compress_level=10)


def test_blockwise_conversion_matches_the_plain_formula():
    """to_numpy works in blocks of rows: more rows than a block, odd values, NaN, out of range."""
    t = torch.rand(1, 3, 1300, 5) * 1.2 - 0.1
    t[0, 1, 700, 2] = float("nan")
    plain = (torch.nan_to_num(t[0], nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(to_numpy(t), plain)
    np.testing.assert_array_equal(to_numpy(to_tensor(plain)), plain)
    g16 = rand((1100, 3), np.uint16)
    np.testing.assert_array_equal(to_numpy(to_tensor(g16), np.uint16), g16)


def test_to_tensor_reads_read_only_arrays_without_a_warning() -> None:
    """`np.asarray(pil_image)` is read-only; a 1-channel one used to reach torch as it is and warn."""
    import warnings

    from ganlib.images import to_tensor

    for shape, dtype, top in (((5, 7), np.uint8, 255), ((5, 7, 3), np.uint16, 65535), ((5, 7, 1), np.float32, 1.0)):
        arr = (np.arange(np.prod(shape)) % 4).reshape(shape).astype(dtype) * dtype(top // 3 if dtype != np.float32 else 1 / 3)
        arr.flags.writeable = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = to_tensor(arr)
        planes = arr[..., None] if arr.ndim == 2 else arr
        assert out.shape == (1, planes.shape[2], 5, 7) and out.dtype == torch.float32
        assert torch.allclose(out[0].permute(1, 2, 0), torch.from_numpy(planes.astype(np.float64) / (1 if dtype == np.float32 else top)).float())
