"""Generator / discriminator: shapes, residual design, noise-level conditioning, save/load, cost."""

import pytest
import torch
from torch import nn

from ganlib.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, count_macs_per_pixel


def tiny(seed: int = 0, channels: int = 3) -> Generator:
    torch.manual_seed(seed)
    model = Generator(GeneratorConfig(channels=channels, widths=[8, 16], blocks=[1, 1])).eval()
    with torch.no_grad():  # the default init gives a small tail; make the residual clearly non-zero
        model.tail.weight.mul_(10)
    return model


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (17, 31), (64, 64), (3, 100)])
def test_any_size_keeps_shape(size):
    model = tiny()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x, 0.1)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_grayscale_model_shape():
    model = tiny(channels=1)
    x = torch.rand(1, 1, 13, 9)
    with torch.no_grad():
        assert model(x, 0.05).shape == x.shape


def test_zero_tail_is_identity():
    """The network predicts a residual: with the last layer zeroed it returns its input unchanged."""
    model = tiny()
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        x = torch.rand(1, 3, 21, 34, generator=torch.Generator().manual_seed(2))
        assert torch.equal(model(x, 0.2), x)
    # and a non-zero tail does change the image (so the check above is not vacuous)
    with torch.no_grad():
        assert not torch.allclose(tiny()(x, 0.2), x)


def test_sigma_scalar_vector_and_map_agree_and_condition():
    model = tiny()
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(x, 0.1)
        b = model(x, torch.tensor([0.1, 0.1]))
        c = model(x, torch.full((2, 1, 16, 24), 0.1))
        d = model(x, torch.tensor([0.1, 0.3]))
        e = model(x, 0.3)
    assert torch.allclose(a, b) and torch.allclose(a, c)
    assert torch.allclose(d[0], a[0]) and torch.allclose(d[1], e[1])  # per-image levels
    assert not torch.allclose(a, e)  # the noise level actually conditions the output
    # a spatially varying map changes only where it differs (up to the receptive field)
    m = torch.full((2, 1, 16, 24), 0.1)
    m[..., 12:] = 0.4
    with torch.no_grad():
        f = model(x, m)
    assert not torch.allclose(f, a)


