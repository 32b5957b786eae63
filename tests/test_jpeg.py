"""JPEG quality read from the pixels (`ganlib.jpeg`)."""

import io

import numpy as np
import pytest
import skimage
import torch
from PIL import Image

from ganlib.jpeg import estimate_jpeg_quality, ijg_table
from ganlib.images import to_tensor


def _noisy_photo(size: int = 160, seed: int = 0) -> np.ndarray:
    """A seeded (size, size, 3) uint8 photo: scikit-image's astronaut with Gaussian noise (sigma 8), kept off 0 and 255."""
    rng = np.random.default_rng(seed)
    base = skimage.data.astronaut()[60:60 + size, 160:160 + size].astype(np.float64)
    return np.clip(base + rng.normal(0, 8, base.shape), 1, 254).astype(np.uint8)


def _jpeg(pixels8: np.ndarray, quality: int) -> torch.Tensor:
    """A uint8 HxW or HxWx3 array saved as JPEG by Pillow and decoded: (1,1,H,W) or (1,3,H,W) in [0, 1]."""
    buf = io.BytesIO()
    Image.fromarray(pixels8).save(buf, format="JPEG", quality=quality)
    return to_tensor(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


def test_ijg_table_is_libjpegs() -> None:
    """Quality 50 is the standard table itself, 100 all ones, and Pillow writes the same table."""
    assert ijg_table(50)[0, 0] == 16 and ijg_table(50)[7, 7] == 99
    assert (ijg_table(100) == 1).all()
    buf = io.BytesIO()
    Image.fromarray(_noisy_photo(64)).save(buf, format="JPEG", quality=75)
    written = np.array(Image.open(io.BytesIO(buf.getvalue())).quantization[0])  # zigzag order
    assert sorted(written.tolist()) == sorted(ijg_table(75).flatten().astype(int).tolist())
    with pytest.raises(ValueError, match="1-100"):
        ijg_table(0)


@pytest.mark.parametrize("quality", [40, 60, 75, 85])
def test_reads_the_quality_a_noisy_photo_was_saved_at(quality: int) -> None:
    assert estimate_jpeg_quality(_jpeg(_noisy_photo(), quality)) == pytest.approx(quality, abs=3)


def test_uncompressed_off_grid_and_gray_images() -> None:
    """No quality for an image never compressed or cropped off the block grid; a gray JPEG is read."""
    photo = _noisy_photo()
    assert estimate_jpeg_quality(to_tensor(photo)) is None
    assert estimate_jpeg_quality(_jpeg(photo, 60)[..., 3:-2, 5:-4]) is None  # no corner on the grid
    assert estimate_jpeg_quality(_jpeg(photo, 60)[..., 8:, 16:]) == pytest.approx(60, abs=3)  # still on the grid
    gray = _jpeg(photo, 60).mean(1, keepdim=True)
    assert estimate_jpeg_quality(gray) is None  # the channel mean is not the JPEG's luma: off its steps
    buf = io.BytesIO()
    Image.fromarray(photo[..., 1]).save(buf, format="JPEG", quality=60)
    assert estimate_jpeg_quality(to_tensor(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))) == pytest.approx(60, abs=3)


def test_small_flat_and_malformed_images() -> None:
    assert estimate_jpeg_quality(torch.rand(1, 3, 7, 100)) is None  # no whole block
    assert estimate_jpeg_quality(torch.full((1, 3, 64, 64), 0.5)) is None  # flat: every AC coefficient is zero
    jpeg = _jpeg(_noisy_photo(), 60)
    assert estimate_jpeg_quality(jpeg.clone().requires_grad_()) == estimate_jpeg_quality(jpeg) == pytest.approx(60, abs=3)
    estimate_jpeg_quality(jpeg.bfloat16())  # half precision is read too (its rounding may hide the steps)
    with pytest.raises(ValueError, match=r"\(1,C,H,W\)"):
        estimate_jpeg_quality(torch.rand(3, 64, 64))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reads_a_jpeg_turned_upright_by_its_exif_orientation(tmp_path, orientation: int) -> None:
    """`load_image` turns a photo upright: with sides that are not multiples of 8 its block grid then
    starts at another corner."""
    from ganlib import load_image

    image = Image.fromarray(_noisy_photo()[:148, :156])  # 148 x 156: neither side a multiple of 8
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.jpg", quality=70, exif=exif)
    pixels = load_image(tmp_path / "photo.jpg").pixels
    assert pixels.shape[-2:] == ((148, 156) if orientation < 5 else (156, 148))
    assert estimate_jpeg_quality(pixels) == pytest.approx(70, abs=3)
