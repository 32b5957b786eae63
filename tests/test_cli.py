"""`python -m ganlib`: end to end in a subprocess (a few runs) and in-process for the cheap cases."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganlib.cli import main
from ganlib.hub import load_weights
from ganlib.images import load_image, to_numpy
from ganlib.inference import denoise_image
from ganlib.models import Generator, GeneratorConfig

REPO = Path(__file__).resolve().parent.parent
COMMIT = "c" * 40


def noisy_array(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 5.0)[..., None] * np.cos(y / 7.0)[..., None] * np.ones(channels)
    return np.clip(base + rng.normal(0, 15, (h, w, channels)), 0, 255).astype(np.uint8)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """Tiny weights, a few inputs (one corrupt, one not an image), an isolated HF cache."""
    monkeypatch.chdir(tmp_path)
    for k in ("GANLIB_WEIGHTS", "GANLIB_REVISION"):
        monkeypatch.delenv(k, raising=False)
    for stage, seed in (("fidelity", 1), ("gan", 2)):
        torch.manual_seed(seed)
        Generator(GeneratorConfig(widths=[8, 16], blocks=[1, 1])).save_pretrained(tmp_path / "w" / stage)
    Image.fromarray(noisy_array(29, 37, 3, 0)).save(tmp_path / "a.png")
    batch = tmp_path / "batch"
    batch.mkdir()
    rgba = np.dstack([noisy_array(25, 20, 3, 1), np.linspace(0, 255, 25 * 20).reshape(25, 20).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(batch / "c.png")
    Image.fromarray(noisy_array(16, 16, 3, 2)).save(batch / "d.jpg", quality=95)
    (batch / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (batch / "notes.txt").write_text("not an image, ignored")
    return tmp_path


def cli(*args: str, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GANLIB_", "HF_"))}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cwd / "hf-cache")}, **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "ganlib", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def error_lines(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ") and name in line]


def test_denoise_files_and_folder_from_a_cached_hub_repo(work):
    # weights from a Hub repo id, resolved by huggingface_hub from a pre-filled cache (offline)
    shutil.copytree(work / "w", work / "hf-cache" / "models--user--tiny" / "snapshots" / COMMIT)
    before = (work / "a.png").read_bytes()
    r = cli("denoise", "a.png", "batch", "missing.png", "-o", "out", "--weights", "user/tiny", "--revision", COMMIT, "--sigma", "25", cwd=work)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert len(error_lines(r.stderr, "bad.png")) == 1 and len(error_lines(r.stderr, "missing.png")) == 1
    assert "failed: 2 input(s)" in r.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == ["a.png", "c.png", "d.png"]
    with Image.open(work / "out" / "a.png") as im:
        assert im.size == (37, 29) and im.mode == "RGB"
    with Image.open(work / "out" / "c.png") as im:
        assert im.size == (20, 25) and im.mode == "RGBA"
        assert np.array_equal(np.asarray(im)[..., 3], np.asarray(Image.open(work / "batch" / "c.png"))[..., 3])
    assert (work / "a.png").read_bytes() == before  # inputs untouched
    # the result is what the library gives for these weights and sigma
    weights = load_weights(work / "w")
    expected = denoise_image(weights, load_image(work / "a.png"), sigma=25.0, precision="auto")
    assert np.array_equal(np.asarray(Image.open(work / "out" / "a.png")), to_numpy(expected.pixels))


def test_existing_outputs_are_skipped_unless_overwrite(work, capsys):
    args = ["denoise", "a.png", "-o", "out", "--weights", "w"]
    assert main(args) == 0
    marker = Image.new("RGB", (37, 29), (255, 0, 0))
    marker.save(work / "out" / "a.png")
    assert main(args) == 0
    assert "skip" in capsys.readouterr().err
    assert np.asarray(Image.open(work / "out" / "a.png"))[0, 0].tolist() == [255, 0, 0]
    assert main([*args, "--overwrite"]) == 0
    assert np.asarray(Image.open(work / "out" / "a.png"))[0, 0].tolist() != [255, 0, 0]


def test_never_overwrites_an_input(work, capsys):
    (work / "out").mkdir()
    shutil.copy(work / "a.png", work / "out" / "a.png")
    before = (work / "out" / "a.png").read_bytes()
    assert main(["denoise", "out/a.png", "-o", "out", "--weights", "w", "--overwrite"]) == 1
    assert "would replace an input" in capsys.readouterr().err
    assert (work / "out" / "a.png").read_bytes() == before


def test_output_may_name_the_png_file_of_a_single_image(work, capsys):
    assert main(["denoise", "a.png", "-o", "folder", "--weights", "w", "--sigma", "25"]) == 0
    assert main(["denoise", "a.png", "-o", "sub/result.png", "--weights", "w", "--sigma", "25"]) == 0
    assert (work / "sub" / "result.png").is_file()  # a file, not a folder named result.png
    assert np.array_equal(np.asarray(Image.open(work / "sub" / "result.png")), np.asarray(Image.open(work / "folder" / "a.png")))
    capsys.readouterr()
    assert main(["denoise", "a.png", "-o", "result.jpg", "--weights", "w"]) == 1  # results are PNG only
    assert "saved losslessly as PNG" in capsys.readouterr().err and not (work / "result.jpg").exists()
    assert main(["denoise", "a.png", "batch/c.png", "-o", "both.png", "--weights", "w"]) == 1  # two images, one file name
    assert "names one file, but 2 images" in capsys.readouterr().err and not (work / "both.png").exists()
    before = (work / "a.png").read_bytes()
    assert main(["denoise", "a.png", "-o", "a.png", "--weights", "w", "--overwrite"]) == 1  # an input is never replaced
    assert (work / "a.png").read_bytes() == before
    assert "would replace an input" in capsys.readouterr().err
    (work / "notes.txt").write_text("not a folder")
    assert main(["denoise", "a.png", "-o", "notes.txt", "--weights", "w"]) == 1
    assert "must be a folder or a .png file name" in capsys.readouterr().err


def test_sigma_auto_versus_fixed(work):
    weights = load_weights(work / "w")
    image = load_image(work / "a.png")
    assert main(["denoise", "a.png", "-o", "auto", "--weights", "w"]) == 0  # --sigma auto is the default
    assert main(["denoise", "a.png", "-o", "fixed", "--weights", "w", "--sigma", "25"]) == 0
    assert main(["denoise", "a.png", "-o", "auto2", "--weights", "w", "--sigma", "AUTO"]) == 0
    auto, fixed = (np.asarray(Image.open(work / d / "a.png")) for d in ("auto", "fixed"))
    assert np.array_equal(auto, to_numpy(denoise_image(weights, image, sigma=None, precision="auto").pixels))
    assert np.array_equal(fixed, to_numpy(denoise_image(weights, image, sigma=25.0, precision="auto").pixels))
    assert not np.array_equal(auto, fixed)
    assert np.array_equal(auto, np.asarray(Image.open(work / "auto2" / "a.png")))


def test_precision_and_ensemble_flags(work):
    weights = load_weights(work / "w")
    image = load_image(work / "a.png")
    for precision in ("float32", "bfloat16"):
        assert main(["denoise", "a.png", "-o", precision, "--weights", "w", "--sigma", "25", "--precision", precision]) == 0
        expected = to_numpy(denoise_image(weights, image, sigma=25.0, precision=precision).pixels)
        assert np.array_equal(np.asarray(Image.open(work / precision / "a.png")), expected)
    assert main(["denoise", "a.png", "-o", "x8", "--weights", "w", "--sigma", "25", "--ensemble"]) == 0
    expected = to_numpy(denoise_image(weights, image, sigma=25.0, precision="auto", ensemble=True).pixels)
    assert np.array_equal(np.asarray(Image.open(work / "x8" / "a.png")), expected)
    full, half = (np.asarray(Image.open(work / d / "a.png")).astype(int) for d in ("float32", "bfloat16"))
    assert np.abs(full - half).max() <= 3  # 8-bit outputs: bfloat16 moves a few pixels by a level or so


def test_realism_and_weights_errors_are_one_line(work, capsys):
    assert main(["denoise", "a.png", "-o", "r", "--weights", "w", "--realism", "0.5", "--sigma", "20"]) == 0
    assert main(["denoise", "a.png", "-o", "x", "--weights", "nowhere/at/all"]) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "no such folder" in err
    assert main(["denoise", "a.png", "-o", "x", "--weights", "w/fidelity", "--realism", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "needs GAN weights" in err and "Traceback" not in err
    assert not (work / "x").exists() or not any((work / "x").iterdir())


def test_noise_subcommand(work):
    r = cli("noise", "batch/c.png", "-o", "noisy.png", "--kind", "gaussian", "--sigma", "30", "--seed", "1", cwd=work)
    assert r.returncode == 0, r.stderr
    src, out = np.asarray(Image.open(work / "batch" / "c.png")), np.asarray(Image.open(work / "noisy.png"))
    assert out.shape == src.shape  # RGBA kept
    assert np.array_equal(out[..., 3], src[..., 3])
    diff = out[..., :3].astype(float) - src[..., :3]
    assert 15 < diff.std() < 35  # about sigma 30 (less where clipped)


def test_noise_is_seeded_and_checks_options(work, capsys):
    assert main(["noise", "a.png", "-o", "n1.png", "--kind", "salt_pepper", "--amount", "0.2", "--seed", "3"]) == 0
    assert main(["noise", "a.png", "-o", "n2", "--kind", "salt_pepper", "--amount", "0.2", "--seed", "3"]) == 0  # .png added
    assert (work / "n1.png").read_bytes() == (work / "n2.png").read_bytes()
    assert main(["noise", "a.png", "-o", "n1.png", "--kind", "poisson"]) == 1  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["noise", "a.png", "-o", "n1.png", "--kind", "poisson", "--peak", "5", "--overwrite"]) == 0
    assert (work / "n1.png").read_bytes() != (work / "n2.png").read_bytes()
    (work / "folder").mkdir()
    assert main(["noise", "a.png", "-o", "folder", "--kind", "camera", "--quality", "50"]) == 0
    assert (work / "folder" / "a.png").is_file()
    assert main(["noise", "batch/bad.png", "-o", "b.png", "--kind", "gaussian"]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err, "bad.png")) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["denoise", "a.png"], "-o"),
        (["denoise", "a.png", "-o", "o", "--sigma", "loud"], "--sigma"),
        (["denoise", "a.png", "-o", "o", "--realism", "2"], "--realism"),
        (["denoise", "a.png", "-o", "o", "--tile", "-1"], "--tile"),
        (["denoise", "a.png", "-o", "o", "--precision", "fp16"], "--precision"),
        (["noise", "a.png", "-o", "n.png", "--kind", "purple"], "--kind"),
        (["noise", "a.png", "-o", "n.png", "--kind", "gaussian", "--amount", "0.1"], "--amount"),
        (["noise", "a.png", "-o", "n.jpg", "--kind", "gaussian"], ".png"),
        (["sharpen", "a.png"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(work, capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_bad_flag_in_a_real_process(work):
    r = cli("denoise", "a.png", "-o", "o", "--realism", "2", cwd=work)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "--realism" in r.stderr and "Traceback" not in r.stderr


def test_exif_is_kept_with_orientation_reset(work):
    """Camera and date survive `denoise`; the pixels are turned upright, so the orientation says 1."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "ACME"
    exif[0x0132] = "2024:05:01 12:00:00"
    Image.fromarray(noisy_array(20, 30, 3, 5)).save(work / "cam.jpg", quality=95, exif=exif)
    assert main(["denoise", "cam.jpg", "-o", "out", "--weights", "w", "--sigma", "10"]) == 0
    with Image.open(work / "out" / "cam.png") as im:
        back = im.getexif()
        assert im.size == (20, 30)  # upright: 30 wide stored, 20 wide displayed
        assert back[0x010F] == "ACME" and back[0x0132] == "2024:05:01 12:00:00" and back[0x0112] == 1


