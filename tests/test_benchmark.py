"""train.benchmark on two tiny synthetic photos with a tiny model: protocols, records, table, JSON,
plot, the real-photo grid, the memory check and one run in a fresh worker process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganlib.metrics import psnr
from ganlib.models import Generator, GeneratorConfig
from train import benchmark


def photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:40, 0:48] / 40.0
    for i in range(n):
        img = np.stack([np.sin(4 * x + i), np.cos(3 * y - i), x * y], -1) * 0.3 + 0.5
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    cfg = GeneratorConfig(widths=[8, 16], blocks=[1, 1])
    Generator(cfg).save_pretrained(root / "weights" / "fidelity")
    Generator(cfg).save_pretrained(root / "weights" / "gan")
    return {"root": root, "data": photos(root / "set-a"), "weights": root / "weights"}


def test_protocols() -> None:
    clean = torch.full((1, 3, 32, 32), 0.02)
    standard = benchmark.make_noisy(clean, 25, "standard", seed=0)
    realistic = benchmark.make_noisy(clean, 25, "realistic", seed=0)
    assert standard.min() < 0  # unclipped float noise
    assert torch.equal(standard, benchmark.make_noisy(clean, 25, "standard", seed=0))
    assert not torch.equal(standard, benchmark.make_noisy(clean, 25, "standard", seed=1))
    assert realistic.min() >= 0 and realistic.max() <= 1
    assert torch.allclose(realistic * 255, (realistic * 255).round(), atol=1e-4)
    assert (standard.std() * 255).item() == pytest.approx(25, rel=0.1)
    with pytest.raises(ValueError, match="standard or realistic"):
        benchmark.make_noisy(clean, 25, "poisson", seed=0)


def test_nlm_strengths_and_denoising() -> None:
    assert benchmark.nlm_strength(25.0) == tuple(float(v) for v in benchmark.NLM_H[25.0])
    lo, hi = benchmark.nlm_strength(15.0)[0], benchmark.nlm_strength(50.0)[0]
    assert lo < benchmark.nlm_strength(30.0)[0] < hi and benchmark.nlm_strength(100.0)[0] > hi
    y, x = np.mgrid[0:48, 0:48] / 48.0
    clean = torch.from_numpy(np.stack([x, y, x * y])).float()[None]
    noisy = benchmark.make_noisy(clean, 25, "standard", seed=0)
    out = benchmark.nlm_denoise(noisy, 25.0)
    assert out.shape == clean.shape
    assert psnr(out, clean) > psnr(noisy, clean) + 5


def test_parse_args_methods_and_sweep() -> None:
    args = benchmark.parse_args(["--data", "d", "--methods", "ours,nlm", "--realism-sweep", "0,0.5,1"])
    assert args.methods == ["ours", "nlm", "ours@0.5", "ours-gan"]
    assert benchmark.realism_of("ours@0.5") == 0.5 and benchmark.realism_of("nlm") is None
    assert benchmark.realism_of("ours-gan+x8") == 1.0 and benchmark.realism_of("nlm+x8") is None
    assert benchmark.parse_args(["--data", "d", "--methods", "ours+x8"]).methods == ["ours+x8"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--data", "d", "--methods", "ours,dncnn"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--methods", "ours"])  # nothing to do


def test_peer_limit_is_refused_where_it_would_be_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    """The Gaussian comparison (--data alone) runs every method on the same images: a peer limit there
    would be silently ignored, so it is refused with a pointer to --limit."""
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--data", "d", "--methods", "ours,cbm3d", "--peer-limit", "5"])
    assert "--peer-limit applies to --kinds, --gray and --real" in capsys.readouterr().err
    assert benchmark.parse_args(["--kinds", "--peer-limit", "5"]).peer_limit == 5
    assert benchmark.parse_args(["--gray", "g", "--peer-limit", "5"]).peer_limit == 5


def test_benchmark_table_json_and_plot(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "plot.png"
    rc = benchmark.main(["--data", str(setup["data"]), "--sigmas", "25", "--methods", "ours,nlm", "--realism-sweep", "0.5",
                         "--protocol", "both", "--weights", str(setup["weights"]), "--threads", "1", "--same-process",
                         "--output", str(out), "--plot", str(plot)])
    assert rc == 0
    result = json.loads(out.read_text())
    records = result["results"]
    assert {(r["method"], r["protocol"]) for r in records} == {(m, p) for m in ("ours", "nlm", "ours@0.5") for p in ("standard", "realistic")}
    for r in records:
        assert r["set"] == "set-a" and r["sigma"] == 25 and r["images"] == 2
        assert math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 and r["sec_per_mp"] > 0 and r["detail"] > 0
        assert r["peak_mb"] is None or r["peak_mb"] >= 0
        assert r["precision"] == (None if r["method"] == "nlm" else result["meta"]["precision"])
    assert result["meta"]["precision"] in ("float32", "bfloat16")
    nlm = {r["protocol"]: r for r in records if r["method"] == "nlm"}
    assert nlm["standard"]["psnr"] > 25  # it really denoises (noisy input is about 20 dB)
    assert nlm["standard"]["detail"] < 2  # the noisy input's is far higher
    assert result["meta"]["nlm_h"]["25"] == list(benchmark.nlm_strength(25.0))
    printed = capsys.readouterr().out
    assert "**set-a** (2 images, standard protocol)" in printed and "**set-a** (2 images, realistic protocol)" in printed
    assert "| nlm | " in printed and "| ours@0.5 | " in printed and "detail @25" in printed
    assert result["markdown"].strip() in printed
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.width > 300


def test_parallel_workers_keep_the_methods_order(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    rc = benchmark.main(["--data", str(setup["data"]), "--sigmas", "25", "--methods", "ours,nlm,ours-gan", "--limit", "1",
                         "--weights", str(setup["weights"]), "--threads", "1", "--jobs", "2", "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [r["method"] for r in result["results"]] == ["ours", "nlm", "ours-gan"]
    assert "unfinished" not in result and not out.with_name("results.json.part").exists()
    assert all(r["peak_mb"] is not None for r in result["results"])  # each in a worker of its own
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--data", "d", "--jobs", "0"])


def test_an_interrupted_run_keeps_the_finished_methods(setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = benchmark.run_method

    def interrupted_at_ours(method: str, *rest):
        if method == "ours":
            raise KeyboardInterrupt
        return real(method, *rest)

    monkeypatch.setattr(benchmark, "run_method", interrupted_at_ours)
    out = tmp_path / "results.json"
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(["--data", str(setup["data"]), "--sigmas", "25", "--methods", "nlm,ours", "--limit", "1",
                        "--weights", str(setup["weights"]), "--threads", "1", "--same-process", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert [r["method"] for r in saved["results"]] == ["nlm"] and saved["unfinished"] == ["ours"]
    assert saved["meta"]["command"].startswith("python -m train.benchmark")


def test_real_grid_and_memory_check(setup: dict[str, Path], tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    info = benchmark.real_grid(str(setup["data"]), grid, str(setup["weights"]), ["ours", "ours-gan", "ours-stride2"], crop=32,
                               limit=None, tile=512)
    assert [i["image"] for i in info] == ["im0.png", "im1.png"] and all(i["sigma"] >= 0 for i in info)
    with Image.open(grid) as im:
        assert im.size == (4 * 32, 2 * 32 + 18)  # noisy | ours | ours-gan | ours-stride2, a header line
        cells = np.asarray(im.convert("RGB"))[18:50].astype(int)
        assert np.abs(cells[:, 32:64] - cells[:, 96:128]).mean() > 0.5  # the pixel-shuffled cell is another result
    mem = benchmark.memory_check(str(setup["weights"]), tile=32, threads=1, width=96, height=64)
    assert mem["width"] == 96 and mem["sec_per_mp"] > 0
    assert mem["peak_rss_mb"] >= mem["rss_before_mb"] > 0


def test_method_runs_in_a_fresh_process(setup: dict[str, Path]) -> None:
    records = benchmark.in_worker(benchmark.run_method, "nlm", [str(setup["data"])], [15.0], ["realistic"], 1, None, 512, 1)
    assert len(records) == 1 and records[0]["images"] == 1 and records[0]["psnr"] > 25
    assert records[0]["peak_mb"] is not None  # /proc/self/clear_refs works on Linux


def _report_pid_and_wait(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_worker_does_not_outlive_a_killed_benchmark(tmp_path: Path) -> None:
    report = tmp_path / "worker.pid"
    code = ("import sys; from train import benchmark; from tests.test_benchmark import _report_pid_and_wait; "
            "benchmark.in_worker(_report_pid_and_wait, sys.argv[1])")
    parent = subprocess.Popen([sys.executable, "-c", code, str(report)], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.time() + 60
        while not report.exists() or not report.read_text():
            assert time.time() < deadline and parent.poll() is None, "the worker never started"
            time.sleep(0.2)
        worker = int(report.read_text())
        assert _alive(worker)
        parent.kill()  # SIGKILL: no chance to clean up
        parent.wait()
        deadline = time.time() + 10
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its benchmark process"
    finally:
        parent.kill()


def test_cbm3d_on_one_tiny_crop() -> None:
    pytest.importorskip("bm3d", reason="optional peer package bm3d not installed")
    y, x = np.mgrid[0:32, 0:32] / 32.0
    clean = torch.from_numpy(np.stack([x, y, x * y])).float()[None]
    noisy = benchmark.make_noisy(clean, 25, "standard", seed=0)
    out = benchmark.cbm3d_denoise(noisy, 25.0)
    assert out.shape == clean.shape and psnr(out, clean) > psnr(noisy, clean) + 5


def test_cards_get_one_fresh_benchmark_section(tmp_path: Path) -> None:
    def rec(method: str, sigma: float, value: float, protocol: str = "standard") -> dict:
        return {"set": "set-a", "protocol": protocol, "sigma": sigma, "method": method, "images": 2, "psnr": value,
                "ssim": 0.9, "detail": 0.8, "sec_per_mp": 1.0, "peak_mb": 1.0}

    results = tmp_path / "r.json"
    results.write_text(json.dumps({
        "meta": {"command": "python -m train.benchmark --data set-a", "machine": "test machine", "precision": "bfloat16"},
        "results": [rec("ours", 25, 31.5), rec("ours-gan", 25, 31.0), rec("cbm3d", 25, 30.5), rec("ours", 25, 99.0, "realistic")],
    }))
    for stage in ("fidelity", "gan"):
        (tmp_path / "w" / stage).mkdir(parents=True)
        (tmp_path / "w" / stage / "README.md").write_text("---\nlicense: mit\n---\n# card\n\n## Benchmark (old)\nstale numbers\n")
    for _ in range(2):  # idempotent: the section is replaced, not appended
        assert benchmark.main(["--cards", str(tmp_path / "w"), "--from", str(results)]) == 0
    fid = (tmp_path / "w" / "fidelity" / "README.md").read_text()
    gan = (tmp_path / "w" / "gan" / "README.md").read_text()
    assert fid.startswith("---\nlicense: mit\n---\n# card\n") and "stale" not in fid and fid.count("## Benchmark") == 1
    assert "| set-a (2) | **this model** | 31.50 / 0.9000 | 1 |" in fid and "| set-a (2) | cbm3d | 30.50" in fid
    assert "| set-a (2) | **this model** | 31.00 / 0.9000 | 1 |" in gan
    assert "99.00" not in fid  # realistic-protocol rows stay out of the card
    assert "`python -m train.benchmark --data set-a`" in fid and "(test machine, ours in bfloat16)" in fid
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--cards", str(tmp_path / "w")])  # --from missing


def test_auto_check_compares_the_estimates_with_the_truth(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from ganlib.models import EstimatorConfig, NoiseEstimator

    out = tmp_path / "auto.json"
    assert benchmark.main(["--data", str(setup["data"]), "--auto-check", "--weights", str(setup["weights"]), "--output", str(out)]) == 2  # no estimator/
    weights = tmp_path / "w"
    shutil.copytree(setup["weights"], weights)
    est = NoiseEstimator(EstimatorConfig(width=8))
    with torch.no_grad():
        est.out.weight.zero_()
        est.out.bias.fill_(float(np.log(12 / 255 + NoiseEstimator.eps)))  # always says 12
    est.save_pretrained(weights / "estimator")
    assert benchmark.main(["--data", str(setup["data"]), "--auto-check", "--weights", str(weights), "--output", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["auto_check"]}
    assert set(rows) == set(benchmark.AUTO_CASES) and all(r["images"] == 2 for r in rows.values())
    assert rows["clean"]["true"] == 0 and rows["gaussian 25"]["true"] == pytest.approx(25)
    assert all(r["learned"] == pytest.approx(12, abs=1e-3) for r in rows.values())
    assert rows["gaussian 25"]["err_learned"] == pytest.approx(13, abs=1e-3)
    assert 15 < rows["gaussian 25"]["wavelet"] < 35  # the wavelet estimate follows the noise
    assert "| gaussian 25 | 25.00 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--auto-check"])


# --- every noise kind, grayscale and real noise -------------------------------------------------

BUNDLED = Path(__file__).resolve().parent.parent / "checkpoints"


def test_parse_kinds_levels_and_errors() -> None:
    levels = benchmark.parse_kinds(["gaussian:15,50", "camera:30/4/75,30/4", "salt_pepper_whole:0.1", "poisson:10"])
    assert [(lv.kind, lv.noise, lv.label) for lv in levels] == [
        ("gaussian", "gaussian", "sigma 15"), ("gaussian", "gaussian", "sigma 50"),
        ("camera", "camera", "peak 30, read 4, JPEG 75"), ("camera", "camera", "peak 30, read 4, no JPEG"),
        ("salt_pepper_whole", "salt_pepper", "amount 0.1"), ("poisson", "poisson", "peak 10")]
    assert levels[2].params == {"peak": 30.0, "sigma": 4.0, "quality": 75} and levels[3].params == {"peak": 30.0, "sigma": 4.0}
    assert levels[4].params == {"amount": 0.1, "whole_pixel": True}
    assert benchmark.parse_kinds(["salt_pepper:0.05"])[0].params == {"amount": 0.05, "whole_pixel": False}
    for bad in ("blur:3", "gaussian", "gaussian:", "camera:30", "gaussian:abc", "salt_pepper:1.5", "camera:30/4/75/1", "poisson:0"):
        with pytest.raises(ValueError):
            benchmark.parse_kinds([bad])
    args = benchmark.parse_args(["--kinds"])  # no value: the default levels, on Kodak24
    assert {lv.kind for lv in args.levels} == set(benchmark.KIND_SPECS) and len(args.levels) == 2 * len(benchmark.KIND_SPECS)
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--kinds", "blur:3"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--real", "d", "--peer-limit", "-1"])


def test_anscombe_round_trip_is_unbiased() -> None:
    rng = np.random.default_rng(0)
    for lam in (1.0, 5.0, 50.0):
        counts = rng.poisson(lam, 200_000)
        # the exact unbiased inverse maps the mean of the transformed counts back to the mean count ...
        assert float(benchmark.inverse_anscombe(np.array(benchmark.anscombe(counts).mean()))) == pytest.approx(lam, rel=0.01)
    # ... and is not the algebraic inverse: (d / 2)^2 - 3/8 + about 1/4 for large counts
    assert float(benchmark.inverse_anscombe(benchmark.anscombe(np.array(400.0)))) == pytest.approx(400.25, abs=0.01)
    assert float(benchmark.inverse_anscombe(np.array(0.0))) == 0.0  # never negative


def test_switching_median_changes_only_extremes() -> None:
    y, x = np.mgrid[0:48, 0:48] / 48.0
    clean = torch.from_numpy(np.stack([x, y, x * y]) * 0.8 + 0.1).float()[None]
    clean = (clean * 255).round() / 255
    for whole in (False, True):
        noisy = benchmark.add_noise(clean, "salt_pepper", seed=0, amount=0.1, whole_pixel=whole)
        out = benchmark.switching_median(noisy)
        extreme = (noisy == 0) | (noisy == 1)
        assert torch.allclose(out[~extreme], noisy[~extreme], atol=1e-6)  # the other values are kept
        assert psnr(out, clean) > psnr(noisy, clean) + 10


@pytest.mark.skipif(not (BUNDLED / "fidelity").is_dir(), reason="the bundled weights are missing")
def test_kinds_mode_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("bm3d", reason="optional peer package bm3d not installed")
    data, out = photos(tmp_path / "kodak"), tmp_path / "kinds.json"
    rc = benchmark.main(["--kinds", "gaussian:25", "poisson:20", "camera:30/4/75", "salt_pepper:0.1", "salt_pepper_whole:0.1",
                         "--data", str(data), "--peer-limit", "1", "--threads", "1", "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    records = {r["kind"]: r for r in result["kinds"]}
    assert list(records) == ["gaussian", "poisson", "camera", "salt_pepper", "salt_pepper_whole"]
    for kind, r in records.items():
        assert r["images"] == 2 and r["set"] == "kodak"
        for name in ("noisy", "ours_auto", "ours_informed", *benchmark.KIND_PEERS[kind]):
            assert math.isfinite(r[name]["psnr"]) and 0 < r[name]["ssim"] <= 1 and len(r[name]["psnr_per_image"]) == r[name]["images"]
        assert r["ours_auto"]["seconds_per_image"] > 0 and len(r["ours_auto"]["sigma_per_image"]) == 2
    assert records["gaussian"]["ours_informed"]["psnr"] > records["gaussian"]["noisy"]["psnr"] + 3
    assert records["gaussian"]["nlm_oracle"]["psnr"] > records["gaussian"]["noisy"]["psnr"]
    assert records["camera"]["nlm_oracle"]["h_per_image"][0] > 0
    for kind in ("salt_pepper", "salt_pepper_whole"):
        assert records[kind]["params"]["whole_pixel"] == (kind == "salt_pepper_whole")
        assert records[kind]["switching_median"]["psnr"] > records[kind]["noisy"]["psnr"] + 5
    cbm3d = records["poisson"]["cbm3d_anscombe"]
    assert cbm3d["images"] == 1 and records["poisson"]["nlm_oracle"]["images"] == 2  # --peer-limit: the slow peer only
    assert cbm3d["psnr"] > records["poisson"]["noisy"]["psnr_per_image"][0] + 3
    assert set(cbm3d["ours_on_same_images"]) == {"ours_auto", "ours_informed"}
    assert result["meta"]["peer_limit"] == 1 and "oracle" in result["meta"]["oracle_note"]
    printed = capsys.readouterr().out
    assert "**whole-pixel salt & pepper** (kodak, 2 images" in printed and "| peak 30, read 4, JPEG 75 |" in printed
    assert "(1 image; ours auto on them" in printed and "NLM is an oracle" in printed and "seconds per image: ours automatic" in printed
    assert result["markdown_kinds"] in printed


def gray_photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:40, 0:48] / 40.0
    for i in range(n):
        Image.fromarray(((np.sin(4 * x + i) * np.cos(3 * y) * 0.35 + 0.5) * 255).round().astype(np.uint8), mode="L").save(folder / f"g{i}.png")
    return folder


def test_gray_mode_end_to_end(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("bm3d", reason="optional peer package bm3d not installed")
    out = tmp_path / "gray.json"
    rc = benchmark.main(["--gray", str(gray_photos(tmp_path / "bsd-gray")), "--sigmas", "25", "--protocol", "both",
                         "--weights", str(setup["weights"]), "--peer-limit", "1", "--threads", "1", "--realism-sweep", "0,1",
                         "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [(r["protocol"], r["sigma"]) for r in result["gray"]] == [("standard", 25), ("realistic", 25)]
    for r in result["gray"]:  # the realism sweep, informed, with its detail ratio
        assert "ours@0" not in r and r["ours@1"]["images"] == 2 and r["ours@1"]["psnr"] != r["ours_informed"]["psnr"]
        assert all(d > 0 for d in r["ours@1"]["detail_per_image"] + r["ours_informed"]["detail_per_image"])
    for r in result["gray"]:
        assert r["images"] == 2 and r["noisy"]["images"] == r["ours_informed"]["images"] == r["ours_auto"]["images"] == 2
        assert r["bm3d"]["images"] == 1 and r["bm3d"]["psnr"] > r["noisy"]["psnr_per_image"][0] + 5
        assert math.isfinite(r["ours_informed"]["psnr"]) and 0 < r["ours_auto"]["ssim"] <= 1
        assert r["ours_auto"]["sigma_per_image"][0] == pytest.approx(25, rel=0.3)  # wavelet estimate (no estimator/)
    assert result["gray"][0]["noisy"]["psnr"] == pytest.approx(20.2, abs=1)  # sigma 25 on one channel
    printed = capsys.readouterr().out
    assert "**bsd-gray** (gray, 2 images, standard protocol" in printed and "realistic protocol" in printed
    assert "| 25 | " in printed and "BM3D (gray, true sigma)" in printed and result["markdown_gray"] in printed
    assert "ours@1 (informed; detail)" in printed


def test_real_mode_end_to_end(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("bm3d", reason="optional peer package bm3d not installed")
    folder = tmp_path / "real"
    photos(folder)
    rng = np.random.default_rng(0)
    for i in range(2):
        clean = np.asarray(Image.open(folder / f"im{i}.png"), dtype=np.float64)
        (folder / f"im{i}.png").rename(folder / f"cam{i}_mean.png")
        noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).round().astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"cam{i}_real.png")
    Image.fromarray(noisy).save(folder / "orphan_real.png")  # no ground truth: left out
    out = tmp_path / "real.json"
    rc = benchmark.main(["--real", str(folder), "--realism-sweep", "0,0.5", "--weights", str(setup["weights"]),
                         "--peer-limit", "1", "--threads", "1", "--real-ensemble", "--output", str(out)])
    assert rc == 0
    real = json.loads(out.read_text())["real"]
    assert real["images"] == ["cam0", "cam1"] and real["set"] == "real"
    assert set(real) >= {"noisy", "ours_auto", "ours_stride2", "nlm_oracle", "cbm3d", "ours@0.5"} and "ours@0" not in real
    assert real["noisy"]["images"] == real["ours_auto"]["images"] == real["nlm_oracle"]["images"] == real["ours@0.5"]["images"] == 2
    assert real["ours_stride2"]["images"] == 2 and real["ours_stride2"]["psnr"] != real["ours_auto"]["psnr"]  # another path
    assert real["ours_stride2_x8"]["images"] == 2 and real["ours_stride2_x8"]["psnr"] != real["ours_stride2"]["psnr"]  # the ensemble ran
    # the realism sweep runs at the camera-photo setting too, and ours reports its detail ratio everywhere
    assert "ours_stride2@0" not in real and real["ours_stride2@0.5"]["images"] == 2
    assert real["ours_stride2@0.5"]["psnr"] not in (real["ours_stride2"]["psnr"], real["ours@0.5"]["psnr"])
    for key in ("ours_auto", "ours_stride2", "ours@0.5", "ours_stride2@0.5"):
        assert len(real[key]["detail_per_image"]) == 2 and all(d > 0 for d in real[key]["detail_per_image"])
    assert real["nlm_oracle"]["psnr"] > real["noisy"]["psnr"] + 2 and all(h in benchmark.NLM_REAL_H for h in real["nlm_oracle"]["h_per_image"])
    assert real["cbm3d"]["images"] == 1 and real["cbm3d"]["sigma_per_image"][0] == pytest.approx(10, rel=0.3)
    assert real["cbm3d"]["psnr"] > real["noisy"]["psnr_per_image"][0] + 2 and "ours_on_same_images" in real["cbm3d"]
    printed = capsys.readouterr().out
    assert "**real** (2 real noisy photos against the mean image)" in printed and "| cam1 | " in printed and "| **mean** | " in printed
    assert "ours@0.5" in printed and "NLM is an oracle" in printed and "ours, stride 2 (sigma)" in printed
    assert "ours, stride 2 + x8 ensemble" in printed and "ours stride 2 + x8" in printed
    sweep_rows = printed.split("**real, realism sweep**")[1].split("\n\n")[1].splitlines()
    assert sweep_rows[0] == "| realism | stride 1 | stride 2 |" and [r.split(" | ")[0] for r in sweep_rows[2:]] == ["| 0", "| 0.5"]
    assert "not run" not in "\n".join(sweep_rows) and sweep_rows[3].count("(") == 2  # PSNR / SSIM (detail) in both columns
    with pytest.raises(SystemExit, match="no NAME_real"):
        benchmark.real_pairs(setup["data"], None)


def test_realism_crops_and_brightness_check(setup: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    photos_ = sorted(setup["data"].glob("*.png"))[:2]
    out = tmp_path / "crops.png"
    rows = benchmark.realism_crops(photos_, (photos_[0], photos_[1]), out, str(setup["weights"]), [0.0, 1.0], side=16)
    assert [r["case"].split(": ")[-1] for r in rows[:2]] == ["gaussian 25", "camera 30/4/JPEG 75"] and rows[2]["case"].endswith("(real)")
    assert rows[3]["case"].endswith("(real, camera-photo mode: stride 2)") and rows[3]["psnr@0"] != rows[2]["psnr@0"]  # the other path
    assert all({"psnr@0", "psnr@1", "detail@0", "detail@1"} <= set(r) for r in rows)
    assert Image.open(out).size == (16 * 2 * 4, 18 + 4 * (18 + 32 + 18 + 16))  # 4 columns at 200%, 4 cases
    bright = benchmark.brightness_check(str(setup["weights"]), strengths=(0, 50))
    assert [r["image"] for r in bright] == ["flat gray 128", "colour ramp", "astronaut (clean)"]
    assert all(r["0"] >= 0 and r["50"] >= 0 for r in bright)


def test_piqe_column(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pyiqa", reason="--piqe needs the optional package pyiqa (installed by make test)")
    out = tmp_path / "results.json"
    rc = benchmark.main(["--data", str(setup["data"]), "--sigmas", "25", "--methods", "ours", "--piqe", "--weights", str(setup["weights"]),
                         "--threads", "1", "--same-process", "--output", str(out)])
    assert rc == 0
    (record,) = json.loads(out.read_text())["results"]
    assert 0 <= record["piqe"] <= 100 and 0 <= record["piqe_clean"] <= 100 and record["piqe"] != record["piqe_clean"]
    assert "PIQE @25 (clean " in capsys.readouterr().out
