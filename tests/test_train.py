"""train/: dataset rules, both stages, exact resume, Ctrl-C, export, model card and the Hub push.

Every run uses a tiny generator on 40x40 synthetic photos and trains for at most 8 steps.
The push goes for real through huggingface_hub to a local endpoint (a small HTTP server in a
thread that speaks the create-repo / validate-yaml / preupload / commit part of the Hub API).
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ganlib.models import Discriminator, Generator
from train import train as trainer
from train.data import CropDataset, NoiseConfig, list_images, split

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "crop": 32,
    "min_size": 32,
    "val_count": 2,
    "batch_size": 4,
    "max_steps": 8,
    "warmup_steps": 2,
    "log_every": 1,
    "threads": 1,
    "generator": {"widths": [8, 16], "blocks": [1, 1]},
    "discriminator": {"width": 8, "layers": 2},
}


def make_photos(folder: Path, n: int = 8, seed: int = 0) -> Path:
    """n smooth colour images with fine texture, 40x40 to 48x40, as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 40, 40 + 8 * (i % 2)
        y, x = np.mgrid[0:h, 0:w] / 40.0
        img = np.stack([np.sin(6 * x + i), np.cos(5 * y - i), np.sin(9 * x * y + i)], -1) * 0.35 + 0.5
        img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"photo{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    return {"root": root, "data": make_photos(root / "photos"), "config": config}


def run(ws: dict[str, Path], out: Path, *extra: str) -> int:
    return trainer.main(["--data", str(ws["data"]), "--output-dir", str(out), "--config", str(ws["config"]), *extra])


