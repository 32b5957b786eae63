"""The networks: a noise-level-conditioned residual U-Net generator, a conditional PatchGAN
discriminator and a small noise-level estimator, each configured by a dataclass.

Image convention (see `ganlib.images`): float32 NCHW tensors in [0, 1]. Noise levels given to the
generator are standard deviations on the same [0, 1] scale (sigma_255 / 255), as a map of shape
(N, 1, H, W) so that a spatially varying strength works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


@dataclass
class GeneratorConfig:
    """Shape of the generator. The defaults are the first shipped shape (about 60k multiply-adds per
    pixel); the shipped weights have blocks [4, 4, 8] (about 116k; [4, 2, 8] in sessions 18-20), grown
    from it by `train/grow.py`. A weights folder's config.json gives its shape."""

    channels: int = 3  # 3 for colour, 1 for grayscale
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # feature width per U-Net level
    blocks: list[int] = field(default_factory=lambda: [2, 2, 4])  # residual blocks per level (last = bottleneck)
    unshuffle: int = 2  # pixel-unshuffle factor: the U-Net runs on unshuffle**2 sub-images

    def __post_init__(self) -> None:
        self.widths, self.blocks = list(self.widths), list(self.blocks)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError("widths and blocks must be non-empty lists of the same length")
        if min(self.widths) < 1 or min(self.blocks) < 0 or self.unshuffle < 1:
            raise ValueError("widths must be >= 1, blocks >= 0 and unshuffle >= 1")


@dataclass
class DiscriminatorConfig:
    """Shape of the conditional discriminator: a PatchGAN (pix2pix) or a U-Net (Real-ESRGAN)."""

    channels: int = 3
    width: int = 64
    layers: int = 3  # stride-2 layers; the receptive field grows with them (3 -> 70 x 70 patches)
    kind: str = "patch"  # patch | unet (per-pixel scores with global context, Wang et al. 2021)
    spectral_norm: bool = True
    # > 0: the discriminator sees (noisy, gain * (noisy - candidate)), the "method noise" (Buades et al.
    # 2005) amplified, instead of (noisy, candidate). Clean and denoised photos differ by a few levels of
    # texture: with spectral norm capping every layer's gain, the plain pair gave logits equal to 1e-3
    # and a discriminator at chance after 1,500 steps; the amplified residual is told apart in ~100.
    residual_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("patch", "unet"):
            raise ValueError(f"discriminator kind must be 'patch' or 'unet', got {self.kind!r}")


