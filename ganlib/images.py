"""The one place where images cross between files / PIL / numpy and tensors.

Convention, used everywhere in ganlib: float32 tensors, NCHW, values in [0, 1].

What belongs here: `to_tensor` / `to_numpy` / `to_pil` (plain conversions), and faithful file I/O:
`load_image` -> `ImageData` (pixels plus what must survive a round trip: alpha, bit depth, ICC
profile, EXIF) and `save_image` / `encode_png` (lossless PNG, written atomically; `compress_level` 1 is
several times faster than the default 6 and still lossless). Any bad input raises `ImageError` with one
clear sentence.

Faithfulness rules of `load_image`: EXIF orientation is applied; grayscale stays one channel; alpha
is split off untouched (never denoised) and re-attached on save; 16-bit files stay 16-bit; the ICC
profile is kept; EXIF (camera, date, ...) is kept with its orientation reset to 1 (the pixels are upright); CMYK and palette images become RGB(A); animated images give their first frame
(with a note). 16-bit colour PNG/TIFF cannot be decoded by Pillow without losing precision, so
that one case uses OpenCV (imported lazily; without it the image is read as 8-bit, with a note).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import secrets
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL image or HxW / HxWxC array (uint8, uint16 or float in [0, 1]) -> float32 (1,C,H,W) in [0, 1].

    Converted one channel at a time into the output: no full-size float temporaries (a 24 MP photo
    costs its 288 MB result, not three times that)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    scale = {np.dtype(np.uint8): 1 / 255.0, np.dtype(np.uint16): 1 / 65535.0}.get(arr.dtype)
    if scale is None and arr.dtype.kind not in "fb":
        arr = arr.astype(np.float32)
    h, w, c = arr.shape
    out = torch.empty(1, c, h, w, dtype=torch.float32)
    for ch in range(c):  # numpy converts while it copies: no temporary, and read-only arrays (PIL's) are fine
        out[0, ch].numpy()[...] = arr[..., ch]
    if scale is not None:
        out.mul_(scale)
    return out


_ROWS = 512  # rows per block in to_numpy: bounds its float temporaries to a few MB


def to_numpy(tensor: torch.Tensor, dtype: type = np.uint8) -> np.ndarray:
    """(1,C,H,W) or (C,H,W) tensor in [0, 1] -> HxWxC (HxW for one channel) array of `dtype`, rounded.

    Integer outputs are converted in blocks of rows, so the only full-size allocation is the result."""
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of {t.shape[0]}")
        t = t[0]
    c, h, w = t.shape
    if dtype not in (np.uint8, np.uint16):
        arr = torch.nan_to_num(t.float().cpu(), nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy()
        return (arr[..., 0] if c == 1 else arr).astype(dtype)
    top = 255.0 if dtype == np.uint8 else 65535.0
    out = np.empty((h, w, c), dtype=dtype)
    for y in range(0, h, _ROWS):
        block = torch.nan_to_num(t[:, y : y + _ROWS].float().cpu(), nan=0.0).clamp_(0, 1).mul_(top).add_(0.5)
        out[y : y + _ROWS] = block.permute(1, 2, 0).numpy().astype(dtype)
    return out[..., 0] if c == 1 else out
def to_pil(tensor: torch.Tensor) -> Image.Image:
    """(1,C,H,W) tensor in [0, 1] -> 8-bit PIL image (L or RGB)."""
    return Image.fromarray(to_numpy(tensor, np.uint8))


# ----------------------------------------------------------------------------- faithful file I/O


class ImageError(ValueError):
    """A file or array that cannot be used as an image; the message is one sentence for the user."""


@dataclass
class ImageData:
    """An image plus everything a faithful round trip needs.

    pixels: float32 (1,C,H,W) in [0, 1], C = 1 (gray) or 3 (RGB); alpha: HxW array in its original
    dtype (uint8 / uint16) or None; bit_depth: 8 or 16; icc_profile: raw ICC bytes or None;
    name: file stem ('' if unknown); notes: human-readable remarks on what loading changed;
    exif: the file's EXIF block (TIFF bytes, 'Exif\\0\\0' prefix allowed) with orientation reset to 1,
    or None. `with_pixels` keeps it, `save_image` writes it (PNG eXIf chunk).
    """

    pixels: torch.Tensor
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    name: str = ""
    notes: list[str] = field(default_factory=list)
    exif: bytes | None = None

    def with_pixels(self, pixels: torch.Tensor) -> ImageData:
        """Same metadata (alpha, bit depth, ICC profile, name, notes), new pixels of the same size."""
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[:2] not in ((1, 1), (1, 3)):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"pixels must be a (1,C,H,W) tensor with C = 1 or 3, got {shape}")
        if self.alpha is not None and tuple(pixels.shape[-2:]) != self.alpha.shape:
            raise ValueError(f"pixels are {tuple(pixels.shape[-2:])} but the alpha channel is {self.alpha.shape}")
        return dataclasses.replace(self, pixels=pixels, notes=list(self.notes))

    def opacity(self) -> torch.Tensor | None:
        """The alpha channel as a float32 (1,1,H,W) opacity in [0, 1], or None without one."""
        if self.alpha is None:
            return None
        scale = 65535.0 if self.alpha.dtype == np.uint16 else 255.0
        return torch.from_numpy(self.alpha.astype(np.float32) / scale)[None, None]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f}" if n >= 100_000 else f"{n / 1e6:.6g}"


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{label} has no pixels ({width}x{height}).")
    n = width * height
    if n > max_pixels:
        raise ImageError(
            f"{label} is {_megapixels(n)} megapixels ({width}x{height}); the limit is {_megapixels(max_pixels)} megapixels."
        )


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HxW(xC) array, exactly as PIL.ImageOps.exif_transpose does."""
    swap = (1, 0) + tuple(range(2, arr.ndim))
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(swap)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _rawmode(im: Image.Image) -> str:
    tile = getattr(im, "tile", None) or []
    if not tile:
        return ""
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    first = args[0] if isinstance(args, tuple) and args else args
    return first if isinstance(first, str) else ""  # some decoders (GIF) take non-string args


