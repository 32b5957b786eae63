"""Noise synthesis (ganlib.noise): each kind has the statistics it claims, is pure and seeded, and
rejects bad parameters with a clear ValueError; noise_std_map matches the noise actually added."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ganlib.noise import DEFAULTS, KINDS, add_noise, noise_std_map


def flat(value: float, c: int = 3, h: int = 128, w: int = 128) -> torch.Tensor:
    return torch.full((1, c, h, w), float(value))


def ramp(c: int = 3, h: int = 24, w: int = 32) -> torch.Tensor:
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([(x + y) / 2, x, y][:c])[None].contiguous()


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("sigma", [5.0, 15.0, 25.0, 50.0])
def test_gaussian_std_matches_sigma_unclipped(sigma):
    x = flat(0.5)
    y = add_noise(x, "gaussian", seed=0, clip=False, sigma=sigma)
    n = y - x
    assert abs(n.std().item() / (sigma / 255) - 1) < 0.03
    assert abs(n.mean().item()) < 0.1 * sigma / 255


def test_gaussian_clipped_away_from_bounds_keeps_sigma():
    y = add_noise(flat(0.5), "gaussian", seed=1, sigma=15.0)  # 0.5 +- 4 sigma stays inside [0, 1]
    assert abs((y - 0.5).std().item() / (15 / 255) - 1) < 0.03
    assert 0 <= y.min() and y.max() <= 1


def test_gaussian_clip_false_leaves_range_clip_true_clamps():
    x = flat(0.02, h=32, w=32)
    assert add_noise(x, "gaussian", seed=2, clip=False, sigma=50).min() < 0
    assert add_noise(x, "gaussian", seed=2, sigma=50).min() == 0


def test_poisson_variance_grows_with_intensity_like_x_over_peak():
    peak = 100.0
    levels = [0.05, 0.2, 0.4, 0.6]
    variances = []
    for i, v in enumerate(levels):
        y = add_noise(flat(v), "poisson", seed=10 + i, peak=peak)
        variances.append(y.var().item())
        assert abs(y.mean().item() - v) < 0.01
        assert abs(variances[-1] / (v / peak) - 1) < 0.05
    assert variances == sorted(variances) and variances[-1] > 5 * variances[0]


def test_poisson_lower_peak_is_noisier():
    x = flat(0.4)
    assert add_noise(x, "poisson", seed=0, peak=10).std() > 2 * add_noise(x, "poisson", seed=0, peak=200).std()


@pytest.mark.parametrize("amount,salt_ratio", [(0.1, 0.3), (0.02, 0.5), (0.5, 0.9)])
def test_salt_pepper_fraction_and_ratio(amount, salt_ratio):
    y = add_noise(flat(0.5), "salt_pepper", seed=3, amount=amount, salt_ratio=salt_ratio)
    salt, pepper = (y == 1).float().mean().item(), (y == 0).float().mean().item()
    assert (y == 1).sum() + (y == 0).sum() + (y == 0.5).sum() == y.numel()  # only 0, 1 or the original value
    assert abs(salt + pepper - amount) < 0.005
    assert abs(salt / (salt + pepper) - salt_ratio) < 0.03


def test_salt_pepper_extremes():
    x = ramp()
    assert torch.equal(add_noise(x, "salt_pepper", seed=0, amount=0.0), x)
    assert (add_noise(x, "salt_pepper", seed=0, amount=1.0, salt_ratio=1.0) == 1).all()


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5])
def test_speckle_std_proportional_to_intensity(level):
    sigma = 0.1
    y = add_noise(flat(level), "speckle", seed=4, sigma=sigma)
    assert abs((y - level).std().item() / (sigma * level) - 1) < 0.03
    assert torch.equal(add_noise(flat(0.0, h=8, w=8), "speckle", seed=4, sigma=0.5), flat(0.0, h=8, w=8))


@pytest.mark.parametrize("quality", [None, 60])
@pytest.mark.parametrize("c", [1, 3])
def test_camera_output_range_and_8bit(quality, c):
    x = ramp(c, 33, 47)
    y = add_noise(x, "camera", seed=5, peak=50.0, sigma=4.0, quality=quality)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0 <= y.min() and y.max() <= 1
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)  # 8-bit quantised
    assert (y - x).abs().mean() > 0.005  # it did add noise


def test_camera_jpeg_path_changes_output_deterministically():
    x = ramp(3, 32, 32)
    plain = add_noise(x, "camera", seed=6)
    jpeg = add_noise(x, "camera", seed=6, quality=30)
    assert not torch.equal(plain, jpeg)
    assert torch.equal(jpeg, add_noise(x, "camera", seed=6, quality=30))
    assert (jpeg - plain).abs().mean() < 0.05  # JPEG of the same noisy image, not a different image


def test_quantize_rounds_to_8bit():
    y = add_noise(ramp(), "gaussian", seed=7, sigma=10, quantize=True)
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)


# ----------------------------------------------------------------------------- purity, seeding, shapes


@pytest.mark.parametrize("kind", KINDS)
def test_determinism_seed_and_generator(kind):
    x = ramp()
    a = add_noise(x, kind, seed=11)
    assert torch.equal(a, add_noise(x, kind, seed=11))
    assert not torch.equal(a, add_noise(x, kind, seed=12))
    assert torch.equal(a, add_noise(x, kind, generator=torch.Generator().manual_seed(11)))
    g = torch.Generator().manual_seed(11)
    first, second = add_noise(x, kind, generator=g), add_noise(x, kind, generator=g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


def test_no_global_random_state_used_or_changed():
    state = torch.get_rng_state()
    torch.manual_seed(0)
    a = add_noise(ramp(), "gaussian", seed=1)
    torch.manual_seed(99)
    b = add_noise(ramp(), "gaussian", seed=1)
    assert torch.equal(a, b)
    torch.set_rng_state(state)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 7, 13), (1, 3, 5, 3), (3, 17, 9), (1, 9, 1), (2, 3, 5, 5), (1, 3, 1, 1)])
def test_shapes_gray_color_odd_batch(kind, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    y = add_noise(x, kind, seed=0)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0 <= y.min() and y.max() <= 1
    assert torch.equal(x, before)  # input not modified
    m = noise_std_map(x, kind)
    assert m.shape == (*shape[:-3], 1, *shape[-2:]) and (m >= 0).all()


def test_batch_items_get_different_noise():
    y = add_noise(flat(0.5, h=16, w=16).repeat(2, 1, 1, 1), "gaussian", seed=0, sigma=20)
    assert not torch.equal(y[0], y[1])


def test_float64_input_allowed_and_not_modified():
    x = ramp().double()
    before = x.clone()
    y = add_noise(x, "poisson", seed=0)
    assert y.dtype == torch.float32 and torch.equal(x, before)


# ----------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    "kind,kwargs,match",
    [
        ("gaussian", {"sigma": -1.0}, "sigma must be >= 0"),
        ("speckle", {"sigma": -0.1}, "sigma must be >= 0"),
        ("salt_pepper", {"amount": 1.5}, r"amount must be in \[0, 1\]"),
        ("salt_pepper", {"salt_ratio": -0.1}, r"salt_ratio must be in \[0, 1\]"),
        ("poisson", {"peak": 0.0}, "peak must be > 0"),
        ("camera", {"peak": -5.0}, "peak must be > 0"),
        ("blur", {}, "unknown noise kind 'blur'; choose one of gaussian"),
        ("gaussian", {"amount": 0.1}, r"noise kind 'gaussian' takes \['sigma'\], not \['amount'\]"),
        ("camera", {"quality": 0}, "JPEG quality must be an integer in 1..100"),
        ("camera", {"quality": 101}, "JPEG quality must be an integer in 1..100"),
        ("camera", {"quality": 50.5}, "JPEG quality must be an integer in 1..100"),
        ("camera", {"quality": float("inf")}, "JPEG quality must be an integer in 1..100"),
        ("camera", {"quality": "high"}, "JPEG quality must be an integer in 1..100"),
        ("gaussian", {"sigma": float("nan")}, "sigma must be a finite number"),
        ("gaussian", {"sigma": "25"}, "sigma must be a finite number"),
    ],
)
def test_bad_params_raise_clear_value_error(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        add_noise(ramp(), kind, seed=0, **kwargs)
    with pytest.raises(ValueError, match=match):
        noise_std_map(ramp(), kind, **kwargs)


def test_missing_seed_raises():
    with pytest.raises(ValueError, match="explicit seed or generator"):
        add_noise(ramp(), "gaussian")


@pytest.mark.parametrize(
    "image",
    [torch.zeros(2, 8, 8), torch.zeros(8, 8), torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)],
    ids=["2ch", "2d", "4ch", "uint8"],
)
def test_bad_images_raise(image):
    with pytest.raises(ValueError, match="expected a float tensor"):
        add_noise(image, "gaussian", seed=0)
    with pytest.raises(ValueError, match="expected a float tensor"):
        add_noise(np.zeros((8, 8, 3), np.float32), "gaussian", seed=0)


def test_numpy_scalar_params_accepted():
    x = ramp()
    assert torch.equal(add_noise(x, "gaussian", seed=0, sigma=np.float32(10)), add_noise(x, "gaussian", seed=0, sigma=10.0))
    assert add_noise(x, "camera", seed=0, quality=np.int64(80)).shape == x.shape


# ----------------------------------------------------------------------------- noise_std_map


def test_std_map_shapes():
    assert noise_std_map(ramp(3, 5, 7), "gaussian").shape == (1, 1, 5, 7)
    assert noise_std_map(ramp(1, 5, 7), "poisson").shape == (1, 1, 5, 7)
    assert noise_std_map(ramp(3, 5, 7)[0], "speckle").shape == (1, 5, 7)
    assert noise_std_map(ramp(3, 5, 7).repeat(4, 1, 1, 1), "camera").shape == (4, 1, 5, 7)


@pytest.mark.parametrize("sigma", [10.0, 30.0])
def test_gaussian_std_map_matches_empirical_std(sigma):
    x = flat(0.5)
    m = noise_std_map(x, "gaussian", sigma=sigma)
    assert torch.allclose(m, torch.full_like(m, sigma / 255))
    emp = (add_noise(x, "gaussian", seed=8, sigma=sigma) - x).std().item()
    assert abs(emp / m.mean().item() - 1) < 0.03


@pytest.mark.parametrize(
    "kind,level,params,tol",
    [("poisson", 0.3, {"peak": 60.0}, 0.05), ("speckle", 0.4, {"sigma": 0.15}, 0.05),
     ("salt_pepper", 0.3, {"amount": 0.1}, 0.05), ("camera", 0.5, {"peak": 200.0, "sigma": 2.0}, 0.05),
     # in the shadows the sRGB curve bends within +-1 std, so the first-order map is ~10% low there
     ("camera", 0.15, {"peak": 200.0, "sigma": 2.0}, 0.15)],
)
def test_std_map_matches_empirical_std(kind, level, params, tol):
    x = flat(level)
    m = noise_std_map(x, kind, **params).mean().item()
    emp = (add_noise(x, kind, seed=9, **params) - x).std().item()
    assert abs(emp / m - 1) < tol, (emp, m)


def test_std_map_grows_with_intensity_for_signal_dependent_kinds():
    x = torch.linspace(0.05, 0.95, 10).reshape(1, 1, 1, 10)
    for kind in ("poisson", "speckle"):
        m = noise_std_map(x, kind).flatten()
        assert (m[1:] > m[:-1]).all(), kind
    # camera: more photons in linear light, but the sRGB curve compresses highlights, so in sRGB
    # values the noise falls with intensity
    m = noise_std_map(x, "camera").flatten()
    assert (m[1:] < m[:-1]).all()


# ----------------------------------------------------------------------------- properties


valid_params = st.one_of(
    st.tuples(st.just("gaussian"), st.fixed_dictionaries({"sigma": st.floats(0, 100)})),
    st.tuples(st.just("poisson"), st.fixed_dictionaries({"peak": st.floats(0.5, 1000)})),
    st.tuples(st.just("salt_pepper"), st.fixed_dictionaries({"amount": st.floats(0, 1), "salt_ratio": st.floats(0, 1)})),
    st.tuples(st.just("speckle"), st.fixed_dictionaries({"sigma": st.floats(0, 2)})),
    st.tuples(
        st.just("camera"),
        st.fixed_dictionaries(
            {"peak": st.floats(1, 1000), "sigma": st.floats(0, 30), "quality": st.one_of(st.none(), st.integers(1, 100))}
        ),
    ),
)


@settings(max_examples=25, deadline=None)
@given(valid_params, st.sampled_from([(1, 1, 3, 5), (1, 3, 8, 8), (3, 4, 9), (2, 1, 1, 7)]), st.integers(0, 2**31 - 1))
def test_property_valid_params_give_output_in_range(kind_params, shape, seed):
    kind, params = kind_params
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    y = add_noise(x, kind, seed=seed, **params)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert 0 <= y.min() and y.max() <= 1
    m = noise_std_map(x, kind, **params)
    assert m.shape == (*shape[:-3], 1, *shape[-2:]) and torch.isfinite(m).all() and (m >= 0).all()


invalid_params = st.one_of(
    st.tuples(st.sampled_from(["gaussian", "speckle"]), st.fixed_dictionaries({"sigma": st.floats(max_value=-1e-6)})),
    st.tuples(st.sampled_from(["poisson", "camera"]), st.fixed_dictionaries({"peak": st.floats(max_value=0)})),
    st.tuples(
        st.just("salt_pepper"),
        st.fixed_dictionaries({"amount": st.one_of(st.floats(max_value=-1e-6), st.floats(min_value=1 + 1e-6))}),
    ),
    st.tuples(
        st.just("camera"),
        st.fixed_dictionaries({"quality": st.one_of(st.integers(max_value=0), st.integers(min_value=101))}),
    ),
    st.tuples(st.sampled_from(KINDS), st.fixed_dictionaries({"bogus": st.floats(0, 1)})),
    st.tuples(st.text(min_size=1, max_size=8).filter(lambda k: k not in KINDS), st.just({})),
    st.tuples(
        st.sampled_from(["gaussian", "speckle"]),
        st.fixed_dictionaries({"sigma": st.sampled_from([float("nan"), float("inf")])}),
    ),
)


@settings(max_examples=25, deadline=None)
@given(invalid_params)
def test_property_invalid_params_raise_value_error(kind_params):
    kind, params = kind_params
    with pytest.raises(ValueError):
        add_noise(ramp(3, 4, 4), kind, seed=0, **params)


def test_defaults_cover_every_kind():
    assert set(DEFAULTS) == set(KINDS)
    for kind in KINDS:
        y = add_noise(ramp(), kind, seed=0)
        assert not torch.equal(y, ramp())
