"""Impulse removal (switching median), the camera pipeline, informed maps and the blind noise-level map."""

import dataclasses

import numpy as np
import pytest
import torch

from ganlib.camera import CFA_PATTERNS, camera_noise_std_map, sample_camera_params, simulate_camera
from ganlib.impulse import impulse_mask, remove_impulses
from ganlib.noise_level import estimate_noise_map
from ganlib.metrics import psnr
from ganlib.models import EstimatorConfig, NoiseEstimator
from ganlib.noise import add_noise, informed_noise_map, noise_std_map
from tests.test_jpeg import _jpeg


def textured(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """Smooth waves plus fine texture, in [0.1, 0.9]: no value near the extremes."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.5 + 0.25 * torch.sin(2 * np.pi * (x * (k + 1) + y)) for k in range(3)])[None]
    return (base + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0.1, 0.9)


@pytest.mark.parametrize("whole_pixel", [False, True])
@pytest.mark.parametrize("amount", [0.01, 0.2, 0.5])
def test_switching_median_finds_every_impulse_and_keeps_the_rest(amount: float, whole_pixel: bool) -> None:
    clean = textured()
    noisy = add_noise(clean, "salt_pepper", seed=1, amount=amount, whole_pixel=whole_pixel, quantize=True)
    hit = (noisy != (clean * 255).round() / 255)
    mask = impulse_mask(noisy)
    assert not (mask & ~hit).any()  # the texture never reaches 0 or 1: no false alarm
    recall = float((mask & hit).sum() / hit.sum())
    assert recall == 1.0 if amount <= 0.2 else recall > 0.995  # at half the pixels, rare clusters look saturated
    out = remove_impulses(noisy)
    assert torch.equal(out[~mask], noisy[~mask])  # undamaged pixels are kept exactly
    assert psnr(out, clean) > psnr(noisy, clean) + 15
    if whole_pixel:
        assert torch.equal(hit[:, 0], hit[:, 1]) and torch.equal(hit[:, 1], hit[:, 2])


def test_saturated_areas_are_not_impulses() -> None:
    clean = textured()
    clean[..., 20:60, 30:90] = 1.0  # a white sky
    clean[..., 70:, :40] = 0.0  # a black background
    assert not impulse_mask(clean).any()
    assert torch.equal(remove_impulses(clean), clean)


def test_whole_pixel_parameter_is_checked() -> None:
    with pytest.raises(ValueError, match="whole_pixel"):
        add_noise(textured(), "salt_pepper", seed=0, whole_pixel="yes")


def test_informed_map_is_the_std_map_on_the_255_scale() -> None:
    clean = textured()
    m = informed_noise_map(clean, "poisson", peak=20)
    assert m.shape == (1, 1, 96, 128)
    assert torch.allclose(m, noise_std_map(clean, "poisson", peak=20) * 255)
    noisy = add_noise(clean, "poisson", seed=0, peak=20)
    measured = float((noisy - clean).std()) * 255
    assert abs(measured - float(m.pow(2).mean().sqrt())) < 0.1 * measured


def test_camera_pipeline_is_seeded_and_its_map_measures_the_noise() -> None:
    clean = textured(64, 80)
    params = sample_camera_params(torch.Generator().manual_seed(3), jpeg_prob=0.0)
    a, ref = simulate_camera(clean, params, seed=5)
    b, ref2 = simulate_camera(clean, params, seed=5)
    assert torch.equal(a, b) and torch.equal(ref, ref2)
    assert not torch.equal(a, simulate_camera(clean, params, seed=6)[0])
    assert a.shape == ref.shape == clean.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, (a * 255).round() / 255)  # 8-bit output
    assert psnr(ref, clean) > 25  # the noise-free rendering keeps the photo
    smap = camera_noise_std_map(clean, params, seed=0, draws=8)
    measured = float((a - ref).pow(2).mean().sqrt())
    assert smap.shape == (1, 1, 64, 80)
    assert abs(float(smap.pow(2).mean().sqrt()) - measured) < 0.15 * measured
    # noise correlated across channels by the colour matrix, unlike independent noise
    d = (a - ref)[0].reshape(3, -1)
    assert abs(float(torch.corrcoef(d)[0, 1])) > 0.05
    with pytest.raises(ValueError, match="seed"):
        simulate_camera(clean, params)
    with pytest.raises(ValueError, match="RGB"):
        simulate_camera(clean[:, :1], params, seed=0)


def test_in_camera_noise_reduction_makes_blotchy_noise_and_keeps_the_reference() -> None:
    clean = textured(96, 96)
    plain = sample_camera_params(torch.Generator().manual_seed(4), jpeg_prob=0.0)
    assert (plain.nr_luma, plain.nr_chroma, plain.sharpen) == (0.0, 0.0, 0.0)
    drawn = sample_camera_params(torch.Generator().manual_seed(4), jpeg_prob=0.0, nr_prob=1.0)
    assert (drawn.shot, drawn.read, drawn.quality) == (plain.shot, plain.read, plain.quality)  # drawn after the rest
    assert 0 <= drawn.nr_luma <= 2 and 0.5 <= drawn.nr_chroma <= 3.5 and 0 <= drawn.sharpen <= 0.6
    plain.shot, plain.read = 4e-3, 1e-5  # a visible noise level on a mid-gray photo
    nr = dataclasses.replace(plain, nr_luma=1.5, nr_chroma=3.0)
    a, ref = simulate_camera(clean, plain, seed=1)
    b, ref_nr = simulate_camera(clean, nr, seed=1)
    assert torch.equal(ref, ref_nr)  # the filter acts on the noise, not on the noise-free rendering

    def coarse_share(n: torch.Tensor) -> float:  # how much of the noise survives 4x4 averaging (white: 1/4)
        return float(torch.nn.functional.avg_pool2d(n, 4).std() / n.std())

    assert coarse_share(a - ref) < 0.6 < 0.8 < coarse_share(b - ref)  # demosaicing alone correlates a little
    assert float((b - ref).std()) < float((a - ref).std())  # blurring lowers the per-pixel level ...
    smap_nr = camera_noise_std_map(clean, nr, seed=0, draws=8)  # ... and the map measures it
    measured = float((b - ref).pow(2).mean().sqrt())
    assert abs(float(smap_nr.pow(2).mean().sqrt()) - measured) < 0.15 * measured
    with pytest.raises(ValueError, match="seed"):
        simulate_camera(clean, nr)


def test_the_bayer_pattern_is_the_mosaic_phase_and_is_drawn_per_camera() -> None:
    """A GRBG/GBRG/BGGR mosaic of a photo is the RGGB mosaic of the photo shifted by the red site's offset:
    away from the borders the noise-free renderings agree exactly, and the phases differ from each other."""
    clean = textured(40, 46)
    params = sample_camera_params(torch.Generator().manual_seed(1), jpeg_prob=0.0)
    rggb = dataclasses.replace(params, pattern="RGGB")
    renders = {}
    for pattern, (dy, dx) in CFA_PATTERNS.items():
        renders[pattern] = simulate_camera(clean, dataclasses.replace(params, pattern=pattern), seed=0)[1]
        shifted = simulate_camera(clean[..., dy:, dx:], rggb, seed=0)[1]
        assert renders[pattern].shape == clean.shape
        assert torch.equal(renders[pattern][..., dy:, dx:][..., 4:-4, 4:-4], shifted[..., 4:-4, 4:-4])
    assert all(float((renders[a] - renders[b]).abs().max()) > 0.05 for a in CFA_PATTERNS for b in CFA_PATTERNS if a < b)
    g = torch.Generator().manual_seed(0)
    drawn = {sample_camera_params(g).pattern for _ in range(40)}
    assert drawn == set(CFA_PATTERNS)
    with pytest.raises(ValueError, match="Bayer pattern 'RGB'"):
        simulate_camera(clean, dataclasses.replace(params, pattern="RGB"), seed=0)


def test_shot_and_read_noise_are_drawn_jointly() -> None:
    g = torch.Generator().manual_seed(0)
    cams = [sample_camera_params(g) for _ in range(200)]
    shot, read = np.log([c.shot for c in cams]), np.log([c.read for c in cams])
    assert np.corrcoef(shot, read)[0, 1] > 0.9  # log read = 2.18 log shot + 1.2 + N(0, 0.26)
    assert 1e-4 <= min(c.shot for c in cams) and max(c.shot for c in cams) <= 1.2e-2


class _Const(NoiseEstimator):
    """An estimator that reads the noise level as the local brightness x 40/255 (a known function)."""

    def __init__(self) -> None:
        super().__init__(EstimatorConfig(width=4))

    def log_sigma(self, noisy: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.nn.functional.avg_pool2d(noisy.mean(1, keepdim=True), 4) * 40 / 255 + self.eps)


def test_blind_map_ignores_flat_saturated_and_transparent_areas() -> None:
    est = _Const().eval()
    photo = textured(64, 64)
    _, alone = estimate_noise_map(photo, est)
    framed = torch.ones(1, 3, 184, 184)  # a pure white border
    framed[..., 60:124, 60:124] = photo
    _, with_border = estimate_noise_map(framed, est)
    assert abs(with_border - alone) < 0.1 * alone
    grey = torch.full((1, 3, 184, 184), 0.3)  # a flat gray surround behind a transparent alpha
    grey[..., 60:124, 60:124] = photo
    alpha = torch.zeros(1, 1, 184, 184)
    alpha[..., 60:124, 60:124] = 1
    assert abs(estimate_noise_map(grey + 0.05 * torch.rand(1, 3, 184, 184), est, alpha=alpha)[1] - alone) < 0.15 * alone
    flat_map, flat = estimate_noise_map(torch.full((1, 3, 40, 3000), 0.5), est)
    assert flat == 0 and flat_map.abs().max() == 0  # flat images are noise-free
    tiny_map, tiny = estimate_noise_map(torch.rand(1, 3, 1, 1), est)
    assert tiny == 0 and tiny_map.shape == (1, 1, 1, 1)


class _Wide(NoiseEstimator):
    """An estimator that reads each 4x4 block's noise from its own and its neighbours' pixels (`view` x
    `view` blocks), as the trained one's view reaches beyond its block."""

    def __init__(self, view: int = 9) -> None:
        super().__init__(EstimatorConfig(width=4))
        self.view = view

    def log_sigma(self, noisy: torch.Tensor) -> torch.Tensor:
        blocks = torch.nn.functional.pixel_unshuffle(noisy, 4)  # (1, C * 16, H / 4, W / 4)
        block_std = blocks.view(1, noisy.shape[1], 16, *blocks.shape[-2:]).std(2).mean(1, keepdim=True)
        return torch.log(torch.nn.functional.avg_pool2d(block_std, self.view, stride=1, padding=self.view // 2, count_include_pad=False) + self.eps)


def test_blind_map_leaves_out_blocks_beside_borders_and_transparent_areas() -> None:
    est = _Wide().eval()
    g = torch.Generator().manual_seed(3)
    photo = (0.5 + 0.1 * torch.randn(1, 3, 96, 96, generator=g)).clamp(0, 1)
    _, alone = estimate_noise_map(photo, est)
    framed = torch.ones(1, 3, 336, 336)  # a noise-free white border: read low beside it
    framed[..., 120:216, 120:216] = photo
    assert abs(estimate_noise_map(framed, est)[1] - alone) < 0.03 * alone
    cutout = torch.rand(1, 3, 336, 336, generator=g)  # random colours behind a transparent alpha: read high beside it
    cutout[..., 120:216, 120:216] = photo
    alpha = torch.zeros(1, 1, 336, 336)
    alpha[..., 120:216, 120:216] = 1
    assert abs(estimate_noise_map(cutout, est, alpha=alpha)[1] - alone) < 0.03 * alone
    # a cut-out too small to keep NLF_MIN_BLOCKS blocks clear of its surround is still read, from all its blocks
    small = alpha.clone().zero_()
    small[..., 120:144, 120:144] = 1
    assert estimate_noise_map(cutout, est, alpha=small)[1] > 0.5 * alone


def test_blind_map_leaves_out_blocks_whose_noise_clipping_hides() -> None:
    est = _Wide(view=1).eval()  # each block read from its own pixels
    g = torch.Generator().manual_seed(4)
    smooth_ramp = torch.linspace(0.3, 0.7, 96).expand(1, 3, 96, 96).contiguous()
    noisy = (smooth_ramp + 0.08 * torch.randn(1, 3, 96, 96, generator=g)).clamp(0, 1)
    _, alone = estimate_noise_map(noisy, est)
    # the same noise added after framing on white: the border keeps about half its values at 1, and its
    # clipped noise (the part below 1 only) reads low
    framed = torch.ones(1, 3, 224, 224)
    framed[..., 64:160, 64:160] = smooth_ramp
    framed = (framed + 0.08 * torch.randn(framed.shape, generator=g)).clamp(0, 1)
    assert abs(estimate_noise_map(framed, est)[1] - alone) < 0.05 * alone


def test_blind_map_follows_brightness() -> None:
    est = _Const().eval()
    x = torch.linspace(0.05, 0.95, 256).expand(1, 3, 128, 256).contiguous()
    x = x + 0.02 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    smap, sigma = estimate_noise_map(x, est)
    assert smap.shape == (1, 1, 128, 256)
    left, right = float(smap[..., 10:20].mean()), float(smap[..., -20:-10].mean())
    assert right > 1.5 * left  # the noise-level function rises with brightness as the estimator says
    assert right == pytest.approx(0.9 * 40, rel=0.1)  # where the estimator reads high, its reading is kept
    assert float(smap.mean()) >= sigma - 0.1  # the wavelet reading only raises the curve


class _Visible(NoiseEstimator):
    """An estimator that reads the standard deviation it sees in each 4x4 block (as clipping leaves it)."""

    def __init__(self) -> None:
        super().__init__(EstimatorConfig(width=4))

    def log_sigma(self, noisy: torch.Tensor) -> torch.Tensor:
        mean = torch.nn.functional.avg_pool2d(noisy, 4)
        var = torch.nn.functional.avg_pool2d(noisy * noisy, 4) - mean * mean
        return torch.log(var.clamp_min(0).mean(1, keepdim=True).sqrt() * 4 / 15**0.5 + self.eps)  # unbiased over 16


def test_blind_map_reads_the_shape_of_signal_dependent_noise() -> None:
    """The estimator reads one level everywhere; the wavelet detail shows noise rising with brightness
    from no floor (speckle), so that shape is used alone, at the estimator's mean level."""
    from tests.test_inference import constant_estimator

    ramp = torch.linspace(0.1, 0.9, 256).expand(1, 3, 128, 256)
    noisy = ramp + ramp * 0.1 * torch.randn(ramp.shape, generator=torch.Generator().manual_seed(0))  # speckle
    smap, sigma = estimate_noise_map(noisy, constant_estimator(10.0))
    left, right = float(smap[..., 10:20].mean()), float(smap[..., -20:-10].mean())
    assert sigma == pytest.approx(10.0, rel=1e-3)
    assert right == pytest.approx(10.0 * 0.853 / 0.5, rel=0.1)  # proportional to brightness, mean level 10
    assert left == pytest.approx(10.0 * 0.147 / 0.5, rel=0.15)  # the estimator's flat reading does not hold it up
    gaussian = ramp + 0.1 * torch.randn(ramp.shape, generator=torch.Generator().manual_seed(0))
    gmap, _ = estimate_noise_map(gaussian, constant_estimator(10.0))  # no rise with brightness: the level holds
    assert float(gmap.min()) == pytest.approx(10.0, rel=0.05) and float(gmap.max()) == pytest.approx(10.0, rel=0.05)
    flat = 0.5 + 0.05 * torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(1))
    fmap, _ = estimate_noise_map(flat, constant_estimator(10.0))
    assert float(fmap.min()) == pytest.approx(10.0, rel=0.05) and float(fmap.max()) == pytest.approx(10.0, rel=0.05)


def test_blind_map_reads_camera_noise_falling_with_brightness() -> None:
    """Camera noise (Poisson-Gaussian in linear light, then the sRGB curve) is strongest in the shadows;
    the plain Poisson-Gaussian model cannot fall with brightness, the camera model can."""
    from ganlib.noise import add_noise, informed_noise_map
    from tests.test_inference import constant_estimator

    ramp = torch.linspace(0.1, 0.9, 256).expand(1, 3, 128, 256).contiguous()
    noisy = add_noise(ramp, "camera", peak=30, sigma=4, seed=0)
    smap, sigma = estimate_noise_map(noisy, constant_estimator(10.0))
    left, right = float(smap[..., 10:20].mean()), float(smap[..., -20:-10].mean())
    true = informed_noise_map(ramp, "camera", peak=30, sigma=4)
    assert float(true[..., 10:20].mean()) > 1.5 * float(true[..., -20:-10].mean())  # the truth falls ...
    assert left > 1.5 * right  # ... and so does the map
    assert right == pytest.approx(10.0, rel=0.05)  # where the shape reads lower, the estimator's level holds


def test_blind_map_keeps_the_level_where_clipping_hides_the_noise() -> None:
    """Gaussian noise added before clipping: the dark half shows less of it, but its level is the same."""
    clean = torch.full((1, 3, 128, 256), 0.5)
    clean[..., :128] = 0.02
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    est = _Visible().eval()
    seen = float(est(noisy)[..., 8:-8, 8:120].mean() / est(noisy)[..., 8:-8, 136:-8].mean())
    assert seen < 0.7  # what the estimator sees in the dark half
    smap, _ = estimate_noise_map(noisy, est)
    dark, bright = float(smap[..., 8:-8, 8:120].mean()), float(smap[..., 8:-8, 136:-8].mean())
    assert bright == pytest.approx(25.5, rel=0.1)
    assert dark > 0.9 * bright


def test_spread_tiles_and_the_extremes_precheck(monkeypatch) -> None:
    import ganlib.impulse as impulse
    from ganlib.impulse import REFINE_SIGMA, REFINE_SIGMA_WHOLE, may_have_impulses, refine_sigma, spread_tiles

    assert spread_tiles(100, 100, 64, 8) == [(0, 0), (0, 64), (64, 0), (64, 64)]  # all fit
    many = spread_tiles(1000, 1000, 100, 5)
    assert len(many) == 5 and many[0] == (0, 0) and many[-1] == (900, 900)
    assert spread_tiles(1000, 1000, 100, 1) == [(500, 0)]  # the middle one
    clean = textured()
    noisy = add_noise(clean, "salt_pepper", seed=0, amount=0.01, quantize=True)
    assert not may_have_impulses(clean) and may_have_impulses(noisy) and may_have_impulses(noisy, rows=7)
    assert not may_have_impulses(noisy, min_fraction=0.02)
    two_level = (clean > 0.5).float()  # line art: every value 0 or 1, nothing isolated about them
    assert not may_have_impulses(two_level) and not may_have_impulses(two_level, rows=7)
    assert may_have_impulses(torch.cat([torch.full_like(two_level[..., :2, :], 0.5), two_level], -2))  # 2 rows of 98 gray: 2%
    assert refine_sigma(0.0) == REFINE_SIGMA == 5.0 and refine_sigma(1.0) == REFINE_SIGMA_WHOLE == 5.0
    monkeypatch.setattr(impulse, "REFINE_SIGMA_WHOLE", 9.0)  # the two strengths differ for other weights
    assert refine_sigma(0.5) == pytest.approx(7.0) and refine_sigma(1.0) == 9.0
    monkeypatch.undo()
    with pytest.raises(ValueError, match="whole_share"):
        refine_sigma(1.5)
    assert float(informed_noise_map(clean, "salt_pepper", amount=0.05).mean()) == pytest.approx(REFINE_SIGMA)
    assert float(informed_noise_map(clean, "salt_pepper", amount=0.05, whole_pixel=True).mean()) == pytest.approx(REFINE_SIGMA_WHOLE)
    assert float(informed_noise_map(clean[:, :1], "salt_pepper", amount=0.05).mean()) == pytest.approx(REFINE_SIGMA_WHOLE)


def test_whole_pixel_share_tells_whole_pixel_impulses_from_per_channel_ones() -> None:
    from ganlib.impulse import impulse_mask, whole_pixel_share

    clean = textured()
    per_channel = impulse_mask(add_noise(clean, "salt_pepper", seed=0, amount=0.05, quantize=True))
    whole = impulse_mask(add_noise(clean, "salt_pepper", seed=0, amount=0.05, whole_pixel=True, quantize=True))
    assert whole_pixel_share(per_channel) < 0.05 and whole_pixel_share(whole) > 0.95
    assert whole_pixel_share(torch.zeros_like(whole)) == 0.0


def test_the_noise_level_fits_are_non_negative_least_squares() -> None:
    """_weighted_fit is exact NNLS (checked against SciPy's), and the signal-dependent fit recovers a
    multiplicative (speckle) and a Poisson-Gaussian curve from their bin readings."""
    from scipy.optimize import nnls

    from ganlib.noise_level import NLF_BINS, _signal_dependent_fit, _signal_share, _weighted_fit

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        cols = torch.rand(12, 3, generator=g, dtype=torch.float64)
        v = torch.randn(12, generator=g, dtype=torch.float64)
        w = torch.rand(12, generator=g, dtype=torch.float64) + 0.1
        coef, res = _weighted_fit(cols, v, w)
        ref, _ = nnls((cols * w.sqrt()[:, None]).numpy(), (v * w.sqrt()).numpy())
        assert np.allclose(coef.numpy(), ref, atol=1e-8)
        assert res == pytest.approx(float((w * (cols @ coef - v) ** 2).sum()))
    x = (torch.arange(NLF_BINS, dtype=torch.float64) + 0.5) / NLF_BINS
    count = torch.full((NLF_BINS,), 100.0)
    speckle = (0.1 * x).float()  # level proportional to brightness
    assert _signal_share(speckle, count) == pytest.approx(1.0)  # the linear fit's intercept is negative: no floor
    assert torch.allclose(_signal_dependent_fit(speckle, count), speckle, rtol=1e-4)
    poisson = (0.03**2 + 0.01 * x).sqrt().float()  # a read-noise floor, then shot noise
    assert _signal_share(poisson, count) == pytest.approx(0.005 / (0.03**2 + 0.005), rel=1e-3)
    assert torch.allclose(_signal_dependent_fit(poisson, count), poisson, rtol=1e-4)
    flat = torch.full((NLF_BINS,), 0.05)
    assert _signal_share(flat, count) < 0.05
    sparse = count.clone()
    sparse[2:] = 0  # readings in two neighbouring bins only: no slope to speak of
    assert _signal_share(speckle, sparse) == 0.0


def test_camera_noise_takes_a_second_pass_at_the_first_results_brightness(monkeypatch) -> None:
    """Where the noise-level function falls with brightness (camera noise), `refine_noise_map` reads it
    per pixel at a denoised guide's brightness: sharp at an edge, where the blind map's 12-pixel
    brightness blurs it; flat or rising curves (Gaussian noise) get None, and restore() takes the second
    pass exactly when the refined map exists."""
    from ganlib.hub import Weights
    from ganlib.inference import restore
    from ganlib.noise_level import estimate_noise_map, refine_noise_map
    from ganlib.images import ImageData
    from ganlib.noise import add_noise
    from tests.test_inference import constant_estimator, tiny

    clean = torch.linspace(0.1, 0.9, 256).expand(1, 3, 128, 256).contiguous()  # a ramp below, for the whole curve
    clean[..., :64, :128], clean[..., :64, 128:] = 0.06, 0.85  # above, dark beside bright: an edge at column 128
    est = constant_estimator(10.0)
    noisy = add_noise(clean, "camera", peak=30, sigma=4, seed=0)
    blind, _ = estimate_noise_map(noisy, est)
    refined = refine_noise_map(noisy, est, clean)
    assert refined is not None and refined.shape == (1, 1, 128, 256)
    dark, bright = float(refined[..., :30, 2:16].mean()), float(refined[..., :30, -16:-2].mean())
    assert dark > 1.3 * bright  # the curve falls with brightness
    edge = refined[..., :30, 127].mean(), refined[..., :30, 128].mean()  # one pixel either side of the edge
    assert float(edge[0]) == pytest.approx(dark, rel=0.02) and float(edge[1]) == pytest.approx(bright, rel=0.02)
    assert float(blind[..., :30, 127].mean()) < 0.95 * dark  # the blind map blurs across the edge
    gaussian = (clean + 0.04 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert refine_noise_map(gaussian, est, clean) is None
    with pytest.raises(ValueError, match="shape"):
        refine_noise_map(noisy, est, clean[..., :64])

    weights = Weights(fidelity=tiny(), gan=tiny(seed=9), source="test", estimator=est)
    for image in (noisy, gaussian):
        out = restore(weights, ImageData(pixels=image), impulses=False)
        first_map, _ = estimate_noise_map(image, est)
        first = restore(weights, ImageData(pixels=image), sigma=first_map, impulses=False).image.pixels
        second = refine_noise_map(image, est, first)
        if second is None:  # Gaussian: one pass at the blind map
            assert torch.equal(out.noise_map, first_map) and torch.equal(out.image.pixels, first)
        else:  # camera: the map read at the first result's brightness, and the result of a pass at it
            assert torch.equal(out.noise_map, second)
            assert torch.equal(out.image.pixels, restore(weights, ImageData(pixels=image), sigma=second, impulses=False).image.pixels)
        assert (second is None) == (image is gaussian)
    calls: list[tuple[int, int]] = []  # the second pass is known before the first: progress runs once to the end
    restore(weights, ImageData(pixels=noisy), impulses=False, tile=64, overlap=16, progress=lambda d, t: calls.append((d, t)))
    totals = {t for _, t in calls}
    assert len(totals) == 1 and calls[-1][0] == calls[-1][1] == len(calls) > 2

    import ganlib.inference as inference
    from ganlib.noise_level import NLF_BINS, _per_pixel_map

    # a curve that does not fall may still take a second pass once the first result's residual is read (a
    # dark JPEG): not known before, so its progress runs again from the start
    dark = torch.linspace(0.2, 0.05, NLF_BINS)
    monkeypatch.setattr(inference, "_second_pass_curve", lambda noisy, denoised, curve, alpha: dark)
    calls.clear()
    out = restore(weights, ImageData(pixels=gaussian), impulses=False, tile=64, overlap=16, progress=lambda d, t: calls.append((d, t)))
    first_map, _ = estimate_noise_map(gaussian, est)
    first = restore(weights, ImageData(pixels=gaussian), sigma=first_map, impulses=False, tile=64, overlap=16).image.pixels
    assert torch.equal(out.noise_map, _per_pixel_map(dark, first))
    total = calls[0][1]
    assert calls == [(d, total) for d in range(1, total + 1)] * 2


def _camera_levels(peak: float, read: float) -> torch.Tensor:
    """The exact camera-noise level (0-1 scale) at each NLF bin's centre brightness."""
    from ganlib.noise_level import _bin_centres
    from ganlib.noise import noise_std_map

    gray = _bin_centres().float().view(1, 1, 1, -1).expand(1, 3, 1, -1)
    return noise_std_map(gray, "camera", peak=peak, sigma=read).flatten()


def test_the_second_pass_measures_camera_noise_from_the_first_results_residual(monkeypatch) -> None:
    """`_second_pass_curve` fits the camera model to the residual noisy - first result: with a perfect
    first result it recovers the exact levels of camera noise (the given falling curve is replaced), for
    colour and gray images; Gaussian noise keeps the given curve (a constant fits it better). JPEG
    compression takes the colour noise: a falling curve is kept when the JPEG quality can be read
    (`_noise_level_function` lifted it already), else raised by JPEG_LIFT; a flat one (a dark photo)
    takes the camera model's shape at the curve's level where the photo has pixels, and Gaussian noise
    saved as JPEG keeps its first result (None). Transparent pixels are left out."""
    from ganlib import noise_level
    from ganlib.noise_level import JPEG_LIFT, NLF_BINS, _residual_levels, _second_pass_curve

    clean = torch.linspace(0.02, 0.98, 256).expand(1, 3, 128, 256).contiguous()
    flat = torch.full((NLF_BINS,), 0.08)
    falling = torch.linspace(0.12, 0.06, NLF_BINS)
    truth = _camera_levels(30, 4)
    mid = slice(3, 14)  # bins whose values are not clipped
    for image, reference in ((clean, clean), (clean[:, :1], clean[:, :1])):
        noisy = add_noise(image, "camera", peak=30, sigma=4, seed=1)
        fitted = _second_pass_curve(noisy, reference, falling)
        assert torch.allclose(fitted[mid], truth[mid], rtol=0.18), (fitted[mid], truth[mid])  # first-order truth: the shadows bend
        assert float(fitted[0]) > 2 * float(fitted[-1])  # the shadows' read noise, through the sRGB curve
        assert _second_pass_curve(noisy, reference, flat) is None  # its colour noise kept (no JPEG): a flat curve takes none
    gaussian = add_noise(clean, "gaussian", sigma=20, seed=1)
    assert torch.equal(_second_pass_curve(gaussian, clean, falling), falling)
    jpeg = add_noise(clean, "camera", peak=30, sigma=4, quality=75, seed=1)
    assert _residual_levels(jpeg, clean)[2] < 1.0 < _residual_levels(add_noise(clean, "camera", peak=30, sigma=4, seed=1), clean)[2]
    monkeypatch.setattr(noise_level, "estimate_jpeg_quality", lambda image: 75)
    assert torch.equal(_second_pass_curve(jpeg, clean, falling), falling)
    shaped = _second_pass_curve(jpeg, clean, flat)
    assert float(shaped[0]) > 2 * float(shaped[-1])  # the camera model's shape ...
    count = _residual_levels(jpeg, clean)[1].float()
    assert float((shaped * count).sum() / count.sum()) == pytest.approx(0.08)  # ... at the curve's level where the photo has pixels
    gaussian_jpeg = _jpeg((gaussian[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy(), 75)
    assert _second_pass_curve(gaussian_jpeg, clean, flat) is None
    monkeypatch.setattr(noise_level, "estimate_jpeg_quality", lambda image: None)  # off the block grid, or in-camera noise reduction
    assert torch.allclose(_second_pass_curve(jpeg, clean, falling), falling * JPEG_LIFT)
    assert torch.equal(_second_pass_curve(jpeg, clean, flat), shaped)  # JPEG 90 and above, or in-camera noise reduction
    assert _second_pass_curve(jpeg[:, :1], clean[:, :1], flat) is None  # one channel: its residual has no chroma to lose
    monkeypatch.undo()

    guide = clean.clone()
    guide[..., 128:] = 0.40  # a flat right half, in the brightness bin of the left's columns 95-111 ...
    left = add_noise(guide, "camera", peak=30, sigma=4, seed=2)
    left[..., 128:] = 0.40  # ... without noise ...
    alpha = torch.ones(1, 1, 128, 256)
    alpha[..., 128:] = 0.0  # ... and transparent
    k = int(0.40 * NLF_BINS)
    with_alpha, without = _residual_levels(left, guide, alpha)[0], _residual_levels(left, guide)[0]
    assert float(with_alpha[k]) == pytest.approx(float(truth[k]), rel=0.15)
    assert float(without[k]) < 0.5 * float(with_alpha[k])


def test_jpeg_compressed_noise_is_read_as_the_noise_before_compression(monkeypatch) -> None:
    """A colour JPEG's noise-level function is raised by 1 + JPEG_LIFT_GAIN (step / sigma)^JPEG_LIFT_POWER
    (step: the quality's mean low-frequency quantisation step): more for stronger compression; not for
    a photo never compressed, a gray JPEG, or a level below JPEG_LIFT_MIN_SIGMA (a clean JPEG's artefacts)."""
    import skimage

    from ganlib import noise_level
    from ganlib.jpeg import LOW_FREQUENCIES, ijg_table
    from ganlib.noise_level import JPEG_LIFT_GAIN, JPEG_LIFT_MIN_SIGMA, JPEG_LIFT_POWER, _noise_level_function

    est = _Wide(view=1).eval()
    rng = np.random.default_rng(0)
    photo = skimage.data.astronaut()[60:252, 160:352].astype(np.float64)
    noisy = np.clip(photo + rng.normal(0, 10, photo.shape), 1, 254).astype(np.uint8)

    def unlifted(image: torch.Tensor) -> tuple[torch.Tensor, float]:
        with monkeypatch.context() as m:
            m.setattr(noise_level, "estimate_jpeg_quality", lambda image: None)
            return _noise_level_function(image, est)

    lifts = []
    for quality in (50, 80):
        jpeg = _jpeg(noisy, quality)
        (curve, sigma), (curve0, sigma0) = _noise_level_function(jpeg, est), unlifted(jpeg)
        read = noise_level.estimate_jpeg_quality(jpeg)
        assert read == pytest.approx(quality, abs=3)
        step = np.mean([ijg_table(read)[f] for f in LOW_FREQUENCIES])
        assert sigma0 >= JPEG_LIFT_MIN_SIGMA
        assert sigma / sigma0 == pytest.approx(1 + JPEG_LIFT_GAIN * (step / sigma0) ** JPEG_LIFT_POWER)
        assert torch.allclose(curve, curve0 * sigma / sigma0)
        lifts.append(sigma / sigma0)
    assert lifts[0] > lifts[1] > 1.05
    png = torch.from_numpy(noisy).permute(2, 0, 1)[None].float() / 255
    gray = _jpeg(noisy[..., 1], 50)
    for image in (png, gray):
        (curve, sigma), (curve0, sigma0) = _noise_level_function(image, est), unlifted(image)
        assert sigma == sigma0 and torch.equal(curve, curve0)
    ramp = np.linspace(60, 200, 192)[None, :, None].repeat(192, 0).repeat(3, 2)
    faint = _jpeg(np.clip(ramp + rng.normal(0, 4, ramp.shape), 0, 255).astype(np.uint8), 80)
    assert noise_level.estimate_jpeg_quality(faint) is not None
    assert _noise_level_function(faint, est)[1] == unlifted(faint)[1] < JPEG_LIFT_MIN_SIGMA
