"""Realistic camera noise: unprocess an sRGB photo to a raw Bayer mosaic, add sensor noise, process it back.

Follows Brooks et al. 2019, "Unprocessing Images for Learned Raw Denoising" (CVPR), with the
demosaicing and JPEG steps of Guo et al. 2019 (CBDNet) and Zhang et al. 2021 (BSRGAN):

1. inverse tone curve (smoothstep), inverse gamma (2.2): linear light;
2. inverse colour correction (a random convex mix of four cameras' XYZ->camera matrices) and
   inverse white balance (random red/blue gains and an overall brightness gain);
3. Bayer mosaic in one of the four colour filter array (CFA) phases (RGGB, GRBG, GBRG, BGGR: which
   corner of each 2x2 block holds red), drawn per image, as cameras differ and a photo turned upright
   by its orientation shows its sensor's mosaic rotated;
4. heteroscedastic Poisson-Gaussian sensor noise, variance = shot * x + read, with the shot level
   drawn log-uniformly in [1e-4, 1.2e-2] (about ISO 100 to 12800 on a phone-sized sensor) and the
   read level drawn on the line Brooks et al. fitted to real sensors, log(read) = 2.18 log(shot) + 1.2
   + N(0, 0.26): shot and read are drawn jointly, as real sensors have them;
5. demosaicing with OpenCV's edge-aware demosaicer (spatially correlated noise);
6. white balance, colour correction (correlated noise across channels), gamma and tone curve;
7. in-camera noise reduction and sharpening, modelled on what they do to the noise: the noise (the
   difference to the noise-free rendering) is Gaussian-blurred in luma and, more strongly, in chroma
   (an ideal edge-aware filter, which leaves the signal alone), then unsharp-masked. This is what
   turns the noise of camera JPEGs into the blotches of a few pixels seen in real high-ISO photos
   (the spatially correlated, low-frequency noise that Zhou et al. 2020, "When AWGN-based denoiser
   meets real noises", break up by pixel-shuffle downsampling);
8. 8-bit quantisation and, with some probability, JPEG at a random quality (60-95).

All of it is pure and seeded: `sample_camera_params(generator)` draws one camera, `simulate_camera`
applies it with an explicit generator. Images are float32 (C,H,W) or (1,C,H,W), 3 channels, in [0, 1].

Noise-level map: the noise after this pipeline is no longer a closed-form function of the signal,
so its map is defined as what it measures: the per-pixel root-mean-square of (noisy - clean) over
independent draws of the same camera, against its noise-free rendering, averaged over channels and smoothed (`camera_noise_std_map`).
That map is what the generator is conditioned on and what the noise-level estimator learns to predict.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# XYZ -> camera matrices of four cameras (Brooks et al. 2019, from dcraw / Adobe DNG).
_XYZ2CAMS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
])
_RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])


@dataclass
class CameraParams:
    """One simulated camera and exposure.

    shot, read: the sensor noise variance is shot * x + read for linear raw values x in [0, 1].
    rgb2cam: 3x3 colour matrix (rows sum to 1); red_gain, blue_gain, rgb_gain: white-balance and
    brightness gains; quality: JPEG quality 1-100, or None for a lossless (PNG) camera output;
    nr_luma, nr_chroma: std in pixels of the in-camera noise reduction's Gaussian blur of the noise's
    luma and chroma (0 = none); sharpen: the in-camera unsharp-mask amount (0 = none, radius 1 px);
    pattern: the Bayer mosaic's colour filter array phase, the colours of the top-left 2x2 block read
    row by row (one of `CFA_PATTERNS`).
    """

    shot: float
    read: float
    rgb2cam: list[list[float]]
    red_gain: float
    blue_gain: float
    rgb_gain: float
    quality: int | None = None
    nr_luma: float = 0.0
    nr_chroma: float = 0.0
    sharpen: float = 0.0
    pattern: str = "RGGB"

    def to_dict(self) -> dict:
        return asdict(self)


# Where the red site of each colour filter array phase lies in its 2x2 block (row, column).
CFA_PATTERNS = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def sample_camera_params(generator: torch.Generator, *, jpeg_prob: float = 0.5,
                         shot_range: tuple[float, float] = (1e-4, 1.2e-2), nr_prob: float = 0.0) -> CameraParams:
    """Draw a camera (colour matrix, gains), an ISO (shot and read noise jointly) and a JPEG quality;
    with probability `nr_prob` also in-camera noise reduction (luma blur std 0-2 px, chroma 0.5-3.5 px)
    and sharpening (amount 0-0.6). The Bayer phase (`CameraParams.pattern`) is drawn uniformly."""
    g = generator
    w = torch.rand(4, generator=g).double().numpy() + 1e-8
    xyz2cam = np.tensordot(w / w.sum(), _XYZ2CAMS, axes=1)
    rgb2cam = xyz2cam @ _RGB2XYZ
    rgb2cam = rgb2cam / rgb2cam.sum(axis=-1, keepdims=True)
    log_shot = _u(g, np.log(shot_range[0]), np.log(shot_range[1]))
    log_read = 2.18 * log_shot + 1.20 + 0.26 * float(torch.randn((), generator=g))
    rgb_gain = 1.0 / (0.8 + 0.1 * float(torch.randn((), generator=g)))
    red, blue = _u(g, 1.9, 2.4), _u(g, 1.5, 1.9)
    quality = int(round(_u(g, 60, 95))) if float(torch.rand((), generator=g)) < jpeg_prob else None
    params = CameraParams(float(np.exp(log_shot)), float(np.exp(log_read)), rgb2cam.tolist(), red, blue, max(rgb_gain, 0.5), quality)
    if nr_prob > 0 and float(torch.rand((), generator=g)) < nr_prob:  # drawn last: the fields above keep their draws
        params.nr_luma, params.nr_chroma, params.sharpen = _u(g, 0.0, 2.0), _u(g, 0.5, 3.5), _u(g, 0.0, 0.6)
    params.pattern = list(CFA_PATTERNS)[int(torch.randint(len(CFA_PATTERNS), (), generator=g))]
    return params


def _check_pattern(pattern: str) -> tuple[int, int]:
    if pattern not in CFA_PATTERNS:
        raise ValueError(f"unknown Bayer pattern {pattern!r}: expected one of {', '.join(CFA_PATTERNS)}")
    return CFA_PATTERNS[pattern]


def _check(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"camera noise needs a float (C,H,W) or (1,C,H,W) RGB image, got {shape}")
    if image.dim() == 4 and image.shape[0] != 1:
        raise ValueError(f"camera noise takes one image at a time, got a batch of {image.shape[0]}")
    return image.reshape(3, *image.shape[-2:]).float().clamp(0, 1)


def _unprocess(rgb: np.ndarray, p: CameraParams) -> np.ndarray:
    """HxWx3 sRGB in [0, 1] -> HxW linear raw RGGB mosaic in [0, 1]."""
    x = np.clip(rgb, 0, 1)
    x = 0.5 - np.sin(np.arcsin(np.clip(1 - 2 * x, -1, 1)) / 3)  # inverse smoothstep tone curve
    x = np.maximum(x, 1e-8) ** 2.2  # inverse gamma
    x = x @ np.asarray(p.rgb2cam).T  # inverse colour correction
    gains = np.array([p.red_gain, 1.0, p.blue_gain]) * p.rgb_gain
    gray = x.mean(axis=-1, keepdims=True)  # inverse white balance, keeping saturated highlights (Brooks et al.)
    inv = 1.0 / gains
    mask = (np.maximum(gray - 0.9, 0) / 0.1) ** 2
    x = x * np.maximum(inv, mask * (1 - inv) + inv)
    x = np.clip(x, 0, 1)
    h, w = x.shape[:2]
    raw = np.empty((h, w), dtype=np.float64)
    raw[0::2, 0::2] = x[0::2, 0::2, 0]
    raw[0::2, 1::2] = x[0::2, 1::2, 1]
    raw[1::2, 0::2] = x[1::2, 0::2, 1]
    raw[1::2, 1::2] = x[1::2, 1::2, 2]
    return raw


def _process(raw: np.ndarray, p: CameraParams) -> np.ndarray:
    """HxW noisy RGGB mosaic -> HxWx3 sRGB in [0, 1] (demosaic, white balance, colour, gamma, tone)."""
    import cv2

    u16 = (np.clip(raw, 0, 1) * 65535 + 0.5).astype(np.uint16)
    # OpenCV names Bayer patterns by the 2x2 block at (1,1): an RGGB mosaic is its "BG" pattern.
    x = cv2.cvtColor(u16, cv2.COLOR_BayerBG2RGB_EA).astype(np.float64) / 65535
    x = x * (np.array([p.red_gain, 1.0, p.blue_gain]) * p.rgb_gain)
    x = np.clip(x, 0, 1) @ np.linalg.inv(np.asarray(p.rgb2cam)).T
    x = np.clip(x, 1e-8, 1) ** (1 / 2.2)
    return np.clip(3 * x**2 - 2 * x**3, 0, 1)


def _jpeg(rgb8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb8).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _framed(image: torch.Tensor, pattern: str) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The HxWx3 float64 image padded (edge pixels repeated) so that an RGGB mosaic of the padded
    image is a `pattern` mosaic of the image itself, and to even sides; and the slices that cut the
    image back out."""
    dy, dx = _check_pattern(pattern)
    x = image.permute(1, 2, 0).double().numpy()
    h, w = x.shape[:2]
    pad = ((dy, (dy + h) % 2), (dx, (dx + w) % 2), (0, 0))
    return np.pad(x, pad, mode="edge"), (slice(dy, dy + h), slice(dx, dx + w))


