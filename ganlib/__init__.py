"""ganlib: a conditional-GAN image denoiser (noise synthesis, networks, tiled inference, metrics).

Images are float32 tensors, NCHW, in [0, 1] (conversions live in `ganlib.images`).
Importing ganlib has no side effects and never touches the network.
"""

from .hub import BUNDLED, Weights, WeightsError, load_weights
from .images import ImageData, ImageError, encode_png, load_image, save_image, to_numpy, to_pil, to_tensor
from .camera import CameraParams, camera_noise_std_map, sample_camera_params, simulate_camera
from .compare import KindComparison, compare_kinds, crop_for_compare
from .impulse import impulse_mask, remove_impulses
from .inference import Restored, denoise, denoise_image, restore
from .jpeg import estimate_jpeg_quality
from .metrics import detail_ratio, psnr, ssim
from .models import Discriminator, DiscriminatorConfig, EstimatorConfig, Generator, GeneratorConfig, NoiseEstimator, count_macs_per_pixel
from .noise import KINDS, add_noise, informed_noise_map, noise_std_map
from .noise_level import estimate_noise_map, estimate_sigma

__all__ = [
    "CameraParams",
    "KindComparison",
    "Restored",
    "camera_noise_std_map",
    "compare_kinds",
    "crop_for_compare",
    "estimate_jpeg_quality",
    "estimate_noise_map",
    "impulse_mask",
    "informed_noise_map",
    "remove_impulses",
    "restore",
    "sample_camera_params",
    "simulate_camera",
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