def run_interrupted(ws: dict[str, Path], out: Path, at: int, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    """A run that receives SIGINT during step `at` (as Ctrl-C would), in this process."""
    real_step, calls = trainer.train_step, {"n": 0}

    def step_then_interrupt(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at:
            signal.raise_signal(signal.SIGINT)
        return result

    with monkeypatch.context() as m:
        m.setattr(trainer, "train_step", step_then_interrupt)
        return run(ws, out, *extra)


def state_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoint" / "state.safetensors")


def state_step(out: Path) -> int:
    return json.loads((out / "checkpoint" / "state.json").read_text())["__dict__"][0][1]


# --- a local Hub endpoint -------------------------------------------------------------------


class _Hub(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, object]] = []
    commits: dict[str, dict[str, bytes]] = {}  # repo id -> {path: content}

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _reply(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        here = f"http://127.0.0.1:{self.server.server_port}"
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        if path.endswith("/commit/main"):
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
            repo = path.removeprefix("/api/models/").removesuffix("/commit/main")
            files = {v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
            self.calls.append(("commit", repo, sorted(files)))
            self.commits[repo] = files
            return self._reply({"commitOid": "c0ffee" * 6 + "beef", "commitUrl": f"{here}/{repo}/commit/c0ffee"})
        body = json.loads(raw or b"{}")
        self.calls.append(("POST", path, body))
        if path == "/api/repos/create":
            repo = f"{body['organization']}/{body['name']}"
            if repo in self.commits:
                return self._reply({"error": "You already created this model repo", "url": f"{here}/{repo}"}, 409)
            self.commits[repo] = {}
            return self._reply({"url": f"{here}/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]})
        return self._reply({"error": f"not served: {path}"}, 404)


@pytest.fixture(scope="module")
def hub():
    import huggingface_hub.constants as hf_constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HF_ENDPOINT", endpoint)
        m.setenv("HF_TOKEN", "hf_local_test_token")
        m.setattr(hf_constants, "ENDPOINT", endpoint)
        _Hub.calls.clear()
        _Hub.commits.clear()
        yield _Hub
    server.shutdown()


# --- runs shared by several tests -------------------------------------------------------------


@pytest.fixture(scope="module")
def fidelity_run(workspace: dict[str, Path]) -> Path:
    out = workspace["root"] / "fidelity"
    assert run(workspace, out) == 0
    return out


@pytest.fixture(scope="module")
def gan_run(workspace: dict[str, Path], fidelity_run: Path, hub) -> Path:
    out = workspace["root"] / "gan"
    assert run(workspace, out, "--stage", "gan", "--init", str(fidelity_run / "final"), "--push-to-hub", "me/tiny-gan") == 0
    return out


# --- data -------------------------------------------------------------------------------------


def test_dataset_skips_and_reports_bad_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_photos(tmp_path, n=3)
    Image.new("L", (40, 40)).save(tmp_path / "gray.png")
    Image.new("RGBA", (40, 40)).save(tmp_path / "alpha.png")
    Image.new("RGB", (40, 20)).save(tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    sub = tmp_path / "nested"
    make_photos(sub, n=1, seed=5)
    with caplog.at_level(logging.INFO, logger="train.data"):
        kept = list_images(tmp_path, min_size=32)
    assert [p.name for p in kept] == ["photo00.png", "photo00.png", "photo01.png", "photo02.png"]
    assert {p.parent.name for p in kept} == {tmp_path.name, "nested"}
    text = caplog.text
    assert "skipped 1 image(s)" in text and "unreadable" in text and "broken.jpg" in text
    assert "not 3-channel (mode L)" in text and "not 3-channel (mode RGBA)" in text
    assert "smaller than 32x32" in text and "small.png" in text
    assert "using 4 image(s)" in text
    with pytest.raises(ValueError, match="no usable images"):
        list_images(tmp_path, min_size=100)
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "missing", min_size=32)


def test_split_is_reproducible_and_disjoint(tmp_path: Path) -> None:
    paths = list_images(make_photos(tmp_path, n=8), min_size=32)
    train_a, val_a = split(paths, 3, seed=0)
    train_b, val_b = split(list(paths), 3, seed=0)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 3 and sorted(train_a + val_a) == sorted(paths)
    assert split(paths, 3, seed=1)[1] != val_a  # the seed matters (fixed inputs: not a coin flip)
    with pytest.raises(ValueError, match="cannot hold back"):
        split(paths, 8, seed=0)


def test_a_new_training_seed_keeps_the_held_back_photos(tmp_path: Path) -> None:
    from train.train import TrainConfig, data_split

    data = make_photos(tmp_path, n=8)
    held = data_split(TrainConfig(data=str(data), val_count=3, min_size=32))[1]
    assert data_split(TrainConfig(data=str(data), val_count=3, min_size=32, seed=1))[1] == held  # --seed: new crops, same photos
    assert data_split(TrainConfig(data=str(data), val_count=3, min_size=32, split_seed=1))[1] != held


def test_samples_are_pure_functions_of_seed_and_index(tmp_path: Path) -> None:
    paths = list_images(make_photos(tmp_path, n=4), min_size=32)
    a, b = CropDataset(paths, 32, NoiseConfig(), seed=3), CropDataset(paths, 32, NoiseConfig(), seed=3, cache=False)
    for i in (0, 7, 12345678901):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)
    clean, noisy, smap = a[5]
    assert clean.shape == noisy.shape == (3, 32, 32) and smap.shape == (1, 32, 32)
    assert 0 <= clean.min() and clean.max() <= 1 and smap.min() >= 0
    assert not torch.equal(a[5][1], a[6][1])
    assert not torch.equal(a[5][1], CropDataset(paths, 32, NoiseConfig(), seed=4)[5][1])


def test_clean_samples_for_the_estimator(tmp_path: Path) -> None:
    paths = list_images(make_photos(tmp_path, n=4), min_size=32)
    base = CropDataset(paths, 32, NoiseConfig(), seed=3)
    same = CropDataset(paths, 32, NoiseConfig(clean_prob=0.0), seed=3)
    assert all(torch.equal(x, y) for i in range(5) for x, y in zip(base[i], same[i]))  # 0 leaves the stream as it was
    half = CropDataset(paths, 32, NoiseConfig(clean_prob=0.5), seed=3)
    clean = [torch.equal(c, n) and not s.any() for c, n, s in (half[i] for i in range(200))]
    assert 70 < sum(clean) < 130  # about half: untouched pixels and an all-zero noise map
    assert not any(torch.equal(c, n) for c, n, _ in (base[i] for i in range(50)))


def test_pixel_shuffled_camera_samples(tmp_path: Path) -> None:
    """real_stride_prob: camera noise rendered on a crop of twice the side, then one 2x2 pixel-shuffled
    sub-image of it (as restore(stride=2) sees a camera photo); 0 leaves the stream as it was."""
    from train.data import camera_sample, shuffled_camera_sample

    paths = list_images(make_photos(tmp_path, n=4), min_size=32)
    base = CropDataset(paths, 16, NoiseConfig(), seed=3)
    assert all(torch.equal(x, y) for i in range(5) for x, y in zip(base[i], CropDataset(paths, 16, NoiseConfig(real_stride_prob=0.0), seed=3)[i]))
    every = CropDataset(paths, 16, NoiseConfig(real_stride_prob=1.0, real_jpeg_prob=0.0), seed=3)
    target, noisy, smap = every[0]
    assert target.shape == noisy.shape == (3, 16, 16) and smap.shape == (1, 16, 16) and not torch.equal(target, noisy)
    clean = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    cfg = NoiseConfig(real_jpeg_prob=0.0)
    full = camera_sample(clean, torch.Generator().manual_seed(5), jpeg_prob=0.0, shot_range=cfg.real_shot, nr_prob=0.0)
    sub = shuffled_camera_sample(clean, cfg, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, then the sub-image's offsets
    camera_sample(clean, g, jpeg_prob=0.0, shot_range=cfg.real_shot, nr_prob=0.0)
    i, j = (int(v) for v in torch.randint(2, (2,), generator=g))
    for a, b in zip(sub, full):
        assert torch.equal(a, b[..., i::2, j::2])
    with pytest.raises(ValueError, match="needs photos of at least 48 pixels"):
        CropDataset(paths, 24, NoiseConfig(real_stride_prob=1.0), seed=0)[0]
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"noise": {"real_stride_prob": 0.5}}))
    with pytest.raises(SystemExit):  # min_size must leave room for the doubled crop
        trainer.parse_config(["--data", "d", "--crop", "32", "--min-size", "48", "--config", str(preset)])


# --- one optimisation step ---------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["fidelity", "gan", "gan-unet"])
def test_every_parameter_gets_a_gradient(tmp_path: Path, stage: str) -> None:
    torch.manual_seed(0)
    extra = {}
    if stage == "gan-unet":
        stage, extra = "gan", {"fm_weight": 1.0, "gan_loss": "nonsaturating", "adv_warmup": 10, "lowpass_weight": 5.0,
                               "r1_weight": 1.0, "discriminator": {**TINY.get("discriminator", {}), "kind": "unet"}}
    cfg = trainer._coerce(trainer.TrainConfig, {**TINY, "stage": stage, "ssim_weight": 0.5, **extra})
    paths = list_images(make_photos(tmp_path, n=2), min_size=32)
    data = CropDataset(paths, 32, NoiseConfig(mix={"gaussian": 1.0}), seed=0)
    clean, noisy, smap = (torch.stack(t) for t in zip(*(data[i] for i in range(4))))
    gen = Generator(cfg.generator)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    disc = opt_d = None
    if stage == "gan":
        disc = Discriminator(cfg.discriminator)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in gen.parameters()]
    amp = torch.autocast("cpu", enabled=False)
    loss_pix, loss_adv, loss_d = trainer.train_step(cfg, gen, disc, opt_g, opt_d, clean, noisy, smap, amp)
    assert all(math.isfinite(float(v)) for v in (loss_pix, loss_adv, loss_d))
    assert float(loss_pix) > 0
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"generator parameter {name} got no gradient"
    assert all(not torch.equal(a, p) for a, p in zip(before, gen.parameters())), "the optimiser did not step"
    if stage == "gan":
        assert float(loss_d) > 0 and float(loss_adv) != 0
        for name, p in disc.named_parameters():
            assert p.requires_grad, f"discriminator parameter {name} left frozen"
            assert p.grad is not None, f"discriminator parameter {name} got no gradient"
            # (the last bias may get an exact 0: with every logit inside the hinge margin its
            # gradients from real and fake pairs cancel)
            assert name in ("net.6.bias", "head.2.bias") or p.grad.abs().sum() > 0, f"discriminator parameter {name} got a zero gradient"


def test_r1_penalty_adds_the_discriminators_gradient_norm_on_real_pairs() -> None:
    cfg0 = trainer._coerce(trainer.TrainConfig, {**TINY, "stage": "gan"})
    cfg1 = trainer._coerce(trainer.TrainConfig, {**TINY, "stage": "gan", "r1_weight": 10.0})
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 32, 32, generator=g)
    noisy, smap = clean + 0.1 * torch.randn(clean.shape, generator=g), torch.full((2, 1, 32, 32), 0.1)
    amp = torch.autocast("cpu", enabled=False)
    losses = []
    for cfg in (cfg0, cfg1):
        torch.manual_seed(0)
        gen, disc = Generator(cfg.generator), Discriminator(cfg.discriminator)
        opt_g, opt_d = torch.optim.SGD(gen.parameters(), lr=0.0), torch.optim.SGD(disc.parameters(), lr=0.0)
        losses.append(float(trainer.train_step(cfg, gen, disc, opt_g, opt_d, clean, noisy, smap, amp)[2]))
    # the same networks and data: the difference is the penalty, gamma / 2 * E|grad|^2 > 0
    assert losses[1] > losses[0] and math.isfinite(losses[1])