def _decode_16bit_color(data: bytes, layout: str, shape: tuple[int, int]) -> np.ndarray | None:
    """16-bit RGB / RGBA / LA (`layout`) PNG or TIFF bytes -> HxWxC uint16 array (RGB order), or None."""
    try:
        import cv2  # lazy: only this rare case needs it
    except ImportError:
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.shape[:2] != shape or arr.ndim != 3:
        return None
    if arr.shape[2] == 3:
        arr = arr[..., ::-1]
    elif arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]
    else:
        return None
    if layout == "LA" and arr.shape[2] == 4:  # OpenCV expands gray+alpha to BGRA
        arr = arr[..., [0, 3]]
    elif arr.shape[2] != len(layout):
        return None
    return np.ascontiguousarray(arr)


def _to_rgb_from_cmyk(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile: fall back to the plain formula below
            log.debug("CMYK profile conversion failed, using a plain conversion", exc_info=True)
    return im.convert("RGB")


def _array_from_pil(im: Image.Image, label: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """A loaded, upright PIL image -> (HxW / HxWxC array, bit depth) with modes normalised."""
    mode = im.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette image converted to RGBA" if has_alpha else "palette image converted to RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        notes.append(f"{mode} image converted to RGB")
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im), 8
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 16
    if mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            notes.append("32-bit integer values clamped to the 16-bit range")
        return np.clip(arr, 0, 65535).astype(np.uint16), 16
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        if arr.min() < 0 or arr.max() > 1:
            notes.append("floating-point values clamped to [0, 1]")
        return np.clip(arr, 0, 1), 16
    raise ImageError(f"{label} uses the pixel mode {mode!r}, which is not supported.")


def _split(arr: np.ndarray, bit_depth: int, *, name: str, icc: bytes | None, notes: list[str], exif: bytes | None = None) -> ImageData:
    """HxW / HxWxC (C = 1..4) array -> ImageData, alpha split off untouched."""
    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        alpha = np.ascontiguousarray(arr[..., -1])
        arr = arr[..., :-1]
        if alpha.dtype not in (np.uint8, np.uint16):  # float alpha: store at the image's bit depth
            scale, dtype = (65535, np.uint16) if bit_depth == 16 else (255, np.uint8)
            alpha = (np.clip(np.nan_to_num(alpha), 0, 1) * scale + 0.5).astype(dtype)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = np.clip(np.nan_to_num(arr.astype(np.float32), nan=0.0), 0, 1)
    return ImageData(pixels=to_tensor(arr), alpha=alpha, bit_depth=bit_depth, icc_profile=icc, name=name, notes=notes, exif=exif)


def _from_array(arr: np.ndarray, label: str, name: str, max_pixels: int) -> ImageData:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise ImageError(f"{label} has shape {arr.shape}; expected HxW or HxWxC with C = 1 (gray), 2, 3 (RGB) or 4.")
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
    elif arr.dtype.kind == "f":
        depth = 16  # keep the precision of float data when it is saved
    else:
        raise ImageError(f"{label} has dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1].")
    _check_size(label, arr.shape[1], arr.shape[0], max_pixels)
    notes = []
    if arr.dtype.kind == "f" and arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or np.isnan(arr).any()):
        notes.append("floating-point values clamped to [0, 1]")
    return _split(arr, depth, name=name, icc=None, notes=notes)