_RGB2YCC = np.array([[0.299, 0.587, 0.114], [-0.299, -0.587, 0.886], [0.701, -0.587, -0.114]])  # Y, B-Y, R-Y


def _in_camera(noise: np.ndarray, p: CameraParams) -> np.ndarray:
    """HxWx3 sRGB noise -> the same after in-camera noise reduction (luma/chroma blur) and sharpening."""
    import cv2

    if p.nr_luma <= 0 and p.nr_chroma <= 0 and p.sharpen <= 0:
        return noise
    ycc = noise @ _RGB2YCC.T
    for c, std in ((0, p.nr_luma), (1, p.nr_chroma), (2, p.nr_chroma)):
        if std > 0:
            ycc[..., c] = cv2.GaussianBlur(np.ascontiguousarray(ycc[..., c]), (0, 0), std, borderType=cv2.BORDER_REFLECT)
    out = ycc @ np.linalg.inv(_RGB2YCC).T
    if p.sharpen > 0:
        out = (1 + p.sharpen) * out - p.sharpen * cv2.GaussianBlur(out, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    return out


def _render(raw_clean: np.ndarray, ref: np.ndarray, p: CameraParams, g: torch.Generator, cut: tuple[slice, slice]) -> np.ndarray:
    """One noisy 8-bit HxWx3 shot of `raw_clean` (padded mosaic, `cut` out); `ref` is its noise-free rendering."""
    noise = torch.randn(raw_clean.shape, generator=g, dtype=torch.float64).numpy()
    raw = raw_clean + noise * np.sqrt(np.maximum(raw_clean * p.shot + p.read, 0))
    noisy = _process(raw, p)[cut]
    noisy = ref + _in_camera(noisy - ref, p)
    out = (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8)
    if p.quality is not None:
        out = _jpeg(out, p.quality)
    return out


def simulate_camera(image: torch.Tensor, params: CameraParams, *, seed: int | None = None,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, reference): the photo as the camera `params` takes it, with and without sensor noise.

    image: float32 (3,H,W) or (1,3,H,W) in [0, 1]. Both outputs have its shape, values in [0, 1].
    `reference` is the same camera's noise-free rendering (demosaiced, no JPEG), what the mean of many
    shots of a static scene is (the ground truth of real-noise sets such as CC15): the target a denoiser
    is trained towards. `noisy` is 8-bit (and JPEG-compressed when params.quality is set).
    Raises ValueError for non-RGB input, an unknown Bayer pattern or a missing seed/generator.
    """
    if generator is None:
        if seed is None:
            raise ValueError("give an explicit seed or generator: noise never uses global randomness")
        generator = torch.Generator().manual_seed(int(seed))
    x = _check(image)
    rgb, cut = _framed(x, params.pattern)
    raw_clean = _unprocess(rgb, params)
    ref = _process(raw_clean, params)[cut]
    out = _render(raw_clean, ref, params, generator, cut)
    ref = ref.astype(np.float32)

    def back(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).reshape(image.shape).contiguous()

    return back(out.astype(np.float32) / 255), back(ref)


def camera_noise_std_map(image: torch.Tensor, params: CameraParams, *, seed: int = 0, draws: int = 4,
                         smooth: float = 1.5) -> torch.Tensor:
    """The noise-level map of `simulate_camera` for this image and camera: (1,H,W) (or (1,1,H,W) for a
    batched input), standard deviations on the [0, 1] scale.

    Per pixel, the root-mean-square of (noisy - reference) over `draws` independent draws (seeded by
    `seed`, independent of the draw the caller denoises), averaged over channels, then Gaussian-smoothed
    with std `smooth` pixels. Includes what JPEG does to the signal.
    """
    x = _check(image)
    rgb, cut = _framed(x, params.pattern)
    raw_clean = _unprocess(rgb, params)
    ref = _process(raw_clean, params)[cut]
    g = torch.Generator().manual_seed(int(seed) + 7919)
    sq = np.zeros(ref.shape[:2])
    for _ in range(draws):
        out = _render(raw_clean, ref, params, g, cut).astype(np.float64) / 255
        sq += ((out - ref) ** 2).mean(axis=-1)
    smap = torch.from_numpy(np.sqrt(sq / draws)).float()[None, None]
    if smooth > 0:
        r = max(1, int(3 * smooth))
        k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * smooth**2))
        k = k / k.sum()
        smap = F.conv2d(F.pad(smap, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        smap = F.conv2d(F.pad(smap, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return smap[0] if image.dim() == 3 else smap