def test_lowpass_loss_sees_colour_shifts_not_texture() -> None:
    clean = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    checker = (torch.arange(32)[:, None] + torch.arange(40)[None, :]) % 2 * 2 - 1.0  # +-1, mean 0 on each 8x8 block
    textured = clean + 0.2 * checker
    assert trainer.lowpass_loss(textured, clean) < 1e-6 < 0.1 < float(torch.nn.functional.l1_loss(textured, clean))
    shifted = clean.clone()
    shifted[:, 0] += 4 / 255  # a red cast of 4 levels
    assert trainer.lowpass_loss(shifted, clean) == pytest.approx(4 / 255 / 3, rel=1e-4)


def test_quantile_loss_is_l1_at_the_median_and_leans_high_above() -> None:
    pred, target = torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0])  # one under-, one over-prediction
    assert trainer.quantile_loss(pred, target, 0.5) == pytest.approx(float(torch.nn.functional.l1_loss(pred, target)))
    assert trainer.quantile_loss(pred[:1], target[:1], 0.75) == pytest.approx(1.5)  # under-predicting costs more
    assert trainer.quantile_loss(pred[1:], target[1:], 0.75) == pytest.approx(0.5)
    # the constant minimising it over a sample is the sample's quantile
    sample = torch.arange(100, dtype=torch.float32)
    best = min(range(100), key=lambda c: float(trainer.quantile_loss(torch.full((100,), float(c)), sample, 0.8)))
    assert 78 <= best <= 81


def test_gan_loss_kinds() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    d, g = trainer.gan_losses("hinge", real, fake)
    assert d.item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2) and g.item() == pytest.approx(0.75)
    d, g = trainer.gan_losses("relativistic", real, fake)
    assert d.item() > 0 and g.item() > d.item()  # the discriminator is winning here
    d, g = trainer.gan_losses("nonsaturating", real, fake)
    assert d.item() < g.item()  # the discriminator is winning here too
    with pytest.raises(ValueError, match="hinge, relativistic or nonsaturating"):
        trainer.gan_losses("wasserstein", real, fake)