def _read_source(src: str | Path | bytes | BinaryIO) -> tuple[bytes, str, str]:
    """-> (file bytes, label for messages, name stem)."""
    if isinstance(src, (str, Path)):
        path = Path(src)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{path} does not exist.") from None
        except IsADirectoryError:
            raise ImageError(f"{path} is a folder, not an image file.") from None
        except OSError as e:
            raise ImageError(f"{path} cannot be read ({e.strerror or e}).") from None
        return data, path.name, path.stem
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), "the image", ""
    if hasattr(src, "read"):
        fname = getattr(src, "name", "")
        label, stem = (Path(fname).name, Path(fname).stem) if isinstance(fname, str) and fname else ("the image", "")
        try:
            data = src.read()
        except OSError as e:
            raise ImageError(f"{label} cannot be read ({e}).") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{label} must be opened in binary mode.")
        return bytes(data), label, stem
    raise ImageError(
        f"cannot load an image from a {type(src).__name__}; give a path, bytes, a binary file, a PIL image or an array."
    )


def _describe(e: Exception | Warning) -> str:
    text = str(e).strip().rstrip(".") or type(e).__name__
    return text[:200]


def load_image(
    src: str | Path | bytes | BinaryIO | Image.Image | np.ndarray, *, max_pixels: int = MAX_PIXELS
) -> ImageData:
    """Load an image faithfully (see the module docstring); any bad input raises `ImageError`.

    The declared size is checked against `max_pixels` before anything is decoded, and the whole
    image is decoded here, so truncated or corrupt files fail now, not later.
    """
    if isinstance(src, np.ndarray):
        return _from_array(src, "the array", "", max_pixels)
    if isinstance(src, Image.Image):
        data, label = None, "the image"
        fname = getattr(src, "filename", "") or ""
        name = Path(fname).stem if isinstance(fname, str) else ""
    else:
        data, label, name = _read_source(src)
        if not data:
            raise ImageError(f"{label} is empty (0 bytes).")

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # never accept a silently truncated image
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # we check the declared size ourselves, against max_pixels, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            out = _load_pil(src if data is None else None, data, label, name, max_pixels)
        for w in caught:  # decoder warnings (e.g. damaged metadata) become notes, not stderr noise
            out.notes.append(f"warning while reading: {_describe(w.message)}")
        return out
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{label} declares an enormous size (a decompression bomb) and was not decoded.") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label} is not an image in a supported format (PNG, JPEG, TIFF, WebP, BMP, GIF, ...).") from None
    except MemoryError:
        raise ImageError(f"{label} is too large to decode in the available memory.") from None
    except Exception as e:  # every decoder error becomes one sentence, never a traceback
        raise ImageError(f"{label} is truncated or corrupt ({_describe(e)}).") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def _read_exif(im: Image.Image, notes: list[str]) -> tuple[int, bytes | None]:
    """(EXIF orientation 1-8, the EXIF block with orientation reset to 1 or None when there is none).

    The pixels are turned upright on load, so the kept EXIF must say orientation 1; an EXIF block that
    cannot be re-encoded is dropped with a note (never a failure)."""
    try:
        exif = im.getexif()
        orientation = int(exif.get(0x0112, 1) or 1)
    except Exception:
        return 1, None
    if not len(exif) and not exif.get_ifd(0x8769):
        return orientation, None
    try:
        if 0x0112 not in exif:
            return orientation, exif.tobytes()
        exif[0x0112] = 1  # the image's own Exif object: put the value back for ImageOps.exif_transpose
        try:
            return orientation, exif.tobytes()
        finally:
            exif[0x0112] = orientation
    except Exception:
        notes.append("EXIF metadata could not be re-encoded and was dropped")
        return orientation, None


def _load_pil(im: Image.Image | None, data: bytes | None, label: str, name: str, max_pixels: int) -> ImageData:
    notes: list[str] = []
    if im is None:
        im = Image.open(io.BytesIO(data))
    _check_size(label, im.width, im.height, max_pixels)
    if data is not None and im.format == "PNG":  # chunk CRCs and the end marker: catches truncation
        Image.open(io.BytesIO(data)).verify()
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        im.seek(0)
        notes.append(f"animated image: first frame used (of {frames})")
    raw = _rawmode(im)  # before getexif(): for PNG that decodes, clearing the tile
    orientation, exif = _read_exif(im, notes)
    icc = im.info.get("icc_profile") or None
    im.load()  # full decode now: raises on truncated / corrupt data
    layout = raw.split(";")[0]  # 16-bit gray+alpha PNG opens as mode RGBA, raw mode LA;16B
    if data is not None and layout in ("RGB", "RGBA", "LA") and ";16" in raw:
        arr16 = _decode_16bit_color(data, layout, (im.height, im.width))
        if arr16 is not None:
            return _split(_orient(arr16, orientation), 16, name=name, icc=icc, notes=notes, exif=exif)
        notes.append("16-bit colour read as 8-bit (install opencv-python-headless for full precision)")
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        notes.append("EXIF orientation could not be read and was ignored")
    if im.mode == "CMYK":
        im = _to_rgb_from_cmyk(im, icc)
        icc = None  # the CMYK profile does not describe the RGB result (now sRGB)
        notes.append("CMYK image converted to RGB")
    arr, depth = _array_from_pil(im, label, notes)
    return _split(arr, depth, name=name, icc=icc, notes=notes, exif=exif)