@dataclass
class EstimatorConfig:
    """Shape of the noise-level estimator (about 6.5k multiply-adds per pixel with the defaults).

    local_layers: 3x3 conv layers on 4x4 blocks; context_layers: layers at half that resolution
    (each widens the view: camera noise blotches need more context than white noise)."""

    channels: int = 3
    width: int = 48
    local_layers: int = 3
    context_layers: int = 2


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # Reflection needs the pad to be smaller than the side; tiny images fall back to replication.
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def sigma_map(sigma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a noise level (scalar, per-image (N,), or map (N,1,H,W)) to a (N,1,H,W) map like `like`."""
    n, _, h, w = like.shape
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.dim() == 0:
        return s.expand(n, 1, h, w)
    if s.dim() == 1:
        return s.view(-1, 1, 1, 1).expand(n, 1, h, w)
    if s.dim() == 4 and s.shape[1] == 1 and s.shape[-2:] == (h, w):
        return s.expand(n, 1, h, w)
    raise ValueError(f"noise level must be a scalar, shape (N,) or (N,1,{h},{w}); got {tuple(s.shape)}")


class Generator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="ganlib",
    pipeline_tag="image-to-image",
    tags=["image-denoising", "gan", "ganlib"],
    license="mit",
):
    """Residual U-Net on pixel-unshuffled sub-images, conditioned on a noise-level map.

    forward(noisy, sigma) -> denoised, same shape; any H x W (padded internally, then cropped).
    """

    def __init__(self, config: GeneratorConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = GeneratorConfig()
        elif isinstance(config, dict):
            config = GeneratorConfig(**config)
        self.config = config
        self._hub_mixin_config = asdict(config)  # always saved as config.json, whatever was passed
        c, r, widths = config.channels, config.unshuffle, config.widths
        self.head = nn.Conv2d(c * r * r + 1, widths[0], 3, padding=1)
        self.encoders = nn.ModuleList(nn.Sequential(*[ResBlock(w) for w in [wd] * b]) for wd, b in zip(widths[:-1], config.blocks[:-1]))
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.middle = nn.Sequential(*[ResBlock(widths[-1]) for _ in range(config.blocks[-1])])
        self.ups = nn.ModuleList(nn.Sequential(nn.Conv2d(b, a * 4, 1), nn.PixelShuffle(2)) for a, b in zip(widths[:-1], widths[1:]))
        self.decoders = nn.ModuleList(nn.Sequential(*[ResBlock(w) for w in [wd] * b]) for wd, b in zip(widths[:-1], config.blocks[:-1]))
        self.tail = nn.Conv2d(widths[0], c * r * r, 3, padding=1)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return self.config.unshuffle * 2 ** (len(self.config.widths) - 1)

    def forward(self, noisy: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if noisy.dim() != 4 or noisy.shape[1] != self.config.channels:
            raise ValueError(f"expected (N,{self.config.channels},H,W) input, got {tuple(noisy.shape)}")
        smap = sigma_map(sigma, noisy)
        x, h, w = _pad_to_multiple(noisy, self.multiple)
        smap, _, _ = _pad_to_multiple(smap, self.multiple)
        r = self.config.unshuffle
        # The first and last convolutions stay float32 under autocast: bfloat16's 8-bit mantissa would
        # round the noisy pixels and the predicted residual (measured: -0.025 dB vs -0.01 dB when kept).
        with torch.autocast(x.device.type, enabled=False):
            feat = self.head(torch.cat([F.pixel_unshuffle(x, r), F.avg_pool2d(smap, r)], dim=1).float())
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            feat = enc(F.relu(feat))
            skips.append(feat)
            feat = down(feat)
        feat = self.middle(F.relu(feat))
        for up, dec, skip in zip(reversed(self.ups), reversed(self.decoders), reversed(skips)):
            feat = dec(up(feat) + skip)
        with torch.autocast(x.device.type, enabled=False):
            residual = F.pixel_shuffle(self.tail(F.relu(feat).float()), r)
        return (x + residual)[..., :h, :w]

    def _save_pretrained(self, save_directory: Path) -> None:
        """model.safetensors from contiguous copies, so a model prepared for inference (channels_last
        weights, see `ganlib.hub`) saves like any other."""
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(save_directory) / "model.safetensors"), metadata={"format": "pt"})


class NoiseEstimator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="ganlib",
    tags=["image-denoising", "noise-estimation", "ganlib"],
    license="mit",
):
    """Predicts the noise-level map the generator is conditioned on, from the noisy image alone.

    forward(noisy) -> (N,1,H,W) standard deviations on the [0, 1] scale; any H x W. It works on
    4 x 4 pixel blocks (a local branch, and a branch at half that resolution for context), so it
    sees noise that JPEG or demosaicing made spatially correlated, which a wavelet estimate misses.
    """

    eps = 1 / 255  # the network predicts log(sigma + eps)
    multiple = 8

    def __init__(self, config: EstimatorConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = EstimatorConfig()
        elif isinstance(config, dict):
            config = EstimatorConfig(**config)
        self.config = config
        self._hub_mixin_config = asdict(config)
        c, w = config.channels, config.width

        def conv(a: int, b: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())

        if config.local_layers < 1 or config.context_layers < 1:
            raise ValueError(f"the estimator needs at least one local and one context layer, got {config}")
        self.local = nn.Sequential(conv(c * 16, w), *[conv(w, w) for _ in range(config.local_layers - 1)])
        self.context = nn.Sequential(*[conv(w, w) for _ in range(config.context_layers)])
        self.out = nn.Conv2d(2 * w, 1, 3, padding=1)

    def log_sigma(self, noisy: torch.Tensor) -> torch.Tensor:
        """log(sigma + eps) at 1/4 resolution, for inputs whose sides are multiples of 8."""
        h = self.local(F.pixel_unshuffle(noisy - 0.5, 4))
        g = F.interpolate(self.context(F.avg_pool2d(h, 2)), size=h.shape[-2:], mode="nearest")
        return self.out(torch.cat([h, g], dim=1))

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        if noisy.dim() != 4 or noisy.shape[1] != self.config.channels:
            raise ValueError(f"expected (N,{self.config.channels},H,W) input, got {tuple(noisy.shape)}")
        x, h, w = _pad_to_multiple(noisy, self.multiple)
        with torch.autocast(x.device.type, enabled=False):
            s = (self.log_sigma(x.float()).exp() - self.eps).clamp_min(0)
        return F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]


def _sn_conv(cin: int, cout: int, stride: int, sn: bool = True) -> nn.Module:
    conv = nn.Conv2d(cin, cout, 4, stride=stride, padding=1)
    return nn.utils.parametrizations.spectral_norm(conv) if sn else conv


class Discriminator(nn.Module):
    """Conditional discriminator with spectral norm: scores (noisy, candidate) pairs.

    kind 'patch': PatchGAN (Isola et al. 2017), one logit per receptive-field patch.
    kind 'unet': U-Net discriminator of Real-ESRGAN (Wang et al. 2021, `UNetDiscriminatorSN`): an
    encoder of `layers` stride-2 levels and a decoder with skips, one logit per pixel, so that it
    judges fine texture with the whole crop as context. forward -> logits; `features` -> the
    intermediate activations too (for the feature-matching loss)."""

    def __init__(self, config: DiscriminatorConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = DiscriminatorConfig()
        elif isinstance(config, dict):
            config = DiscriminatorConfig(**config)
        self.config = config
        w = config.width
        if config.kind == "unet":
            sn = nn.utils.parametrizations.spectral_norm if config.spectral_norm else (lambda m: m)
            widths = [w * 2**i for i in range(config.layers + 1)]
            self.stem = nn.Conv2d(2 * config.channels, w, 3, padding=1)
            self.downs = nn.ModuleList(sn(nn.Conv2d(a, b, 4, 2, 1, bias=False)) for a, b in zip(widths[:-1], widths[1:]))
            self.ups = nn.ModuleList(sn(nn.Conv2d(b, a, 3, 1, 1, bias=False)) for a, b in zip(widths[:-1], widths[1:]))
            self.head = nn.Sequential(sn(nn.Conv2d(w, w, 3, 1, 1, bias=False)), nn.LeakyReLU(0.2), nn.Conv2d(w, 1, 3, 1, 1))
            return
        sn = config.spectral_norm
        layers: list[nn.Module] = [_sn_conv(2 * config.channels, w, 2, sn), nn.LeakyReLU(0.2)]
        for i in range(1, config.layers):
            cin, cout = w * 2 ** (i - 1), w * 2 ** i
            layers += [_sn_conv(cin, cout, 2, sn), nn.LeakyReLU(0.2)]
        cin = w * 2 ** (config.layers - 1)
        layers += [_sn_conv(cin, cin * 2, 1, sn), nn.LeakyReLU(0.2), _sn_conv(cin * 2, 1, 1, sn)]
        self.net = nn.Sequential(*layers)

    def features(self, noisy: torch.Tensor, candidate: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, intermediate activations) for a (noisy, candidate) pair batch."""
        if self.config.residual_gain:
            candidate = self.config.residual_gain * (noisy - candidate)
        x = torch.cat([noisy, candidate], dim=1)
        feats: list[torch.Tensor] = []
        if self.config.kind == "patch":
            for layer in self.net:
                x = layer(x)
                if isinstance(layer, nn.LeakyReLU):
                    feats.append(x)
            return x, feats
        h, w = x.shape[-2:]
        x, _, _ = _pad_to_multiple(x, 2 ** len(self.downs))
        x = F.leaky_relu(self.stem(x), 0.2)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = F.leaky_relu(down(x), 0.2)
            feats.append(x)
        for up, skip in zip(reversed(self.ups), reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = F.leaky_relu(up(x), 0.2) + skip
            feats.append(x)
        return self.head(x)[..., :h, :w], feats

    def forward(self, noisy: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        if self.config.kind == "unet" or self.config.residual_gain:
            return self.features(noisy, candidate)[0]
        return self.net(torch.cat([noisy, candidate], dim=1))


def count_macs_per_pixel(model: nn.Module, size: int = 128, channels: int = 3) -> float:
    """Multiply-adds per input pixel of one forward pass, counted over convolutions."""
    total = 0

    def hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        total += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            x = torch.zeros(1, channels, size, size)
            if isinstance(model, Generator):
                model(x, 0.1)
            elif isinstance(model, NoiseEstimator):
                model(x)
            else:
                model(x, x)
    finally:
        for h in handles:
            h.remove()
    return total / (size * size)