def test_lr_schedules() -> None:
    cfg = trainer.TrainConfig(lr=1e-3, lr_min=1e-6, warmup_steps=10, max_steps=110)
    assert trainer.lr_factor(cfg, 0) == pytest.approx(0.1) and trainer.lr_factor(cfg, 9) == pytest.approx(1.0)
    assert trainer.lr_factor(cfg, 10) == pytest.approx(1.0) and trainer.lr_factor(cfg, 60) == pytest.approx(0.5, abs=1e-3)
    assert trainer.lr_factor(cfg, 110) == pytest.approx(1e-3)
    cfg.schedule = "step"
    assert [trainer.lr_factor(cfg, s) for s in (20, 55, 83, 100)] == [1.0, 0.5, 0.25, 0.125]


def test_config_layers_and_errors(tmp_path: Path) -> None:
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({**TINY, "noise": {"sigma": [5, 30]}}))
    cfg, _ = trainer.parse_config(["--data", "d", "--config", str(preset), "--batch-size", "2", "--val-sigmas", "10,20"])
    assert cfg.batch_size == 2 and cfg.crop == 32 and cfg.val_sigmas == [10.0, 20.0]
    assert cfg.generator.widths == [8, 16] and list(cfg.noise.sigma) == [5, 30]
    preset.write_text(json.dumps({"generator": {"depth": 3}}))
    with pytest.raises(ValueError, match="unknown GeneratorConfig setting"):
        trainer.parse_config(["--data", "d", "--config", str(preset)])
    with pytest.raises(SystemExit):
        trainer.parse_config(["--data", "d", "--stage", "wgan"])


# --- whole runs --------------------------------------------------------------------------------