# ----------------------------------------------------------------------------- PNG writing


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _exif_payload(exif: bytes | None) -> bytes | None:
    """EXIF bytes as a PNG eXIf chunk holds them: TIFF data without the JPEG 'Exif\\0\\0' prefix."""
    if not exif:
        return None
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif


def _png(arr: np.ndarray, depth: int, icc: bytes | None, exif: bytes | None = None, compress_level: int = 6) -> bytes:
    """HxW or HxWxC (C = 2, 3, 4) uint8 (depth 8) or uint16 (depth 16) array -> PNG bytes.

    Our own writer (Pillow cannot write 16-bit colour): every row with the "Sub" filter (as small as
    Pillow's adaptive choice on photos, and faster), deflated in blocks of rows. Memory: one filtered
    copy of the pixels plus the compressed output."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = c * depth // 8
    raw = np.ascontiguousarray(arr, dtype=">u2" if depth == 16 else np.uint8).reshape(h, w * c).view(np.uint8)
    rows = np.empty((h, 1 + raw.shape[1]), np.uint8)  # filter byte + the row, big-endian for 16-bit
    rows[:, 0] = 1  # PNG filter type 1, "Sub": each byte minus the byte one pixel to the left (mod 256)
    rows[:, 1 : 1 + bpp] = raw[:, :bpp]
    np.subtract(raw[:, bpp:], raw[:, :-bpp], out=rows[:, 1 + bpp :])
    del raw
    deflate = zlib.compressobj(compress_level)
    step = max(1, (4 << 20) // rows.shape[1])  # about 4 MB of rows per call
    idat = [deflate.compress(memoryview(rows[y : y + step]).cast("B")) for y in range(0, h, step)]
    idat.append(deflate.flush())
    del rows
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))]
    if icc:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    payload = _exif_payload(exif)
    if payload:
        out.append(_png_chunk(b"eXIf", payload))
    out.append(_png_chunk(b"IDAT", b"".join(idat)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def encode_png(data: ImageData, *, compress_level: int = 6) -> bytes:
    """Lossless PNG bytes of `data`: clamped to [0, 1], bit depth, grayscale, alpha, ICC profile and EXIF kept.

    compress_level: zlib level 0-9; every level is lossless. 1 is several times faster than 6 for files
    about 10-30% larger (what the demo uses); 6 is the default."""
    if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
        raise ImageError(f"compress_level must be an integer 0-9, got {compress_level!r}.")
    pixels = data.pixels
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[:2] not in ((1, 1), (1, 3)):
        raise ImageError("the image to save must be a (1,C,H,W) tensor with 1 or 3 channels.")
    depth = 16 if data.bit_depth == 16 else 8
    dtype = np.uint16 if depth == 16 else np.uint8
    arr = to_numpy(pixels, dtype)
    if data.alpha is not None:
        alpha = np.asarray(data.alpha)
        if alpha.shape != arr.shape[:2]:
            raise ImageError(f"the alpha channel is {alpha.shape} but the image is {arr.shape[:2]}.")
        if alpha.dtype != dtype:  # a different depth than the pixels: rescale
            scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(alpha.dtype, 1.0)
            top = 65535.0 if depth == 16 else 255.0
            alpha = (np.clip(np.nan_to_num(alpha.astype(np.float64) / scale), 0, 1) * top + 0.5).astype(dtype)
        arr = np.dstack([arr, alpha])
    return _png(arr, depth, data.icc_profile, data.exif, compress_level)


def save_image(data: ImageData, path: str | Path, *, compress_level: int = 6) -> Path:
    """Write `data` as a lossless PNG at `path` (a missing '.png' suffix is added), atomically:
    a temporary file in the same folder, then os.replace. Returns the path written.
    compress_level: zlib level 0-9 (all lossless; 1 = fast, 6 = default, see `encode_png`)."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    elif path.suffix.lower() != ".png":
        raise ImageError(f"images are saved as lossless PNG; name the output '{path.stem}.png', not '{path.name}'.")
    payload = encode_png(data, compress_level=compress_level)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ImageError(f"cannot write {path} ({e.strerror or e}).") from None
    return path
