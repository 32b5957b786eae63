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
    info = benchmark.real_grid(str(setup["data"]), grid, str(setup["weights"]), ["ours", "ours-gan"], crop=32, limit=None, tile=512)
    assert [i["image"] for i in info] == ["im0.png", "im1.png"] and all(i["sigma"] >= 0 for i in info)
    with Image.open(grid) as im:
        assert im.size == (3 * 32, 2 * 32 + 18)  # noisy | ours | ours-gan, a header line
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