def test_bad_shapes_raise():
    model = tiny()
    with pytest.raises(ValueError, match="expected"):
        model(torch.rand(1, 1, 8, 8), 0.1)  # gray into a colour model
    with pytest.raises(ValueError, match="expected"):
        model(torch.rand(3, 8, 8), 0.1)  # no batch dimension
    with pytest.raises(ValueError, match="noise level"):
        model(torch.rand(1, 3, 8, 8), torch.full((1, 1, 4, 4), 0.1))  # map of the wrong size
    with pytest.raises(ValueError, match="noise level"):
        model(torch.rand(1, 3, 8, 8), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        GeneratorConfig(channels=2)
    with pytest.raises(ValueError):
        GeneratorConfig(widths=[8, 16], blocks=[1])


def test_save_load_round_trip(tmp_path):
    model = tiny(seed=5)
    model.save_pretrained(tmp_path / "g")
    assert (tmp_path / "g" / "model.safetensors").is_file() and (tmp_path / "g" / "config.json").is_file()
    assert not list((tmp_path / "g").glob("*.bin"))
    loaded = Generator.from_pretrained(tmp_path / "g").eval()
    assert loaded.config == model.config
    x = torch.rand(1, 3, 19, 23, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(loaded(x, 0.1), model(x, 0.1))


def test_default_generator_cost():
    macs = count_macs_per_pixel(Generator())
    assert 10_000 < macs <= 70_000


def test_discriminator_shape_and_spectral_norm():
    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig(channels=3, width=8, layers=3))
    x = torch.rand(2, 3, 64, 64)
    out = disc(x, x)
    # three stride-2 convs 64 -> 8, then two 4x4 stride-1 convs: 8 -> 7 -> 6
    assert out.shape == (2, 1, 6, 6)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    assert all(nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    for _ in range(30):  # power iteration runs once per training forward pass
        disc(x, x)
    for c in convs:
        w = c.weight.detach().reshape(c.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(w, ord=2) == pytest.approx(1.0, abs=0.05)


def test_noise_estimator_any_size_and_save_load(tmp_path):
    from ganlib.models import EstimatorConfig, NoiseEstimator

    torch.manual_seed(0)
    est = NoiseEstimator(EstimatorConfig(width=8)).eval()
    for h, w in [(1, 1), (5, 9), (37, 64), (64, 48)]:
        out = est(torch.rand(2, 3, h, w))
        assert out.shape == (2, 1, h, w) and (out >= 0).all() and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"expected \(N,3,H,W\) input"):
        est(torch.rand(1, 1, 16, 16))
    est.save_pretrained(tmp_path / "e")
    again = NoiseEstimator.from_pretrained(tmp_path / "e")
    x = torch.rand(1, 3, 24, 40)
    assert again.config == est.config and torch.equal(again(x), est(x))
    assert 1_000 < count_macs_per_pixel(NoiseEstimator()) < 10_000  # tiny next to the generator's 60k


def test_unet_discriminator_scores_every_pixel_and_exposes_features():
    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig(channels=3, width=8, layers=3, kind="unet"))
    x = torch.rand(2, 3, 50, 36)  # any size: padded, then cropped
    logits, feats = disc.features(x, x)
    disc.eval()  # (in training mode every forward runs a power iteration)
    assert logits.shape == (2, 1, 50, 36) and torch.equal(disc(x, x), disc.features(x, x)[0])
    assert len(feats) == 6 and feats[0].shape[1] == 16
    sn = [m for m in disc.modules() if isinstance(m, nn.Conv2d) and nn.utils.parametrize.is_parametrized(m, "weight")]
    assert len(sn) == 7  # every conv but the first and the last
    with pytest.raises(ValueError, match="kind"):
        DiscriminatorConfig(kind="dcgan")


def test_discriminator_can_judge_the_amplified_method_noise():
    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig(channels=3, width=8, layers=2, kind="unet", residual_gain=8.0)).eval()
    noisy, cand = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    plain = Discriminator(DiscriminatorConfig(channels=3, width=8, layers=2, kind="unet")).eval()
    plain.load_state_dict(disc.state_dict())
    assert torch.allclose(disc(noisy, cand), plain(noisy, 8.0 * (noisy - cand)))  # sees (noisy, 8 x residual)
    patch = Discriminator(DiscriminatorConfig(channels=3, width=8, layers=2, residual_gain=4.0, spectral_norm=False)).eval()
    assert not any(nn.utils.parametrize.is_parametrized(m, "weight") for m in patch.modules() if isinstance(m, nn.Conv2d))
    assert patch(noisy, noisy).shape == patch(noisy, cand).shape


def test_estimator_depth_widens_its_view_and_defaults_keep_the_shipped_shape():
    from ganlib.models import EstimatorConfig, NoiseEstimator

    default = NoiseEstimator()
    assert len(default.local) == 3 and len(default.context) == 2  # what the shipped weights were saved with
    deep = NoiseEstimator(EstimatorConfig(width=8, local_layers=5, context_layers=4)).eval()

    def reach(model) -> int:  # how far (pixels) a change at the centre moves the output
        x = torch.full((1, 3, 256, 256), 0.5)
        y = x.clone()
        y[..., 128:132, 128:132] = 0.9
        with torch.no_grad():
            diff = (model(y) - model(x)).abs()[0, 0, 130]
        cols = torch.nonzero(diff > 1e-7).flatten()
        return int(cols.max() - cols.min())

    assert reach(deep) > reach(NoiseEstimator(EstimatorConfig(width=8)).eval()) + 16
    with pytest.raises(ValueError, match="at least one"):
        NoiseEstimator(EstimatorConfig(local_layers=0))
