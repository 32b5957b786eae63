"""ganlib: a conditional-GAN image denoiser (noise synthesis, networks, tiled inference, metrics).

Images are float32 tensors, NCHW, in [0, 1] (conversions live in `ganlib.images`).
Importing ganlib has no side effects and never touches the network.
"""

from .hub import BUNDLED, Weights, WeightsError, load_weights
from .images import ImageData, ImageError, encode_png, load_image, save_image, to_numpy, to_pil, to_tensor
from .inference import denoise, denoise_image, estimate_sigma
from .metrics import detail_ratio, psnr, ssim
from .models import Discriminator, DiscriminatorConfig, EstimatorConfig, Generator, GeneratorConfig, NoiseEstimator, count_macs_per_pixel
from .noise import KINDS, add_noise, noise_std_map

__all__ = [
    "BUNDLED",
    "KINDS",
    "ImageData",
    "ImageError",
    "Weights",
    "WeightsError",
    "denoise_image",
    "encode_png",
    "load_image",
    "load_weights",
    "save_image",
    "Discriminator",
    "DiscriminatorConfig",
    "EstimatorConfig",
    "Generator",
    "GeneratorConfig",
    "NoiseEstimator",
    "add_noise",
    "count_macs_per_pixel",
    "denoise",
    "detail_ratio",
    "estimate_sigma",
    "noise_std_map",
    "psnr",
    "ssim",
    "to_numpy",
    "to_pil",
    "to_tensor",
]
