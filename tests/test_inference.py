"""Tiled inference (== one pass), noise-level estimation, channel handling and denoise_image."""

import numpy as np
import pytest
import torch

from ganlib.hub import Weights
from ganlib.images import ImageData
from ganlib.inference import denoise, denoise_image, restore
from ganlib.noise_level import ESTIMATOR_VIEWS, estimate_noise_map, estimate_sigma
from ganlib.realism import REALISM_GAN_SHARE, _fine_band, clean_fine_energy, detail_gain, frequency_separation, gaussian_blur
from ganlib.models import Generator, GeneratorConfig
from ganlib.noise import add_noise
from ganlib.views import FOUR_VIEWS, unview, view, view_mean


def tiny(seed: int = 0, channels: int = 3) -> Generator:
    torch.manual_seed(seed)
    model = Generator(GeneratorConfig(channels=channels, widths=[8, 16], blocks=[1, 1])).eval()
    with torch.no_grad():
        model.tail.weight.mul_(10)  # a clearly non-zero residual, so tiling seams would show
    return model


def smooth(h: int, w: int, channels: int = 3) -> torch.Tensor:
    """A smooth synthetic photo: gradients and low-frequency waves, in [0.1, 0.9]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    planes = [0.5 + 0.3 * torch.sin(2 * np.pi * (x * (k + 1) + y * (2 - k) / 2)) + 0.1 * (x - y) for k in range(channels)]
    return torch.stack(planes)[None].clamp(0.1, 0.9)


def noisy_image(h: int = 200, w: int = 300, sigma: float = 25.0, seed: int = 0) -> torch.Tensor:
    return add_noise(smooth(h, w), "gaussian", sigma=sigma, seed=seed)


def test_tiled_equals_untiled():
    model, x = tiny(), noisy_image()
    whole = denoise(model, x, 25.0, tile=None)
    calls = []
    tiled = denoise(model, x, 25.0, tile=160, overlap=96, progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 4  # really tiled
    assert (tiled - whole).abs().max() < 1e-4
    assert (whole - x.clamp(0, 1)).abs().mean() > 1e-3  # the model does change the image


def test_tiled_equals_untiled_with_a_noise_map():
    model, x = tiny(seed=1), noisy_image(seed=1)
    ramp = torch.linspace(5, 50, x.shape[-1]).expand(1, 1, x.shape[-2], -1).contiguous()
    whole = denoise(model, x, ramp, tile=None)
    tiled = denoise(model, x, ramp, tile=160, overlap=96)
    assert (tiled - whole).abs().max() < 1e-4
    assert not torch.allclose(whole, denoise(model, x, 25.0, tile=None))  # the map is used


def test_tiles_blend_to_the_input_for_an_identity_model():
    """With a zeroed tail the model is the identity: tile blending must then give the input back."""
    model = tiny()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    x = smooth(40, 50)
    for tile, overlap in [(16, 8), (32, 0), (24, 16)]:
        assert torch.allclose(denoise(model, x, 10.0, tile=tile, overlap=overlap), x, atol=1e-6)


def test_progress_reports_every_tile_in_order():
    calls = []
    denoise(tiny(), noisy_image(100, 150), 25.0, tile=64, overlap=16, progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    # stride 48: rows start at 0, 48 (48 + 64 >= 100), columns at 0, 48, 96
    assert total == 6
    assert calls == [(i, total) for i in range(1, total + 1)]
    one = []
    denoise(tiny(), noisy_image(40, 40), 25.0, tile=64, progress=lambda d, t: one.append((d, t)))
    assert one == [(1, 1)]


def test_estimate_sigma_on_gaussian_noise():
    clean = smooth(256, 256)
    for sigma in (10.0, 25.0):
        noisy = add_noise(clean, "gaussian", sigma=sigma, seed=3, clip=False)
        assert estimate_sigma(noisy) == pytest.approx(sigma, rel=0.15)
    assert estimate_sigma(clean) < 2.0


def test_auto_sigma_matches_the_estimate():
    model, x = tiny(), noisy_image(64, 64)
    assert torch.equal(denoise(model, x, None), denoise(model, x, estimate_sigma(x)))


def test_gray_through_colour_model_and_back():
    gray = noisy_image(40, 50).mean(dim=1, keepdim=True)
    out = denoise(tiny(), gray, 20.0)
    assert out.shape == gray.shape
    colour = noisy_image(40, 50)
    out = denoise(tiny(channels=1), colour, 20.0)
    assert out.shape == colour.shape
    assert torch.equal(out[:, 0], out[:, 1])  # a gray model gives a gray result


def test_bad_inputs_raise_value_error():
    model = tiny()
    with pytest.raises(ValueError):
        denoise(model, torch.rand(2, 3, 8, 8), 10.0)
    with pytest.raises(ValueError):
        denoise(model, torch.rand(1, 2, 8, 8), 10.0)
    with pytest.raises(ValueError):
        denoise(model, torch.rand(1, 3, 8, 8), -5.0)
    with pytest.raises(ValueError):
        denoise(model, torch.rand(1, 3, 8, 8), torch.zeros(1, 1, 4, 4))


def test_denoise_image_keeps_metadata():
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 65535, size=(30, 40), dtype=np.uint16)
    image = ImageData(pixels=noisy_image(30, 40), alpha=alpha, bit_depth=16, icc_profile=b"fake-icc", name="photo")
    weights = Weights(fidelity=tiny(), gan=tiny(seed=9), source="test")
    out = denoise_image(weights, image, sigma=25.0, tile=16, overlap=8)
    assert out.pixels.shape == image.pixels.shape
    assert np.array_equal(out.alpha, alpha) and out.alpha.dtype == np.uint16
    assert (out.bit_depth, out.icc_profile, out.name) == (16, b"fake-icc", "photo")
    assert not torch.allclose(out.pixels, image.pixels)
    assert torch.equal(out.pixels, denoise(weights.fidelity, image.pixels, 25.0, tile=16, overlap=8))
    gan = denoise_image(weights, image, sigma=25.0, realism=1.0)
    fid = denoise(weights.fidelity, image.pixels, 25.0)
    textured = frequency_separation(denoise(weights.generator(REALISM_GAN_SHARE), image.pixels, 25.0), fid)
    expected = detail_gain(textured, fid, torch.full((1, 1, 30, 40), 25.0), 1.0, noisy=image.pixels)
    assert torch.allclose(gan.pixels, expected, atol=1e-6)
    with pytest.raises(ValueError):
        denoise_image(weights, image, realism=1.5)


def test_restore_takes_a_given_map_as_known_unless_told_it_was_estimated():
    weights = Weights(fidelity=tiny(), gan=tiny(seed=9), source="test")
    noisy = noisy_image(32, 40)
    smap = torch.full((1, 1, 32, 40), 25.0)
    fid = denoise(weights.fidelity, noisy, smap)
    textured = frequency_separation(denoise(weights.generator(REALISM_GAN_SHARE), noisy, smap), fid)
    known = restore(weights, ImageData(pixels=noisy), sigma=smap, realism=1.0)
    told = restore(weights, ImageData(pixels=noisy), sigma=smap, realism=1.0, sigma_estimated=True)
    assert not known.estimated and told.estimated
    assert torch.allclose(known.image.pixels, detail_gain(textured, fid, smap, 1.0, noisy=noisy), atol=1e-6)  # matched gain
    assert torch.allclose(told.image.pixels, detail_gain(textured, fid, smap, 1.0), atol=1e-6)  # fixed gain
    assert not torch.allclose(known.image.pixels, told.image.pixels)
    assert restore(weights, ImageData(pixels=noisy), sigma=smap, stride=2, sigma_estimated=True).estimated


def test_restore_uses_the_gray_model_for_gray_photos_only():
    weights = Weights(fidelity=tiny(), gan=tiny(seed=9), source="test", gray=tiny(seed=5))
    colour = noisy_image(24, 24)
    gray_rgb = colour.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    out = restore(weights, ImageData(pixels=colour), sigma=25.0)
    assert torch.equal(out.image.pixels, denoise(weights.fidelity, colour, 25.0)) and not out.gray_model
    for pixels in (gray_rgb, gray_rgb[:, :1]):  # gray stored as RGB, and a 1-channel photo
        out = restore(weights, ImageData(pixels=pixels), sigma=25.0)
        assert torch.equal(out.image.pixels, denoise(weights.gray, pixels, 25.0)) and out.gray_model
        assert restore(weights, ImageData(pixels=pixels), stride=2).gray_model
        assert not torch.allclose(out.image.pixels, denoise(weights.fidelity, pixels, 25.0))
    textured = restore(weights, ImageData(pixels=gray_rgb), sigma=25.0, realism=0.5).image.pixels
    base = denoise(weights.gray, gray_rgb, 25.0)
    expected = frequency_separation(denoise(weights.generator(0.5 * REALISM_GAN_SHARE, gray=True), gray_rgb, 25.0), base)  # gray model + GAN change
    assert torch.equal(textured, textured[:, :1].expand_as(textured))  # still gray
    assert torch.allclose(textured, detail_gain(expected, base, torch.full((1, 1, 24, 24), 25.0), 0.5, noisy=gray_rgb), atol=1e-6)
    without = Weights(fidelity=weights.fidelity, gan=weights.gan, source="test")  # no gray/: the colour model
    out = restore(without, ImageData(pixels=gray_rgb), sigma=25.0)
    assert torch.equal(out.image.pixels, denoise(weights.fidelity, gray_rgb, 25.0)) and not out.gray_model


def test_denoise_image_realism_needs_gan_weights():
    image = ImageData(pixels=noisy_image(16, 16))
    with pytest.raises(ValueError, match="GAN"):
        denoise_image(Weights(fidelity=tiny(), gan=None, source="fid-only"), image, sigma=10.0, realism=0.5)


def test_estimate_sigma_flat_and_degenerate_images_give_zero_not_nan():
    from ganlib.noise_level import estimate_sigma

    assert estimate_sigma(torch.full((1, 3, 32, 32), 0.5)) < 1e-6
    assert estimate_sigma(torch.rand(1, 3, 1, 40, generator=torch.Generator().manual_seed(0))) == 0.0


def test_bfloat16_is_close_to_float32_and_keeps_first_and_last_layers_in_float32():
    model, x = tiny(seed=3), noisy_image(96, 120, seed=3)
    dtypes = {}

    def record(name):
        def hook(module, inputs, output) -> None:
            dtypes[name] = output.dtype
        return hook

    hooks = [getattr(model, name).register_forward_hook(record(name)) for name in ("head", "tail", "middle")]
    full = denoise(model, x, 25.0, precision="float32")
    assert dtypes == {"head": torch.float32, "tail": torch.float32, "middle": torch.float32}
    dtypes.clear()
    half = denoise(model, x, 25.0, precision="bfloat16")
    for h in hooks:
        h.remove()
    assert dtypes == {"head": torch.float32, "tail": torch.float32, "middle": torch.bfloat16}
    assert half.dtype == torch.float32 and half.shape == x.shape
    diff = (half - full).abs()
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.005  # bfloat16 really ran, and stays close


def test_precision_auto_follows_the_hardware(monkeypatch):
    from ganlib import inference

    monkeypatch.setattr(inference, "native_bfloat16", lambda device="cpu": True)
    assert inference.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(inference, "native_bfloat16", lambda device="cpu": False)
    assert inference.resolve_precision("auto") == "float32"
    assert inference.resolve_precision("bfloat16") == "bfloat16"  # explicit choices are kept
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16; got 'fp8'"):
        denoise(tiny(), noisy_image(32, 32), 25.0, precision="fp8")


def test_ensemble_averages_the_eight_flips_and_rotations():
    model, x = tiny(seed=4), noisy_image(40, 56, seed=4)  # not square: rotated views are 56 x 40
    smap = torch.linspace(10, 40, 56).expand(1, 1, 40, -1).contiguous()
    calls = []
    ens = denoise(model, x, smap, ensemble=True, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 8) for i in range(1, 9)] and ens.shape == x.shape
    # The average over the whole group of flips/rotations is equivariant; a single pass of a random net is not.
    flipped = denoise(model, x.flip(3), smap.flip(3), ensemble=True)
    assert torch.allclose(flipped.flip(3), ens, atol=1e-5)
    rotated = denoise(model, torch.rot90(x, 1, (2, 3)), torch.rot90(smap, 1, (2, 3)), ensemble=True)
    assert torch.allclose(torch.rot90(rotated, -1, (2, 3)), ens, atol=1e-5)
    single = denoise(model, x, smap)
    assert (denoise(model, x.flip(3), smap.flip(3)).flip(3) - single).abs().max() > 1e-3
    assert (ens - single).abs().max() > 1e-3


def test_a_single_pass_makes_no_image_sized_copies():
    """The network gets the image itself and its output is what comes back (clamped in place): each
    copy of a 24-megapixel photo would cost 288 MB."""
    model, x = tiny(), noisy_image(40, 56)
    seen = {}
    model.register_forward_pre_hook(lambda m, args: seen.update(inp=args[0].data_ptr()))
    model.register_forward_hook(lambda m, args, out: seen.update(out=out.data_ptr()))
    out = denoise(model, x, 25.0, tile=None)
    assert seen == {"inp": x.data_ptr(), "out": out.data_ptr()}
    assert out.min() >= 0 and out.max() <= 1


def constant_estimator(sigma: float) -> "NoiseEstimator":
    """A NoiseEstimator whose map is `sigma` (0-255 scale) everywhere."""
    from ganlib.models import EstimatorConfig, NoiseEstimator

    est = NoiseEstimator(EstimatorConfig(width=8)).eval()
    with torch.no_grad():
        est.out.weight.zero_()
        est.out.bias.fill_(float(np.log(sigma / 255 + NoiseEstimator.eps)))
    return est


def test_estimate_sigma_with_an_estimator_tiles_and_channels():
    from ganlib.models import EstimatorConfig, NoiseEstimator

    torch.manual_seed(0)
    est = NoiseEstimator(EstimatorConfig(width=8)).eval()
    x = noisy_image(100, 140)
    with torch.no_grad():
        whole = float(view_mean(est, x, ESTIMATOR_VIEWS).mean()) * 255  # the reading averaged over 4 flips/rotations
        upright = float(est(x).mean()) * 255
    assert estimate_sigma(x, est) == pytest.approx(whole, rel=1e-5)  # fits one tile
    assert abs(whole - upright) > 1e-4 * upright  # an untrained estimator depends on the orientation...
    for k, flip in ESTIMATOR_VIEWS:  # ... the estimate does not, for any of the 4 views (they form a group)
        assert estimate_sigma(view(x, k, flip), est) == pytest.approx(whole, rel=1e-5)
    calls = []
    est.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    tiled = estimate_sigma(x, est, tile=32, max_tiles=4)
    assert len(calls) == 4 * len(ESTIMATOR_VIEWS) and all(max(c) <= 32 for c in calls)  # 20 tiles, 4 evenly spread ones used
    assert tiled == pytest.approx(whole, rel=0.2)
    calls.clear()
    estimate_sigma(x, est, tile=32, max_tiles=1)
    assert len(calls) == len(ESTIMATOR_VIEWS)
    from ganlib.noise_level import GRAY_LEVEL_SCALE

    gray = x.mean(dim=1, keepdim=True)  # gray input, 1 channel or R = G = B: the estimator's gray bias taken out
    assert estimate_sigma(gray, constant_estimator(12.0)) == pytest.approx(12.0 * GRAY_LEVEL_SCALE, rel=1e-4)
    assert estimate_sigma(gray.expand(-1, 3, -1, -1), constant_estimator(12.0)) == pytest.approx(12.0 * GRAY_LEVEL_SCALE, rel=1e-4)
    assert estimate_sigma(x, constant_estimator(12.0)) == pytest.approx(12.0, rel=1e-4)  # colour: as read
    with pytest.raises(ValueError, match="tile must be >= 8 and max_tiles >= 1"):
        estimate_sigma(x, est, max_tiles=0)


def test_denoise_image_estimates_with_the_weights_estimator():
    model, x = tiny(), noisy_image(48, 64)
    weights = Weights(fidelity=model, source="mem", estimator=constant_estimator(20.0))
    image = ImageData(pixels=x, alpha=None, bit_depth=8, icc_profile=None, name="t", notes=[])
    auto = denoise_image(weights, image).pixels
    smap, summary = estimate_noise_map(x, weights.estimator)
    # a constant level gives a map of that level (the wavelet reading of this white noise may only raise it a little)
    assert float(smap.min()) == pytest.approx(20.0, rel=1e-4) and float(smap.max()) < 21.0
    assert torch.equal(auto, denoise(model, x, smap))
    assert estimate_sigma(x, weights.estimator) == pytest.approx(20.0, rel=1e-4)
    assert not torch.equal(auto, denoise_image(Weights(fidelity=model, source="mem"), image).pixels)  # wavelet estimate differs


def test_gray_stored_as_rgb_stays_gray():
    model = tiny()
    gray = noisy_image(48, 64)[:, :1]
    rgb = gray.expand(-1, 3, -1, -1).contiguous()
    out = denoise(model, rgb, 25.0)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out[:, :1], denoise(model, gray, 25.0))  # same as the 1-channel photo


def test_restore_reports_the_map_and_removes_impulses():
    model = tiny()
    with torch.no_grad():  # the identity: what changes is the switching median's doing
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    clean = smooth(64, 80)
    weights = Weights(fidelity=model, source="mem", estimator=constant_estimator(12.0))
    given = restore(weights, ImageData(pixels=add_noise(clean, "gaussian", sigma=10, seed=0)), sigma=10.0)
    assert not given.estimated and given.sigma == 10.0 and given.noise_map.shape == (1, 1, 64, 80)
    blind = restore(weights, ImageData(pixels=add_noise(clean, "gaussian", sigma=10, seed=0)))
    assert blind.estimated and blind.sigma == pytest.approx(12.0, rel=1e-3) and not blind.impulses
    noisy = add_noise(clean, "salt_pepper", amount=0.1, seed=0, quantize=True)
    res = restore(weights, ImageData(pixels=noisy), impulses=True)
    hit = noisy != (clean * 255).round() / 255
    assert res.impulses and res.impulse_fraction == pytest.approx(float(hit.float().mean()), abs=1e-3)
    assert torch.equal(res.image.pixels[~hit], noisy[~hit])  # only the impulses change
    assert (res.image.pixels - clean).abs()[hit].mean() < 0.1
    with pytest.raises(ValueError, match="sigma"):
        restore(weights, ImageData(pixels=noisy), sigma=float("nan"), impulses=False)


@pytest.mark.parametrize("texture, per_impulse, expected", [
    (8.0, 1000.0, True),  # a textured photo with few impulses: 18 -> 8 levels (0.44), the old rule's case
    (8.0, 500.0, True),  # 13 -> 8 (0.62): little is left, so a fifth taken away is enough
    (12.0, 500.0, False),  # 17 -> 12 (0.71): more than IMPULSE_LEFT_LEVEL is left (noise clipped to extremes)
    (8.0, 100.0, False),  # 9 -> 8 (0.89): the extremes hardly count in the estimate
])
def test_the_automatic_impulse_route_on_textured_photos(monkeypatch, texture: float, per_impulse: float, expected: bool):
    """The estimate before and after the switching median decides: most of it gone, or a fifth of it
    gone with at most IMPULSE_LEFT_LEVEL left (the texture of a photo with few impulses reads as noise)."""
    import ganlib.inference as inference

    def reading(x, estimator, alpha=None, jpeg=True):  # texture + a share per isolated extreme value (no noise-level function)
        level = texture + per_impulse * float(((x == 0) | (x == 1)).float().mean())
        return torch.full((1, 1, *x.shape[-2:]), level), level, None

    monkeypatch.setattr(inference, "_blind_map", reading)
    model = tiny()
    weights = Weights(fidelity=model, source="mem", estimator=constant_estimator(12.0))
    clean = smooth(64, 80) * 0.8 + 0.1  # no extremes of its own
    noisy = add_noise(clean, "salt_pepper", amount=0.01, seed=0, quantize=True)
    assert restore(weights, ImageData(pixels=noisy)).impulses == expected


def test_the_impulse_route_compares_readings_without_the_jpeg_lift(monkeypatch):
    """The switching median's replacements break a JPEG's block grid, so only the photo itself would
    read as JPEG and be lifted (`_jpeg_lift`): the before-and-after comparison reads both as they are.
    Here a lifted reading of the photo alone would look like half its noise gone."""
    import ganlib.inference as inference

    clean = smooth(64, 80) * 0.8 + 0.1
    noisy = add_noise(clean, "salt_pepper", amount=0.01, seed=0, quantize=True)
    jpeg_flags = []

    def reading(x, estimator, alpha=None, jpeg=True):  # 9 levels; lifted twofold for the photo as it came
        jpeg_flags.append(jpeg)
        level = 18.0 if jpeg and torch.equal(x, noisy) else 9.0
        return torch.full((1, 1, *x.shape[-2:]), level), level, None

    monkeypatch.setattr(inference, "_blind_map", reading)
    weights = Weights(fidelity=tiny(), source="mem", estimator=constant_estimator(12.0))
    res = restore(weights, ImageData(pixels=noisy))
    assert not res.impulses and res.sigma == 18.0  # denoised at the lifted reading
    assert jpeg_flags[:2] == [False, False]


def test_restore_leaves_a_two_level_image_alone():
    """Line art, text or a dithered scan is all 0s and 1s: not salt & pepper noise (the switching
    median would erase it) and not noisy (every block is saturated)."""
    model = tiny()
    with torch.no_grad():  # the identity: only the impulse treatment would change the image
        model.tail.weight.zero_()
        model.tail.bias.zero_()
    g = torch.Generator().manual_seed(0)
    dithered = (smooth(64, 80)[:, :1] > torch.rand(1, 1, 64, 80, generator=g)).float()
    weights = Weights(fidelity=model, source="mem", estimator=constant_estimator(12.0))
    res = restore(weights, ImageData(pixels=dithered))
    assert not res.impulses and res.sigma == 0.0
    assert torch.equal(res.image.pixels, dithered)
    forced = restore(weights, ImageData(pixels=dithered), impulses=True)  # the caller's word still goes
    assert forced.impulses and not torch.equal(forced.image.pixels, dithered)


def test_restore_ignores_transparent_pixels_in_the_estimate():
    model = tiny()
    est = constant_estimator(12.0)

    class ByBrightness(type(est)):
        def log_sigma(self, noisy):  # reads the noise level as brightness x 40 (a known function)
            return torch.log(torch.nn.functional.avg_pool2d(noisy.mean(1, keepdim=True), 4) * 40 / 255 + self.eps)

    est.__class__ = ByBrightness
    weights = Weights(fidelity=model, source="mem", estimator=est)
    photo = smooth(64, 64) * 0.5  # dark: read as a low level
    canvas = torch.full((1, 3, 128, 128), 0.9) + 0.05 * torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    canvas[..., 32:96, 32:96] = photo
    alpha = np.zeros((128, 128), np.uint8)
    alpha[32:96, 32:96] = 255
    alone = restore(weights, ImageData(pixels=photo), impulses=False).sigma
    cutout = restore(weights, ImageData(pixels=canvas, alpha=alpha), impulses=False).sigma
    opaque = restore(weights, ImageData(pixels=canvas), impulses=False).sigma
    assert abs(cutout - alone) < 0.1 * alone < abs(opaque - alone)


@pytest.mark.parametrize("h,w", [(64, 80), (67, 93)])
def test_pixel_shuffle_stride_denoises_each_sub_image_then_refines(h, w):
    """Zhou et al. 2020: the sub-images denoised on their own and interleaved (PD), then each sub-image put
    back noisy in turn and the whole denoised at half the map, the four results averaged (PD refinement);
    the four passes of each step run in four flips/rotations (FOUR_VIEWS), a self-ensemble at no cost."""
    model = tiny()
    weights = Weights(fidelity=model, source="mem", estimator=None)  # the wavelet estimate, per sub-image
    noisy = add_noise(smooth(h, w), "gaussian", sigma=15, seed=1)
    padded = torch.nn.functional.pad(noisy, (0, w % 2, 0, h % 2), mode="replicate")

    def viewed(x: torch.Tensor, level: float | torch.Tensor, n: int) -> torch.Tensor:
        k, flip = FOUR_VIEWS[n]
        m = torch.as_tensor(level, dtype=torch.float32).expand(1, 1, *x.shape[-2:])
        return unview(denoise(model, view(x, k, flip), view(m, k, flip)), k, flip)

    subs = [(0, 0), (0, 1), (1, 0), (1, 1)]

    def reference(sigma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        pd, smap = torch.empty_like(padded), torch.empty(1, 1, *padded.shape[-2:])
        for n, (i, j) in enumerate(subs):
            sub = padded[..., i::2, j::2]
            level = estimate_sigma(sub) if sigma is None else sigma
            pd[..., i::2, j::2], smap[..., i::2, j::2] = viewed(sub, level, n), level
        refined = []
        for n, (i, j) in enumerate(subs):
            refill = pd.clone()
            refill[..., i::2, j::2] = padded[..., i::2, j::2]
            refined.append(viewed(refill, smap / 2, n))
        return torch.stack(refined).mean(0)[..., :h, :w], smap[..., :h, :w]

    res = restore(weights, ImageData(pixels=noisy), stride=2, impulses=False)
    assert res.image.pixels.shape == noisy.shape and res.noise_map.shape == (1, 1, h, w) and res.estimated
    expected, smap = reference(None)
    assert torch.allclose(res.image.pixels, expected, atol=1e-5) and torch.allclose(res.noise_map, smap)
    assert len(set(smap.flatten().tolist())) == 4  # each sub-image has its own estimate
    # a given strength is used as it is, at every sub-image
    given = restore(weights, ImageData(pixels=noisy), sigma=20.0, stride=2, impulses=False)
    assert not given.estimated and given.sigma == pytest.approx(20.0) and torch.all(given.noise_map == 20.0)
    assert torch.allclose(given.image.pixels, reference(20.0)[0], atol=1e-5)
    # stride 1 is the plain path
    assert torch.equal(restore(weights, ImageData(pixels=noisy), sigma=20.0, stride=1).image.pixels, denoise(model, noisy, 20.0))
    for bad in (0, 5, 1.5, True):
        with pytest.raises(ValueError, match="stride"):
            restore(weights, ImageData(pixels=noisy), stride=bad)


def test_frequency_separation_takes_texture_from_one_and_tone_from_the_other():
    g = torch.Generator().manual_seed(0)
    base = smooth(48, 56)
    checker = ((torch.arange(48)[:, None] + torch.arange(56)[None, :]) % 2 * 2 - 1.0) * 0.05  # finest texture
    textured = (base + 6 / 255 + checker).clamp(0, 1)  # + a brightness shift of 6 levels
    out = frequency_separation(textured, base, gate=None)
    assert out.shape == base.shape and 0 <= out.min() and out.max() <= 1
    assert abs(float((out - base).mean()) * 255) < 0.1  # the shift is gone ...
    kept = out - base
    assert float((kept * checker).mean() / (checker * checker).mean()) > 0.95  # ... the texture stays
    noise = torch.rand(1, 3, 40, 40, generator=g)
    assert torch.allclose(frequency_separation(noise, noise), noise)  # the same image: unchanged
    with pytest.raises(ValueError, match="same shape"):
        frequency_separation(base, base[..., :40, :])


def test_detail_gain_gives_back_the_clean_fine_energy_where_there_was_noise():
    g = torch.Generator().manual_seed(0)
    clean = smooth(96, 128)
    clean[..., 20:28, :] += 0.2  # a bar across, and fine texture everywhere: the detail a denoiser shrinks
    clean = (clean + 0.03 * torch.randn(1, 3, 96, 128, generator=g)).clamp(0, 1)
    noise = torch.zeros_like(clean)
    noise[..., 48:] = 25 / 255 * torch.randn(1, 3, 96, 80, generator=g)  # noise on the right part only
    noisy = clean + noise
    levels = torch.zeros(1, 1, 96, 128)
    levels[..., 48:] = 25.0
    shrunk = clean.clone()  # a denoised result: less fine detail where there was noise
    shrunk[..., 48:] = 0.8 * clean[..., 48:] + 0.2 * gaussian_blur(clean, 1.5)[..., 48:]
    band = lambda x: float(_fine_band(x[..., 48:]).pow(2).mean())
    estimate = clean_fine_energy(noisy[..., 48:], shrunk[..., 48:], levels[..., 48:])
    assert abs(estimate / band(clean) - 1) < 0.15  # the noise's energy taken off, measured from the residual
    assert clean_fine_energy(noise[..., 48:], torch.zeros_like(noise[..., 48:]), levels[..., 48:]) < 0.05 * band(clean)  # noise alone: nothing
    out = detail_gain(shrunk, shrunk, levels, 1.0, noisy=noisy)
    assert out.shape == clean.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out[..., :48], shrunk[..., :48])  # no noise, no gain
    assert band(shrunk) < 0.8 * band(clean) and abs(band(out) / band(clean) - 1) < 0.1  # the clean energy back
    assert torch.nn.functional.mse_loss(out, clean) < torch.nn.functional.mse_loss(shrunk, clean)  # and it is the clean's detail
    assert abs(float((out - shrunk).mean()) * 255) < 0.2  # tone kept
    half = detail_gain(shrunk, shrunk, levels, 0.5, noisy=noisy)
    inside = (out > 0) & (out < 1)  # not clamped
    assert torch.allclose((half - shrunk)[inside], 0.5 * (out - shrunk)[inside], atol=1e-6)  # realism scales the gain
    kept = detail_gain(clean, clean, levels, 1.0, noisy=noisy)  # as much detail as the clean already: (almost) left alone
    assert float((kept - clean).abs().mean()) < 0.2 * float((out - shrunk).abs().mean())
    with pytest.raises(ValueError, match="realism"):
        detail_gain(shrunk, shrunk, levels, 1.5, noisy=noisy)
    with pytest.raises(ValueError, match="same pixels"):
        clean_fine_energy(noisy, shrunk[..., :40], levels)
    fine = lambda x: x - gaussian_blur(x, 1.0)
    inside = lambda x: (x > 0) & (x < 1)
    fixed = detail_gain(shrunk, shrunk, levels, 0.8)  # an estimated map: the fixed gain
    assert torch.allclose((fixed - shrunk)[inside(fixed)], (0.8 * 0.25 * fine(shrunk) * (levels / 25))[inside(fixed)], atol=1e-6)
    flat = gaussian_blur(shrunk, 3.0)  # almost no fine detail left to raise: the matched gain stops at its cap
    capped = detail_gain(flat, flat, levels, 1.0, noisy=noisy)
    assert torch.allclose((capped - flat)[inside(capped)], (0.5 * fine(flat) * (levels / 25))[inside(capped)], atol=1e-6)


def test_texture_gate_keeps_the_gan_texture_on_detail_and_off_flat_areas():
    from ganlib.realism import texture_gate

    g = torch.Generator().manual_seed(0)
    base = torch.full((1, 3, 48, 96), 0.5)
    base[..., 48:] += 0.1 * torch.rand(1, 3, 48, 48, generator=g)  # right half: detail; left half: flat
    grain = ((torch.arange(48)[:, None] + torch.arange(96)[None, :]) % 2 * 2 - 1.0) * 0.03
    out = frequency_separation((base + grain).clamp(0, 1), base)
    kept = (out - base)[..., 4:-4, :]
    left, right = kept[..., 4:36].abs().mean(), kept[..., 60:-4].abs().mean()
    assert float(left) < 1e-4 and float(right) > 0.8 * 0.03 * 0.9  # no grain on flat, (nearly) all on detail
    w = texture_gate(base)
    assert w.shape == (1, 1, 48, 96) and 0 <= float(w.min()) and float(w.max()) <= 1
    assert float(texture_gate(base, tau=1000.0).max()) < 0.1  # a high tau: barely any texture
    with pytest.raises(ValueError, match="tau"):
        texture_gate(base, tau=0)


def test_realism_progress_counts_both_passes_once():
    weights = Weights(fidelity=tiny(), gan=tiny(seed=9), source="test")
    calls = []
    restore(weights, ImageData(pixels=noisy_image(64, 64)), sigma=20.0, realism=0.5, tile=32, overlap=8, impulses=False,
            progress=lambda d, t: calls.append((d, t)))
    assert len({t for _, t in calls}) == 1 and [d for d, _ in calls] == list(range(1, calls[0][1] + 1))


def test_keep_brightness_takes_back_unexplained_shifts_only() -> None:
    from ganlib.inference import BRIGHTNESS_SLACK, keep_brightness

    gen = torch.Generator().manual_seed(0)
    clean = smooth(64, 80)
    moved = (clean + 5 / 255).clamp(0, 1)  # a denoiser that brightened a clean image by 5 levels
    kept = keep_brightness(clean, moved.clone(), 100.0)
    shift = (kept.mean((2, 3)) - clean.mean((2, 3))) * 255
    assert torch.allclose(shift, torch.full_like(shift, BRIGHTNESS_SLACK), atol=0.01)
    # A strength within OVERSTATED times the image's own noise (noise that JPEG partly hid): left alone.
    grainy = (clean + 10 / 255 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    assert torch.equal(keep_brightness(grainy, moved.clone(), 30.0), moved)
    # Dark photo + clipped Gaussian 50: the noisy mean is raised by clipping (by more than 10 levels),
    # and the clean result's lower mean is explained by it, so it is left alone.
    dark = torch.full((1, 3, 64, 80), 10 / 255)
    noisy = (dark + 50 / 255 * torch.randn(dark.shape, generator=gen)).clamp(0, 1)
    assert float(noisy.mean() - dark.mean()) * 255 > 10
    assert torch.equal(keep_brightness(noisy, dark.clone(), 50.0), dark)
    # ... but not when the strength claimed is far above the image's own noise: a clean saturated area.
    sky = torch.ones(1, 3, 64, 80)
    sky[..., 32:, :] = 0.5
    darker = (sky - 4 / 255).clamp(0, 1)
    shift = (keep_brightness(sky, darker.clone(), 100.0).mean((2, 3)) - sky.mean((2, 3))) * 255
    assert float(shift.abs().max()) <= BRIGHTNESS_SLACK + 0.05
    # Clipping at 0 explains a darker result, not a brighter one: the brightened dark photo is taken back.
    brighter = (noisy + 6 / 255).clamp(0, 1)
    shift = (keep_brightness(noisy, brighter.clone(), 255.0).mean((2, 3)) - noisy.mean((2, 3))) * 255
    assert float(shift.max()) <= BRIGHTNESS_SLACK + 0.05
    # Half the photo black: clamping at 0 gives back part of each correction, so it is repeated.
    half = clean.clone()
    half[..., :, :40] = 0
    lifted = torch.where(half > 0, half + 5 / 255, half).clamp(0, 1)  # +2.5 levels on average
    shift = (keep_brightness(half, lifted.clone(), 100.0).mean((2, 3)) - half.mean((2, 3))) * 255
    assert float(shift.max()) <= BRIGHTNESS_SLACK + 0.25  # one pass: 0.75 + 1.75 / 2 = 1.63


def test_keep_brightness_holds_one_level_on_clean_photos_with_black_areas() -> None:
    from ganlib.inference import BRIGHTNESS_LIMIT, keep_brightness

    # A clean JPEG-like photo: fine grain, and a black third whose values flicker between 0 and 1 level,
    # so many zeros sit beside unclipped values, as noise-clipped ones do. Clipping "explains" a darker
    # result of more than a level there, but a clean photo must keep its brightness within 1 level.
    gen = torch.Generator().manual_seed(1)
    photo = (smooth(96, 96) + 3 / 255 * torch.randn(1, 3, 96, 96, generator=gen)).clamp(0, 1)
    photo[..., :, :32] = (torch.rand(1, 3, 96, 32, generator=gen) < 0.5).float() / 255
    darker = (photo - 4 / 255).clamp(0, 1)
    shift = (keep_brightness(photo, darker.clone(), 100.0).mean((2, 3)) - photo.mean((2, 3))) * 255
    assert BRIGHTNESS_LIMIT < 1.0 and float(shift.abs().max()) <= BRIGHTNESS_LIMIT + 0.01


def test_restore_keeps_brightness_after_the_realism_passes(monkeypatch) -> None:
    import ganlib.inference as inference

    # Realism's texture and detail gain come after the passes' own brightness checks: a gain that
    # brightened the result by 3 levels at a strength far above a clean photo's noise is taken back.
    monkeypatch.setattr(inference, "detail_gain", lambda result, *a, **k: (result + 3 / 255).clamp(0, 1))
    weights = Weights(fidelity=tiny(), gan=tiny(seed=9), source="test")
    photo = smooth(64, 64)
    out = restore(weights, ImageData(pixels=photo), sigma=100.0, realism=1.0, impulses=False).image.pixels
    assert float(((out.mean((2, 3)) - photo.mean((2, 3))) * 255).abs().max()) <= inference.BRIGHTNESS_LIMIT + 0.01


def test_gray_scale_leaves_signal_dependent_noise_alone(monkeypatch) -> None:
    """The gray-level scale corrects the estimator's reading of channel-identical Gaussian noise; a
    signal-dependent curve (speckle noise on a gray ramp) is used as read."""
    from ganlib import noise_level
    from ganlib.noise import add_noise
    from ganlib.noise_level import estimate_noise_map

    ramp = torch.linspace(0.05, 0.95, 192).view(1, 1, 1, 192).expand(1, 1, 192, 192).contiguous()
    est = constant_estimator(20.0)
    speckle = add_noise(ramp, "speckle", sigma=0.3, seed=0)
    gaussian = add_noise(ramp, "gaussian", sigma=20, seed=0)
    maps = {}
    for scale in (0.9, 0.5):
        monkeypatch.setattr(noise_level, "GRAY_LEVEL_SCALE", scale)
        maps[scale] = [estimate_noise_map(x, est)[0] for x in (speckle, gaussian)]
    assert torch.allclose(maps[0.9][0], maps[0.5][0])  # speckle: the scale is not applied
    assert float(maps[0.5][0][..., :, 150:].mean()) > 1.5 * float(maps[0.5][0][..., :, :40].mean())  # rising with brightness
    assert float(maps[0.5][1].mean()) == pytest.approx(float(maps[0.9][1].mean()) * 0.5 / 0.9, rel=0.02)  # Gaussian: scaled