def test_fidelity_run_logs_validates_and_exports(fidelity_run: Path, workspace: dict[str, Path]) -> None:
    rows = list(csv.DictReader((fidelity_run / "log.csv").open()))
    losses = [float(r["loss_pix"]) for r in rows if r["loss_pix"]]
    assert len(losses) == 8 and all(math.isfinite(v) and v > 0 for v in losses)
    metrics = [json.loads(r["metrics"]) for r in rows if r["metrics"]]
    assert len(metrics) == 1 and set(metrics[0]) == {"psnr15", "ssim15", "psnr25", "ssim25", "psnr50", "ssim50"}
    assert all(math.isfinite(v) for v in metrics[0].values()) and 0 < metrics[0]["ssim25"] <= 1
    grid = Image.open(fidelity_run / "val" / "step0000008.png")
    assert grid.size == (3 * 40, 2 * 40)  # noisy | denoised | clean, one row per validation image
    saved = json.loads((fidelity_run / "checkpoint" / "train_config.json").read_text())
    assert saved["max_steps"] == 8 and saved["generator"]["widths"] == [8, 16]
    assert state_step(fidelity_run) == 8

    final = fidelity_run / "final"
    assert {"config.json", "model.safetensors", "README.md", "train_config.json", "metrics.json"} <= {p.name for p in final.iterdir()}
    model = Generator.from_pretrained(final)
    assert model.config.widths == [8, 16]
    ema = Generator.from_pretrained(fidelity_run / "checkpoint" / "generator")
    for a, b in zip(model.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(a, b)  # the exported generator is the EMA one
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    from ganlib.inference import denoise

    y = denoise(model, x, 25.0)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_model_card_metadata_and_metrics(fidelity_run: Path, workspace: dict[str, Path]) -> None:
    from huggingface_hub import ModelCard

    final = fidelity_run / "final"
    card = ModelCard.load(final / "README.md")
    assert card.data.license == "mit"
    assert card.data.pipeline_tag == "image-to-image"
    assert card.data.library_name == "ganlib"
    assert {"image-denoising", "gan"} <= set(card.data.tags)
    assert card.data.datasets == [workspace["data"].name]
    metrics = json.loads((final / "metrics.json").read_text())
    for key, value in metrics.items():
        assert f"| {key} | {value:.4f} |" in card.text
    assert "8 steps of batch 4" in card.text and "limitations" in card.text.lower()


def test_model_card_says_what_share_is_gray() -> None:
    from train import export

    assert export._gray_note(0.0) == ""
    assert export._gray_note(0.15) == "; 15% gray with the same noise in every channel"
    assert "the generator for gray photos (`gray/`" in export._gray_note(1.0)


def test_gan_stage_from_fidelity_weights_and_push(gan_run: Path, fidelity_run: Path, hub) -> None:
    rows = list(csv.DictReader((gan_run / "log.csv").open()))
    steps = [r for r in rows if r["loss_pix"]]
    assert len(steps) == 8
    assert all(math.isfinite(float(r[k])) for r in steps for k in ("loss_pix", "loss_adv", "loss_d"))
    assert any(float(r["loss_d"]) != 0 for r in steps)
    structure = (gan_run / "checkpoint" / "state.json").read_text()
    assert "parametrizations.weight.0._u" in structure and '"opt_d"' in structure  # spectral-norm vectors and D's optimiser
    card = (gan_run / "final" / "README.md").read_text()
    assert "Stage `gan`" in card and "hinge" in card
    history = json.loads((gan_run / "final" / "training.json").read_text())
    assert [(r["stage"], r["steps"]) for r in history] == [("fidelity", 8), ("gan", 8)]  # the fidelity run it started from, then itself
    assert history[1]["init"] == str(fidelity_run / "final")
    assert "  - fidelity: 8 steps of batch 4" in card and "  - gan: 8 steps of batch 4" in card
    # --push-to-hub: the repo was created (exist_ok) and exactly the exported folder was committed.
    creates = [c for c in hub.calls if c[:2] == ("POST", "/api/repos/create")]
    assert creates and creates[0][2]["organization"] == "me" and creates[0][2]["name"] == "tiny-gan"
    final = gan_run / "final"
    uploaded = hub.commits["me/tiny-gan"]
    assert sorted(uploaded) == sorted(p.name for p in final.iterdir())
    for name, content in uploaded.items():
        assert content == (final / name).read_bytes()


def test_push_creates_repo_once_and_prints_commit(fidelity_run: Path, hub, capsys: pytest.CaptureFixture) -> None:
    from train.export import push

    final = fidelity_run / "final"
    oid = push(final, "me/tiny")
    assert oid == "c0ffee" * 6 + "beef"
    assert f"pushed to me/tiny: commit {oid}" in capsys.readouterr().out
    assert sorted(hub.commits["me/tiny"]) == sorted(p.name for p in final.iterdir())
    # a second push to the now existing repo: create answers 409, exist_ok makes it fine
    assert push(final, "me/tiny") == oid
    assert [c[0] for c in hub.calls if c[1] == "me/tiny"] == ["commit", "commit"]


@pytest.mark.parametrize("stage", ["fidelity", "gan"])
def test_resume_continues_bit_for_bit(stage: str, workspace: dict[str, Path], fidelity_run: Path, gan_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = fidelity_run if stage == "fidelity" else gan_run
    extra = [] if stage == "fidelity" else ["--stage", "gan", "--init", str(fidelity_run / "final")]
    out = workspace["root"] / f"resumed-{stage}"
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN when started in the background
    assert run_interrupted(workspace, out, 4, monkeypatch, *extra) == 0
    assert state_step(out) == 4 and not (out / "final").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert run(workspace, out, *extra, "--resume") == 0
    assert state_step(out) == 8 and (out / "final" / "model.safetensors").exists()
    a, b = state_tensors(straight), state_tensors(out)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} of {len(a)} checkpoint tensors differ after resume, e.g. {diff[:3]}"
    assert (out / "final" / "model.safetensors").read_bytes() == (straight / "final" / "model.safetensors").read_bytes()
    # the log continues where it stopped: one row per step, no duplicates
    steps = [int(r["step"]) for r in csv.DictReader((out / "log.csv").open()) if r["loss_pix"]]
    assert steps == list(range(1, 9))


def test_ctrl_c_saves_a_checkpoint(workspace: dict[str, Path], tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches the whole process group, data-loader workers included."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.train", "--data", str(workspace["data"]), "--output-dir", str(out),
           "--config", str(workspace["config"]), "--max-steps", "1000000", "--ckpt-every", "1000000", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            log = out / "log.csv"
            if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + two steps
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        os.killpg(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert "saving a checkpoint and stopping" in output and "continue with --resume" in output
    assert "Traceback" not in output, output
    assert state_step(out) >= 2
    assert (out / "checkpoint" / "generator" / "model.safetensors").exists() and not (out / "final").exists()


def test_exported_folder_denoises_through_the_cli(fidelity_run: Path, tmp_path: Path) -> None:
    if not (ROOT / "ganlib" / "__main__.py").exists():
        pytest.skip("the ganlib command line (ganlib/__main__.py) is not written yet")
    photo = make_photos(tmp_path / "in", n=1)
    noisy = tmp_path / "noisy.png"
    arr = np.asarray(Image.open(photo / "photo00.png")).astype(np.float32)
    arr = arr + np.random.default_rng(0).normal(0, 25, arr.shape)
    Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(noisy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("GANLIB_WEIGHTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "ganlib", "denoise", str(noisy), "-o", str(tmp_path / "out"), "--sigma", "25", "--weights", str(fidelity_run / "final")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    outputs = list((tmp_path / "out").glob("*.png"))
    assert len(outputs) == 1 and Image.open(outputs[0]).size == Image.open(noisy).size


@pytest.mark.slow
def test_two_process_run_matches_one_process(workspace: dict[str, Path], fidelity_run: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) and batch 2 each = one process with batch 4, up to float
    rounding: same samples, gradients averaged by DDP, both the generator and the discriminator."""
    init = ["--stage", "gan", "--init", str(fidelity_run / "final"), "--max-steps", "4"]
    assert run(workspace, tmp_path / "one", *init) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train.train",
           "--data", str(workspace["data"]), "--output-dir", str(tmp_path / "two"), "--config", str(workspace["config"]), *init, "--batch-size", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        output = proc.communicate(timeout=600)[0]  # slow under load: torch imports twice
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its two workers
    assert proc.returncode == 0, output[-3000:]
    a, b = state_tensors(tmp_path / "one"), state_tensors(tmp_path / "two")
    assert a.keys() == b.keys()
    names = json.loads((tmp_path / "one" / "checkpoint" / "state.json").read_text())["__dict__"]
    sections = {entry[0]: i for i, entry in enumerate(names)}  # "model", "ema", "disc", ... -> index
    for section, atol in (("model", 2e-5), ("ema", 2e-5), ("disc", 5e-4)):
        # The discriminator gets a looser bound: its last bias has rounding-level gradients (real
        # and fake hinge terms cancel), which Adam turns into lr-sized steps of either sign.
        prefix = f"s.{sections[section]}."
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, section
        for key in keys:
            err = (a[key] - b[key]).abs().max().item()
            assert err <= atol + 1e-4 * a[key].abs().max().item(), f"{section} tensor {key}: max difference {err:.3g}"


def test_estimator_stage_learns_exports_and_loads_beside_the_generator(workspace: dict[str, Path], fidelity_run: Path, tmp_path: Path) -> None:
    from ganlib.hub import load_weights
    from ganlib.models import NoiseEstimator

    preset = tmp_path / "est.json"
    preset.write_text(json.dumps({**TINY, "stage": "estimator", "max_steps": 40, "lr": 3e-3, "warmup_steps": 1, "estimator": {"width": 8}}))
    out = tmp_path / "est"
    assert trainer.main(["--data", str(workspace["data"]), "--output-dir", str(out), "--config", str(preset)]) == 0
    rows = list(csv.DictReader((out / "log.csv").open()))
    losses = [float(r["loss_pix"]) for r in rows if r["loss_pix"]]
    assert len(losses) == 40 and sum(losses[-10:]) < 0.7 * sum(losses[:10])  # it learns
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert set(metrics) == {"err15", "err25", "err50", "err_clean", "err_camera", "err_camera_jpeg", "err_real"}
    assert all(math.isfinite(v) and v >= 0 for v in metrics.values())
    assert "estimates the noise level" in (out / "final" / "README.md").read_text()
    assert not (out / "val").exists()  # no image grid for the estimator

    weights = tmp_path / "weights"
    (weights / "fidelity").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (weights / "fidelity" / name).write_bytes((fidelity_run / "final" / name).read_bytes())
        (weights / "estimator").mkdir(exist_ok=True)
        (weights / "estimator" / name).write_bytes((out / "final" / name).read_bytes())
    loaded = load_weights(weights)
    assert isinstance(loaded.estimator, NoiseEstimator) and loaded.estimator.config.width == 8

    with pytest.raises(SystemExit):  # the estimator works on 8x8 blocks
        trainer.parse_config(["--data", "d", "--config", str(preset), "--crop", "36"])
    bad = ["--data", str(workspace["data"]), "--output-dir", str(tmp_path / "bad"), "--config", str(preset), "--init", str(fidelity_run / "final")]
    assert trainer.main(bad) == 2  # a generator folder is no estimator: a clear error, not a traceback


def test_small_folders_train_with_the_automatic_validation_share(tmp_path: Path) -> None:
    from train.data import auto_val_count, list_folders

    paths = list_images(make_photos(tmp_path / "a", n=6), min_size=32)
    train_paths, val_paths = split(paths, 0, seed=0)
    assert len(val_paths) == auto_val_count(6) == 1 and len(train_paths) == 5
    assert auto_val_count(1000) == 80 and auto_val_count(10_000) == 300 and auto_val_count(1) == 0
    assert split(paths[:1], 0, seed=0) == (paths[:1], paths[:1])  # one photo: trains and validates on it
    with pytest.raises(ValueError, match="--val-count below 6"):
        split(paths, 300, seed=0)
    make_photos(tmp_path / "b", n=3)
    both = list_folders(f"{tmp_path / 'a'},{tmp_path / 'b'}", min_size=32)
    assert len(both) == 9


def test_mixture_gray_real_and_overstated_samples() -> None:
    from train.data import sample_noise

    clean = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    gray_cfg = NoiseConfig(mix={"gaussian": 1.0}, gray_prob=1.0, sigma=(20.0, 20.0), clip_prob=0.0)
    target, noisy, smap = sample_noise(clean, gray_cfg, torch.Generator().manual_seed(1))
    assert torch.equal(target[0], target[1]) and torch.equal(noisy[0], noisy[2])  # gray, channel-identical noise
    assert abs(float((noisy - target).std()) * 255 - 20) < 2 and torch.allclose(smap, torch.full_like(smap, 20 / 255))
    real_cfg = NoiseConfig(mix={"real": 1.0}, real_jpeg_prob=0.0)
    target, noisy, smap = sample_noise(clean, real_cfg, torch.Generator().manual_seed(2))
    assert not torch.equal(target, clean)  # the camera's noise-free rendering is the target
    measured = float((noisy - target).pow(2).mean().sqrt())
    assert abs(float(smap.pow(2).mean().sqrt()) - measured) < 0.25 * measured
    over_cfg = NoiseConfig(mix={"gaussian": 1.0}, sigma=(10.0, 10.0), over_prob=1.0, over_scale=2.0, over_add=40.0)
    levels = [float(sample_noise(clean, over_cfg, torch.Generator().manual_seed(s))[2].mean()) * 255 for s in range(20)]
    assert min(levels) >= 10 - 1e-4 and max(levels) > 20  # the map overstates the noise, never understates it


def test_sigma_power_puts_more_gaussian_samples_at_low_levels() -> None:
    from train.data import sample_noise

    clean = torch.full((3, 16, 16), 0.5)

    def levels(power: float) -> list[float]:
        cfg = NoiseConfig(mix={"gaussian": 1.0}, sigma=(0.0, 75.0), sigma_power=power, clip_prob=0.0)
        return [float(sample_noise(clean, cfg, torch.Generator().manual_seed(s))[2].mean()) * 255 for s in range(400)]

    uniform, low = levels(1.0), levels(2.0)
    # power 1 is the uniform draw (mean 37.5); power 2 has mean 75 / 3 = 25 and the same range
    assert abs(np.mean(uniform) - 37.5) < 3 and abs(np.mean(low) - 25.0) < 3
    assert min(low) >= 0 and max(low) <= 75 and np.mean([v < 15 for v in low]) > 1.5 * np.mean([v < 15 for v in uniform])


def test_soup_averages_two_generators_weight_by_weight(tmp_path: Path) -> None:
    from ganlib.models import GeneratorConfig
    from train import export
    from train.soup import main as soup_main
    from train.soup import soup

    cfg = GeneratorConfig(widths=[8, 16], blocks=[1, 1])
    torch.manual_seed(0)
    a, b = Generator(cfg), Generator(cfg)
    for p in b.parameters():
        p.data.add_(0.5)
    half = soup(a, b, 0.5).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(half[k], (sa[k] + sb[k]) / 2) for k in sa if sa[k].is_floating_point())
    assert all(torch.equal(soup(a, b, 0.0).state_dict()[k], sa[k]) for k in sa)
    with pytest.raises(ValueError, match="weight"):
        soup(a, b, 1.5)
    with pytest.raises(ValueError, match="differ"):
        soup(a, Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 2])), 0.5)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    out = soup_main([str(tmp_path / "a"), str(tmp_path / "b"), "--weight", "0.25", "--output-dir", str(tmp_path / "s")])
    loaded = Generator.from_pretrained(out).state_dict()
    assert all(torch.allclose(loaded[k], 0.75 * sa[k] + 0.25 * sb[k]) for k in sa if sa[k].is_floating_point())
    history = json.loads((out / "training.json").read_text())
    assert history[-1]["stage"] == "soup" and history[-1]["weight"] == 0.25
    assert "weight average: 0.75 x" in export._run_line(history[-1])
    assert not (out / "metrics.json").exists()  # A has no train_config.json: no validation, no card

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    values = {"data": str(photos), "min_size": 32, "val_count": 2, "val_max_side": 32, "val_sigmas": [25.0],
              "generator": {"widths": [8, 16], "blocks": [1, 1]}}
    (tmp_path / "a" / "train_config.json").write_text(json.dumps(values))
    out = soup_main([str(tmp_path / "a"), str(tmp_path / "b"), "--output-dir", str(tmp_path / "s2")])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"psnr25", "ssim25"} and 0 < metrics["psnr25"] < 60
    card = (out / "README.md").read_text()
    assert "3 training images, 2 held back" in card and "weight average: 0.5 x" in card and f"{metrics['psnr25']:.4f}" in card
    assert json.loads((out / "train_config.json").read_text()) == values


def test_gray_validation_images_are_one_channel_luma(tmp_path: Path) -> None:
    """val_gray: the validation noise must be the same in every channel, as in gray training samples,
    so the images are (1,1,H,W) luma (a gray copy in three channels would get colour noise)."""
    from train.data import load_validation

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    colour, = load_validation([tmp_path / "p.png"], max_side=16)
    gray, = load_validation([tmp_path / "p.png"], max_side=16, gray=True)
    assert colour.shape == (1, 3, 16, 16) and gray.shape == (1, 1, 16, 16)
    luma = (colour[0] * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    assert torch.allclose(gray[0, 0], luma, atol=1e-6)


def test_estimated_maps_replace_a_seeded_share_of_the_exact_ones() -> None:
    from ganlib.noise_level import estimate_noise_map
    from ganlib.models import EstimatorConfig, NoiseEstimator
    from train.train import with_estimated_maps

    torch.manual_seed(0)
    est = NoiseEstimator(EstimatorConfig(width=8)).eval()
    noisy = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exact = torch.full((6, 1, 32, 32), 0.1)
    assert with_estimated_maps(noisy, exact, est, 0.0, seed=3) is exact
    every = with_estimated_maps(noisy, exact, est, 1.0, seed=3)
    for i in range(6):
        assert torch.allclose(every[i], estimate_noise_map(noisy[i : i + 1], est)[0][0] / 255.0)
    some = with_estimated_maps(noisy, exact, est, 0.5, seed=1)
    replaced = [not torch.equal(some[i], exact[i]) for i in range(6)]
    assert 0 < sum(replaced) < 6 and torch.equal(exact, torch.full((6, 1, 32, 32), 0.1))  # the input is not modified
    assert torch.equal(some, with_estimated_maps(noisy, exact, est, 0.5, seed=1))  # seeded


def test_grow_adds_identity_blocks_and_matches_a_grown_model(tmp_path: Path) -> None:
    from ganlib.models import GeneratorConfig
    from train import export
    from train.grow import grow
    from train.grow import main as grow_main

    torch.manual_seed(0)
    small = Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 1]))
    x = torch.rand(1, 3, 20, 28)
    rng = torch.get_rng_state()
    big = grow(small, [3, 2])
    assert torch.equal(torch.get_rng_state(), rng)  # seeded without touching the caller's random state
    assert big.config.blocks == [3, 2] and len(big.encoders[0]) == 3 and len(big.decoders[0]) == 3
    with torch.no_grad():
        assert torch.equal(big(x, 0.1), small(x, 0.1))  # the new blocks start as the identity
        for p in big.parameters():  # a fine-tuned grown model: every block does something
            p.add_(0.01 * torch.randn_like(p))
    other = Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 1]))
    like = grow(other, [3, 2], like=big)
    sl, sb = like.state_dict(), big.state_dict()
    assert torch.equal(sl["encoders.0.1.conv1.weight"], sb["encoders.0.1.conv1.weight"])  # first conv from `like`
    assert not sl["decoders.0.2.conv2.weight"].any()  # last conv zero
    with torch.no_grad():
        assert torch.equal(like(x, 0.1), other(x, 0.1))
    with pytest.raises(ValueError, match="at least"):
        grow(big, [1, 2])
    with pytest.raises(ValueError, match="levels"):
        grow(small, [2, 2, 2])
    with pytest.raises(ValueError, match="like"):
        grow(other, [2, 2], like=big)
    small.save_pretrained(tmp_path / "a")
    out = grow_main([str(tmp_path / "a"), "--blocks", "2,1", "--output-dir", str(tmp_path / "g")])
    grown = Generator.from_pretrained(out)
    with torch.no_grad():
        assert grown.config.blocks == [2, 1] and torch.allclose(grown(x, 0.1), small(x, 0.1), atol=1e-6)
    history = json.loads((out / "training.json").read_text())
    assert history[-1]["stage"] == "grow" and "grown to [2, 1]" in export._run_line(history[-1])
    with pytest.raises(SystemExit):
        grow_main([str(tmp_path / "a"), "--output-dir", str(tmp_path / "h")])  # neither --blocks nor --like


def test_transplant_adds_the_gan_change_to_new_fidelity_weights(tmp_path: Path) -> None:
    """Task arithmetic: onto + (gan - base) on the parameters base has; grown blocks keep onto's weights."""
    from ganlib.models import GeneratorConfig
    from train import export
    from train.grow import grow
    from train.transplant import main as transplant_main
    from train.transplant import transplant

    torch.manual_seed(0)
    base = Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 1]))
    gan = Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 1]))
    gan.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in base.state_dict().items()})
    onto = grow(base, [2, 1])  # the fidelity model, grown and fine-tuned since
    with torch.no_grad():
        for p in onto.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gan_grown = grow(gan, [2, 1], like=onto)  # the GAN stage grown to match, as shipped
    for source in (gan, gan_grown):
        out, moved = transplant(source, base, onto)
        so, sn, sg, sb = out.state_dict(), onto.state_dict(), gan.state_dict(), base.state_dict()
        assert moved == len(sb) and set(so) == set(sn)
        for key in sn:
            want = sn[key] + (sg[key] - sb[key]) if key in sb else sn[key]
            assert torch.allclose(so[key], want, atol=1e-6), key
        assert not torch.equal(so["encoders.0.0.conv1.weight"], sn["encoders.0.0.conv1.weight"])
        assert torch.equal(so["encoders.0.1.conv2.weight"], sn["encoders.0.1.conv2.weight"])  # grown block: onto's, not zero
        assert sn["encoders.0.1.conv2.weight"].any()
    same, moved = transplant(base, base, onto)  # no change to carry
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), onto.state_dict().values()))
    with pytest.raises(ValueError, match="shapes differ"):  # another network's weights
        transplant(Generator(GeneratorConfig(widths=[8, 32], blocks=[1, 1])), base, onto)
    for name, model in (("gan", gan), ("base", base), ("onto", onto)):
        model.save_pretrained(tmp_path / name)
    folder = transplant_main([str(tmp_path / "gan"), "--base", str(tmp_path / "base"), "--onto", str(tmp_path / "onto"),
                              "--output-dir", str(tmp_path / "ta")])
    loaded = Generator.from_pretrained(folder)
    assert all(torch.allclose(a, b) for a, b in zip(loaded.state_dict().values(), transplant(gan, base, onto)[0].state_dict().values()))
    history = json.loads((folder / "training.json").read_text())
    assert history[-1]["stage"] == "transplant" and "task arithmetic" in export._run_line(history[-1])
    assert history[-1]["gan_runs"] == []  # the toy GAN folder has no recorded adversarial run
    line = export._run_line({**history[-1], "gan_runs": [{"stage": "gan", "steps": 800, "batch": 8, "crop": 96, "lr": 5e-5,
                                                          "hours": 0.46, "device": "a 2-core CPU"}]})
    assert line.endswith("that change: gan: 800 steps of batch 8, 96x96 crops, peak lr 5e-05, 0.46 hours on a 2-core CPU")
    with pytest.raises(SystemExit):
        transplant_main([str(tmp_path / "gan"), "--base", str(tmp_path / "nope"), "--onto", str(tmp_path / "onto"), "--output-dir", str(tmp_path / "x")])