def test_make_run_installs_only_the_runtime_requirements():
    """`make run` installs requirements.txt (library, command line, demo), not the test/benchmark packages."""
    plan = subprocess.run(["make", "-n", "run", "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "-r requirements.txt" in plan.stdout and "requirements-dev.txt" not in plan.stdout
    runtime = (REPO / "requirements.txt").read_text().lower()
    for dev_only in ("pytest", "playwright", "hypothesis", "bm3d", "matplotlib"):
        assert dev_only not in runtime


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@pytest.mark.parametrize("title", ["Quickstart", "Command line", "Demo API"])
def test_readme_commands_use_the_project_environment(title):
    """After `make run` / `make test`, bare `python` is not the project's environment: commands say .venv/bin/python."""
    section = _readme_section(title)
    blocks = section.split("```")[1::2]
    commands = [line.strip() for block in blocks if block.startswith("bash") for line in block.splitlines()[1:] if line.strip()]
    for command in commands:
        assert not command.startswith(("python ", "python3 ", "pip ")), command
        if "-m ganlib" in command or "-m tests." in command:
            assert ".venv/bin/python -m" in command, command


def test_stride_flag_is_the_pixel_shuffle_path(work, capsys):
    weights = load_weights(work / "w")
    image = load_image(work / "a.png")
    assert main(["denoise", "a.png", "-o", "s2", "--weights", "w", "--stride", "2"]) == 0
    expected = to_numpy(denoise_image(weights, image, precision="auto", stride=2).pixels)
    assert np.array_equal(np.asarray(Image.open(work / "s2" / "a.png")), expected)
    assert not np.array_equal(expected, to_numpy(denoise_image(weights, image, precision="auto").pixels))
    with pytest.raises(SystemExit):
        main(["denoise", "a.png", "-o", "s5", "--weights", "w", "--stride", "5"])
    assert "--stride" in capsys.readouterr().err
