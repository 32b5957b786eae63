"""Benchmark the denoisers side by side: ours (fidelity, GAN, realism sweep), CBM3D and OpenCV NLM.

    python -m train.benchmark --data ../shared/data/test-CBSD68 ../shared/data/test-Kodak24 \\
        --sigmas 15,25,50 --methods ours,ours-gan,cbm3d,nlm --output results.json --plot plot.png

For every folder, protocol, noise level and method: mean PSNR, SSIM and detail ratio (mean gradient
magnitude of the result over the clean image's: 1 = as detailed, below 1 = smoothed; `ganlib.metrics`), seconds
per megapixel of the denoising call alone, and the peak resident memory that denoising one image
added to its process. Each method runs in a fresh worker process, so that the peak memory is that
method's own (read from /proc/self/status VmHWM, reset before every image through
/proc/self/clear_refs), and no method inherits another's caches or threads. `--jobs N` measures N
methods at once (e.g. `--jobs 2 --threads 1` on two cores: CBM3D on one, the other methods on the
other), and `--output` is rewritten as each method finishes, so a long run keeps what it measured.

Protocols (noise seed = image index, 0, 1, 2, ... in sorted file order):
- standard:  additive white Gaussian noise in floating point, no clipping (the literature's protocol)
- realistic: the same noise, then clipped and rounded to 8 bits (an uploaded noisy photo)
OpenCV NLM only takes 8-bit input: it always gets the clipped and rounded noisy image.
Ours runs at --precision (default auto, as the CLI and the demo: bfloat16 where the CPU runs it natively).

Other modes: --cards WEIGHTS_DIR --from RESULTS.json... (write the results into the model cards),
--grid-real DIR --grid-out PNG (a visual grid on real noisy photos at the estimated
noise level), --memory-check (a synthetic 6000x4000 photo through our tiled inference), --tune-nlm
(choose NLM's filter strengths on training images; the results are the NLM_H constants below),
--auto-check (the automatic strength: the noise level estimated by the learned estimator and by the
wavelet method, against the true level, and our PSNR at each, on photos with upload-like noise).
CBM3D comes from the optional `bm3d` package (non-commercial license): benchmark-only.

Every noise kind, grayscale photos and real camera noise (each in this process; quality first, and
seconds per image for each method; `--peer-limit N` runs the slow peers, CBM3D and BM3D at about 40 s
per Kodak image, on the first N images only, and each number says how many images it is over):

    python -m train.benchmark --kinds gaussian:15,50 poisson:10,50 speckle:0.1,0.3 camera:30/4/75,30/4 \
        salt_pepper:0.05,0.2 salt_pepper_whole:0.05,0.2 --data ../shared/data/test-Kodak24 --output kinds.json
    python -m train.benchmark --gray ../shared/data/test-BSD68-gray --sigmas 15,25,50 --protocol standard --output gray.json
    python -m train.benchmark --real ../shared/data/real-CC15 --realism-sweep 0,0.5,1 --output real.json

- --kinds KIND:LEVEL,LEVEL ... (no value: the levels above): gaussian sigma, poisson peak, speckle
  sigma, camera PEAK/READ_SIGMA[/JPEG_QUALITY], salt_pepper amount (per channel), salt_pepper_whole
  amount (whole-pixel impulses). Noise as the demo adds it (clipped, 8-bit, seed = image index). Per
  level: noisy; ours automatic (`restore`, sigma None); ours informed (the exact noise map,
  `informed_noise_map`; impulses removed first for salt & pepper); the kind's classical peers: a plain
  switching median (OpenCV 3x3 median where a value is 0 or 255) for impulses, OpenCV NLM with its best
  h per image (an oracle: h picked with the clean image) for gaussian, poisson, speckle and camera, and
  CBM3D with the Anscombe transform (exact unbiased inverse, Makitalo & Foi 2011) for poisson.
- --gray FOLDER: 1-channel photos at --sigmas, --protocol: ours informed (the true sigma), ours
  automatic, and BM3D (gray) at the true sigma.
- --real FOLDER: NAME_real / NAME_mean pairs (noisy photo, mean of many shots): ours automatic, NLM
  with its best h per image (an oracle), CBM3D at scikit-image's wavelet estimate of sigma, and ours at
  each --realism-sweep value; per image and mean.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ganlib.hub import load_weights
from ganlib.images import load_image, to_numpy, to_pil, to_tensor
from ganlib.inference import PRECISIONS, denoise, resolve_precision
from ganlib.noise_level import estimate_noise_map, estimate_sigma
from ganlib.metrics import detail_ratio, psnr, ssim
from ganlib.noise import add_noise

log = logging.getLogger("train.benchmark")

# OpenCV fastNlMeansDenoisingColored filter strengths h (luminance) = hColor (colour) per Gaussian
# sigma (0-255), chosen on TRAINING images, never on a test set, with
#   python -m train.benchmark --tune-nlm ../shared/data/train-CBSD432 --sigmas 15,25,50 --limit 3
# (the 3 first training images in sorted order, centre 192x192 crops, standard-protocol noise,
# h = ratio * sigma for each ratio of NLM_GRID, best mean PSNR; templateWindowSize 7,
# searchWindowSize 21). Measured: sigma 15: h 7.5 -> 29.87 dB (9 -> 29.72); sigma 25: h 12.5 ->
# 26.87 dB (15 -> 26.84); sigma 50: h 25 -> 23.83 dB (30 -> 23.63). Other sigmas: the h/sigma ratio
# is interpolated between these (0.5 everywhere so far).
NLM_H: dict[float, tuple[float, float]] = {
    15.0: (7.5, 7.5),
    25.0: (12.5, 12.5),
    50.0: (25.0, 25.0),
}
NLM_GRID = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # candidate h / sigma ratios (hColor = h)

PEERS = ("cbm3d", "nlm")
PROTOCOLS = ("standard", "realistic")


# --- methods -----------------------------------------------------------------------------------


def nlm_strength(sigma: float) -> tuple[float, float]:
    """(h, hColor) for OpenCV NLM at `sigma`: the tuned h/sigma ratios of NLM_H, interpolated."""
    keys = sorted(NLM_H)
    h = float(sigma * np.interp(sigma, keys, [NLM_H[k][0] / k for k in keys]))
    hc = float(sigma * np.interp(sigma, keys, [NLM_H[k][1] / k for k in keys]))
    return h, hc


def nlm_denoise(noisy: torch.Tensor, sigma: float, h: float | None = None, h_color: float | None = None) -> torch.Tensor:
    import cv2

    if h is None:
        h, h_color = nlm_strength(sigma)
    arr = to_numpy(noisy.clamp(0, 1))  # uint8 HxWx3 (NLM takes 8-bit input only)
    out = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(arr), None, h, h_color, 7, 21)
    return to_tensor(out)


def _bm3d():
    try:
        import bm3d
    except ImportError as err:
        raise SystemExit(
            "method cbm3d needs the optional `bm3d` package (non-commercial license, benchmark only): "
            "pip install -r requirements-dev.txt, or leave cbm3d out of --methods"
        ) from err
    return bm3d


def cbm3d_denoise(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    bm3d = _bm3d()
    arr = noisy[0].permute(1, 2, 0).double().numpy()
    out = bm3d.bm3d_rgb(arr, sigma_psd=sigma / 255.0)
    return torch.from_numpy(np.clip(out, 0, 1)).float().permute(2, 0, 1)[None].contiguous()


def realism_of(method: str) -> float | None:
    """ours -> 0, ours-gan -> 1, ours@0.25 -> 0.25 (a '+x8' suffix, x8 self-ensemble, keeps it); None for the peers."""
    method = method.removesuffix("+x8")
    if method == "ours":
        return 0.0
    if method == "ours-gan":
        return 1.0
    if method.startswith("ours@"):
        return float(method[5:])
    return None


def make_method(method: str, weights_source: str | None, tile: int, precision: str = "auto"):
    """A function (noisy (1,C,H,W), sigma) -> denoised, built inside the worker process."""
    realism = realism_of(method)
    if realism is not None:
        from ganlib.hub import load_weights

        from ganlib.images import ImageData
        from ganlib.inference import restore

        weights = load_weights(weights_source)
        weights.generator(realism)  # fails here, in the worker's first lines, when the GAN weights are missing
        ensemble = method.endswith("+x8")
        return lambda noisy, sigma: restore(weights, ImageData(pixels=noisy), sigma=sigma, impulses=False, realism=realism, tile=tile,
                                            precision=precision, ensemble=ensemble).image.pixels
    if method == "cbm3d":
        _bm3d()
        return cbm3d_denoise
    if method == "nlm":
        return nlm_denoise
    raise ValueError(f"unknown method {method!r}: use ours, ours-gan, ours@REALISM, cbm3d or nlm")


# --- memory ------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset VmHWM (the peak resident set) to the current RSS; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


# --- data --------------------------------------------------------------------------------------


def list_set(folder: str | Path, limit: int | None) -> list[Path]:
    from .data import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"benchmark data folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return paths[:limit] if limit else paths


def load_rgb(path: Path) -> torch.Tensor:
    pixels = load_image(path).pixels
    return pixels.expand(-1, 3, -1, -1).contiguous() if pixels.shape[1] == 1 else pixels


def make_noisy(clean: torch.Tensor, sigma: float, protocol: str, seed: int) -> torch.Tensor:
    if protocol == "standard":
        return add_noise(clean, "gaussian", seed=seed, clip=False, sigma=sigma)
    if protocol == "realistic":
        return add_noise(clean, "gaussian", seed=seed, clip=True, quantize=True, sigma=sigma)
    raise ValueError(f"protocol must be standard or realistic, not {protocol!r}")


# --- the worker ----------------------------------------------------------------------------------


def run_method(method: str, sets: list[str], sigmas: list[float], protocols: list[str], limit: int | None,
               weights: str | None, tile: int, threads: int, precision: str = "auto", piqe: bool = False) -> list[dict]:
    """All measurements of one method; meant to run in a fresh process (see `measure`). piqe: also the
    no-reference PIQE score of each result and of each clean image (`train.naturalness`; lower = better)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
        import cv2

        cv2.setNumThreads(threads)
    fn = make_method(method, weights, tile, precision)
    if piqe:
        from .naturalness import naturalness
    warm = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fn(warm, 25.0)  # first-call costs (allocators, kernels) are not the method's speed
    can_reset = reset_peak()
    records = []
    for folder in sets:
        paths = list_set(folder, limit)
        cells = {(p, s): {"psnr": [], "ssim": [], "detail": [], "piqe": [], "seconds": 0.0, "pixels": 0, "peak": 0.0}
                 for p in protocols for s in sigmas}
        clean_piqe = []
        bar = tqdm(total=len(paths) * len(cells), desc=f"{method} on {Path(folder).name}", dynamic_ncols=True, leave=False)
        for i, path in enumerate(paths):
            clean = load_rgb(path)
            if piqe:
                clean_piqe.append(naturalness(clean))
            for (protocol, sigma), cell in cells.items():
                noisy = make_noisy(clean, sigma, protocol, seed=i)
                base = rss_mb()
                reset_peak()
                t = time.perf_counter()
                out = fn(noisy, sigma)
                cell["seconds"] += time.perf_counter() - t
                top = peak_mb()
                if can_reset and base is not None and top is not None:
                    cell["peak"] = max(cell["peak"], top - base)
                cell["pixels"] += clean.shape[-1] * clean.shape[-2]
                cell["psnr"].append(psnr(out, clean))
                cell["ssim"].append(ssim(out, clean))
                cell["detail"].append(detail_ratio(out, clean))
                if piqe:
                    cell["piqe"].append(naturalness(out))
                bar.update(1)
        bar.close()
        for (protocol, sigma), cell in cells.items():
            records.append({
                "set": Path(folder).name,
                "protocol": protocol,
                "sigma": sigma,
                "method": method,
                "precision": resolve_precision(precision) if realism_of(method) is not None else None,
                "images": len(paths),
                "psnr": float(np.mean(cell["psnr"])),
                "ssim": float(np.mean(cell["ssim"])),
                "detail": float(np.mean(cell["detail"])),
                "sec_per_mp": cell["seconds"] / (cell["pixels"] / 1e6),
                "peak_mb": round(cell["peak"], 1) if can_reset else None,
                **({"piqe": float(np.mean(cell["piqe"])), "piqe_clean": float(np.mean(clean_piqe))} if piqe else {}),
            })
    return records


def _die_with_parent() -> None:
    """Worker initializer: on Linux, have the kernel stop this worker when the benchmark process dies
    (killed, not only Ctrl-C), so that no orphan keeps a core busy. Elsewhere: nothing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_pool(jobs: int = 1) -> concurrent.futures.ProcessPoolExecutor:
    """Up to `jobs` spawned workers, each used for one task only (a fresh process per method: its own
    peak memory, no inherited caches or threads), stopped with the benchmark process."""
    ctx = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_die_with_parent, max_tasks_per_child=1)


def in_worker(fn, *args):
    """Run fn(*args) in a fresh spawned process and return its result."""
    with worker_pool() as pool:
        return pool.submit(fn, *args).result()


def run_methods(args: argparse.Namespace, protocols: list[str], done) -> dict[str, list[dict]]:
    """Records of every method in --methods, `args.jobs` methods at a time, each in a fresh worker
    (in this process with --same-process). `done(records_by_method)` is called after each method
    finishes, so that a long run keeps what it has measured. A method that cannot run on these
    weights (e.g. ours-gan with fidelity-only weights) is left out with a warning."""
    def params(method: str) -> tuple:
        return (method, args.data, args.sigmas, protocols, args.limit, args.weights, args.tile, args.threads, args.precision, args.piqe)

    finished: dict[str, list[dict]] = {}

    def collect(method: str, get) -> None:
        try:
            finished[method] = get()
        except ValueError as err:
            log.warning("leaving out %s: %s", method, err)
            return
        log.info("%s done (%d of %d methods)", method, len(finished), len(args.methods))
        done(finished)

    if args.same_process:
        for m in args.methods:
            collect(m, lambda m=m: run_method(*params(m)))
        return finished
    # The slowest peer first, so that the other workers go through the fast methods beside it.
    order = sorted(args.methods, key=lambda m: m != "cbm3d")
    pool = worker_pool(args.jobs)
    try:
        futures = {pool.submit(run_method, *params(m)): m for m in order}
        for future in concurrent.futures.as_completed(futures):
            collect(futures[future], future.result)
    finally:  # on an error, do not wait for the other methods (their workers stop when this process ends)
        pool.shutdown(wait=False, cancel_futures=True)
    return finished


def write_json(path: Path, data: dict) -> None:
    """Write `data` to `path` atomically (a finished file or the previous one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def memory_check(weights: str | None, tile: int, threads: int, precision: str = "auto", width: int = 6000, height: int = 4000) -> dict:
    """Denoise a synthetic width x height photo with tiling: time, and the peak resident memory of the
    whole process while denoising (the photo itself, 288 MB at 24 MP, is in `rss_before_mb`)."""
    if threads:
        torch.set_num_threads(threads)
    from ganlib.hub import load_weights

    model = load_weights(weights).generator(0.0).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.interpolate(torch.rand(1, 3, height // 16, width // 16, generator=g), size=(height, width), mode="bilinear")
    noisy = add_noise(clean, "gaussian", seed=0, clip=True, quantize=True, sigma=25.0)
    del clean
    # The peak is denoising's: making the test photo (its noise temporaries) is not part of it.
    base = rss_mb()
    reset_peak()
    bar = tqdm(desc=f"{width}x{height} tiled", unit="tile", dynamic_ncols=True, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    t = time.perf_counter()
    out = denoise(model, noisy, 25.0, tile=tile, progress=progress, precision=precision)
    seconds = time.perf_counter() - t
    bar.close()
    assert out.shape == noisy.shape
    return {"width": width, "height": height, "tile": tile, "precision": resolve_precision(precision), "seconds": seconds, "sec_per_mp": seconds / (width * height / 1e6),
            "rss_before_mb": base, "peak_rss_mb": peak_mb(), "peak_added_mb": peak_mb() - base if base else None}


# --- reports -----------------------------------------------------------------------------------


def _quality_cells(cells: dict[float, dict], sigmas: list[float]) -> str:
    """Table cells "PSNR / SSIM" of one method's records (keyed by sigma), empty where not measured."""
    return " | ".join(f"{cells[s]['psnr']:.2f} / {cells[s]['ssim']:.4f}" if s in cells else "" for s in sigmas)


def _speed(cells: dict[float, dict]) -> float:
    """Mean seconds per megapixel over one method's records."""
    return float(np.mean([c["sec_per_mp"] for c in cells.values()]))


def markdown(records: list[dict]) -> str:
    """One table per (set, protocol): a row per method, PSNR/SSIM per sigma, the detail ratio at the
    middle sigma, speed and memory."""
    lines = []
    keys = sorted({(r["set"], r["protocol"]) for r in records}, key=lambda k: (k[0], PROTOCOLS.index(k[1])))
    for set_name, protocol in keys:
        rows = [r for r in records if r["set"] == set_name and r["protocol"] == protocol]
        sigmas = sorted({r["sigma"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        n = rows[0]["images"]
        mid = sigmas[len(sigmas) // 2]
        lines += [f"**{set_name}** ({n} images, {protocol} protocol): PSNR dB / SSIM", ""]
        piqe = mid in {r["sigma"] for r in rows if "piqe" in r}
        clean = next((r["piqe_clean"] for r in rows if "piqe_clean" in r), None)
        lines.append("| method | " + " | ".join(f"sigma {s:g}" for s in sigmas) + f" | detail @{mid:g} | "
                     + (f"PIQE @{mid:g} (clean {clean:.1f}) | " if piqe else "") + "s/MP | peak MB |")
        lines.append("|---|" + "---|" * len(sigmas) + "---|---|---|" + ("---|" if piqe else ""))
        for m in methods:
            cells = {r["sigma"]: r for r in rows if r["method"] == m}
            peaks = [c["peak_mb"] for c in cells.values() if c["peak_mb"] is not None]
            peak = f"{max(peaks):.0f}" if peaks else "n/a"
            detail = f"{cells[mid]['detail']:.3f}" if mid in cells and "detail" in cells[mid] else "n/a"
            score = (f"{cells[mid]['piqe']:.1f} | " if "piqe" in cells.get(mid, {}) else "n/a | ") if piqe else ""
            lines.append(f"| {m} | {_quality_cells(cells, sigmas)} | {detail} | {score}{_speed(cells):.3g} | {peak} |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: Path, sigma: float) -> None:
    """PSNR against seconds per megapixel (log x), one point per method: mean over the sets at
    `sigma`, standard protocol when it was run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocol = "standard" if any(r["protocol"] == "standard" for r in records) else "realistic"
    rows = [r for r in records if r["protocol"] == protocol and r["sigma"] == sigma]
    if not rows:
        raise SystemExit(f"--plot: no results at sigma {sigma:g}")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        x, y = np.mean([r["sec_per_mp"] for r in mine]), np.mean([r["psnr"] for r in mine])
        if m.startswith("ours@"):  # realism sweep: small grey points between ours and ours-gan, unlabelled
            ax.scatter([x], [y], s=12, color="grey", zorder=1)
            continue
        ax.scatter([x], [y], s=40, zorder=2)
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, -12 if m == "ours-gan" else 4))
    ax.set_xscale("log")
    ax.set_xlabel("seconds per megapixel (log scale, this machine)")
    ax.set_ylabel("PSNR (dB)")
    sets = ", ".join(sorted({r["set"] for r in rows}))
    ax.set_title(f"sigma {sigma:g}, {protocol} protocol, mean over {sets}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


CARD_SECTION = "## Benchmark"


def card_section(method: str, results: list[dict]) -> str:
    """The model card's benchmark section: for each results file, the standard-protocol rows of
    `method` beside the peers measured in the same run, and the command that measured them."""
    out = [(f"{CARD_SECTION} (`python -m train.benchmark`, standard protocol: AWGN in floating point, "
            "seed = image index, no clipping)"), ""]
    for result in results:
        rows = [r for r in result["results"] if r["protocol"] == "standard" and (r["method"] == method or r["method"] in PEERS)]
        if not any(r["method"] == method for r in rows):
            continue
        sigmas = sorted({r["sigma"] for r in rows})
        precision = f", ours in {result['meta']['precision']}" if result["meta"].get("precision") else ""
        out += [f"`{result['meta']['command']}`", f"({result['meta']['machine']}{precision}). PSNR dB / SSIM:", ""]
        out.append("| set | method | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " | s/MP |")
        out.append("|---|---|" + "---|" * len(sigmas) + "---|")
        for set_name in dict.fromkeys(r["set"] for r in rows):
            for m in dict.fromkeys(r["method"] for r in rows if r["set"] == set_name):
                cells = {r["sigma"]: r for r in rows if r["set"] == set_name and r["method"] == m}
                n = next(iter(cells.values()))["images"]
                name = "**this model**" if m == method else m
                out.append(f"| {set_name} ({n}) | {name} | {_quality_cells(cells, sigmas)} | {_speed(cells):.3g} |")
        out.append("")
    return "\n".join(out)


def write_cards(weights_dir: Path, files: list[Path]) -> list[Path]:
    """Replace (or add) the benchmark section at the end of each stage's model card."""
    results = [json.loads(f.read_text()) for f in files]
    written = []
    for stage, method in (("fidelity", "ours"), ("gan", "ours-gan")):
        card = weights_dir / stage / "README.md"
        if not card.is_file():
            continue
        text = card.read_text()
        head = text.split("\n" + CARD_SECTION, 1)[0].rstrip("\n")
        card.write_text(head + "\n\n" + card_section(method, results))
        written.append(card)
    if not written:
        raise SystemExit(f"--cards: no fidelity/README.md or gan/README.md under {weights_dir}")
    return written


def real_grid(folder: str, out: Path, weights: str | None, methods: list[str], crop: int, limit: int | None, tile: int,
              precision: str = "auto") -> list[dict]:
    """Rows of noisy | each method, on centre crops of real noisy photos, at the noise level
    estimated on the whole photo (as the demo's automatic strength does). Returns the estimated sigmas."""
    from PIL import Image, ImageDraw

    from ganlib.hub import load_weights

    loaded = load_weights(weights)
    estimator = loaded.estimator  # the demo's automatic strength (wavelet MAD if none)
    fns = {}
    for m in methods:
        if m == "ours-stride2":  # the camera-photo path: each pixel-shuffled sub-image of the crop estimated on its own
            fns[m] = lambda noisy, _: ours(loaded, noisy, impulses=False, precision=precision, stride=2)[0].image.pixels
            continue
        try:
            fns[m] = make_method(m, weights, tile, precision)
        except (SystemExit, ValueError) as err:
            log.warning("grid: leaving out %s (%s)", m, err)
    rows, info = [], []
    for path in tqdm(list_set(folder, limit), desc="real grid", dynamic_ncols=True):
        image = load_rgb(path)
        if estimator is not None:  # ours gets the estimated map, as the demo; peers its mean
            smap, sigma = estimate_noise_map(image, estimator)
        else:
            sigma = estimate_sigma(image)
            smap = torch.full((1, 1, *image.shape[-2:]), sigma)
        h, w = image.shape[-2:]
        side = min(crop, h, w)
        y, x = (h - side) // 2, (w - side) // 2
        noisy = image[..., y : y + side, x : x + side].contiguous()
        local = smap[..., y : y + side, x : x + side].contiguous()
        tiles = [noisy] + [fn(noisy, local if realism_of(m) is not None else sigma) for m, fn in fns.items()]
        rows.append(torch.cat([torch.nn.functional.interpolate(t, size=(crop, crop), mode="bilinear") if side != crop else t for t in tiles], dim=-1))
        info.append({"image": path.name, "sigma": round(sigma, 2)})
    grid = to_pil(torch.cat(rows, dim=-2))
    header = Image.new("RGB", (grid.width, 18), "white")
    draw = ImageDraw.Draw(header)
    for j, name in enumerate(["noisy", *fns]):
        draw.text((j * crop + 4, 3), name, fill="black")
    canvas = Image.new("RGB", (grid.width, grid.height + 18), "white")
    canvas.paste(header, (0, 0))
    canvas.paste(grid, (0, 18))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return info


def realism_crops(clean_photos: list[Path], real_pair: tuple[Path, Path] | None, out: Path, weights: str | None,
                  realisms: list[float], side: int = 96, precision: str = "auto") -> list[dict]:
    """A figure of textured crops: one row per case, clean | noisy | ours at each realism, each cell at
    100% and 200% (nearest neighbour). Cases: gaussian 25 on the first clean photo, camera noise
    (peak 30, read 4, JPEG 75) on the second, and a real noisy photo with its ground truth, at the
    default stride 1 and in the camera-photo mode (stride 2). Ours denoises the whole image (informed
    for the synthetic noise, automatic for the real photo) and the crop is the most textured window of
    the clean image. Returns per-row PSNR and detail ratio."""
    from PIL import Image, ImageDraw

    from ganlib.compare import most_textured_window
    from ganlib.images import ImageData
    from ganlib.inference import restore
    from ganlib.noise import informed_noise_map

    weights = load_weights(weights)
    cases = []
    specs = [("gaussian 25", "gaussian", {"sigma": 25.0}), ("camera 30/4/JPEG 75", "camera", {"peak": 30.0, "sigma": 4.0, "quality": 75})]
    for path, (label, kind, params) in zip(clean_photos, specs):
        clean = load_rgb(path)
        noisy = add_noise(clean, kind, seed=0, quantize=True, **params)
        cases.append((f"{path.stem}: {label}", clean, noisy, informed_noise_map(clean, kind, **params), 1))
    if real_pair is not None:
        clean, noisy = load_rgb(real_pair[1]), load_rgb(real_pair[0])
        cases.append((f"{real_pair[0].stem} (real)", clean, noisy, None, 1))
        cases.append((f"{real_pair[0].stem} (real, camera-photo mode: stride 2)", clean, noisy, None, 2))
    rows, info = [], []
    for label, clean, noisy, smap, stride in cases:
        y, x = most_textured_window(clean, side)
        cells = [clean, noisy]
        row = {"case": label, "crop": [y, x, side, side]}
        for r in realisms:
            den = restore(weights, ImageData(pixels=noisy), sigma=smap, realism=r, precision=precision, impulses=False,
                          stride=stride).image.pixels
            cells.append(den)
            row[f"psnr@{r:g}"] = round(psnr(den, clean), 3)
            row[f"detail@{r:g}"] = round(detail_ratio(den, clean), 3)
        crops = [c[..., y : y + side, x : x + side] for c in cells]
        big = [torch.nn.functional.interpolate(c, scale_factor=2, mode="nearest") for c in crops]
        rows.append((label, torch.cat(crops, -1), torch.cat(big, -1)))
        info.append(row)
    names = ["clean", "noisy", *[f"realism {r:g}" for r in realisms]]
    width = side * 2 * len(names)
    canvas = Image.new("RGB", (width, sum(18 + side * 2 + side + 18 for _ in rows) + 18), "white")
    draw = ImageDraw.Draw(canvas)
    for j, n in enumerate(names):
        draw.text((j * side * 2 + 4, 3), n, fill="black")
    top = 18
    for label, small, big in rows:
        draw.text((4, top + 2), f"{label} - 200%:", fill="black")
        canvas.paste(to_pil(big), (0, top + 18))
        top += 18 + side * 2
        draw.text((4, top + 2), "100%:", fill="black")
        for j in range(len(names)):
            canvas.paste(to_pil(small[..., j * side : (j + 1) * side]), (j * side * 2, top + 18))
        top += 18 + side
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return info


def brightness_check(weights: str | None, strengths: tuple[float, ...] = (0, 10, 25, 50, 75, 100),
                     precision: str = "float32") -> list[dict]:
    """Largest channel-mean shift (0-255 levels) of clean images denoised at each strength: flat gray,
    a colour ramp and scikit-image's astronaut photo (256x256). Realism 0 through `ours` (the gray model,
    when the weights have one, for the flat gray image)."""
    from skimage import data

    from ganlib.hub import load_weights

    loaded = load_weights(weights)
    y, x = torch.meshgrid(torch.linspace(0, 1, 192), torch.linspace(0, 1, 256), indexing="ij")
    images = {"flat gray 128": torch.full((1, 3, 192, 192), 128 / 255),
              "colour ramp": torch.stack([0.1 + 0.8 * x, 0.2 + 0.6 * y, 0.9 - 0.8 * x])[None],
              "astronaut (clean)": to_tensor(data.astronaut()[50:306, 150:406])}
    rows = []
    for name, image in images.items():
        row = {"image": name}
        for s in strengths:
            out = ours(loaded, image, sigma=float(s), impulses=False, precision=precision)[0].image.pixels
            row[f"{s:g}"] = round(float(((out.mean((2, 3)) - image.mean((2, 3))) * 255).abs().max()), 2)
        rows.append(row)
    return rows


def tune_nlm(folder: str, sigmas: list[float], limit: int, crop: int = 192) -> dict[float, tuple[float, float]]:
    """Best h (with hColor = h) per sigma on centre crops of training images, by mean PSNR; returns
    {sigma: (h, mean PSNR)}. Noise: the standard protocol, clipped and rounded as NLM needs."""
    crops = []
    for path in list_set(folder, limit):
        img = load_rgb(path)
        h, w = img.shape[-2:]
        side = min(crop, h, w)
        y, x = (h - side) // 2, (w - side) // 2
        crops.append(img[..., y : y + side, x : x + side].contiguous())
    best = {}
    for sigma in sigmas:
        noisy = [make_noisy(c, sigma, "standard", seed=i) for i, c in enumerate(crops)]
        scores = {}
        for ratio in tqdm(NLM_GRID, desc=f"NLM sigma {sigma:g}", dynamic_ncols=True, leave=False):
            h = round(ratio * sigma, 1)
            scores[h] = float(np.mean([psnr(nlm_denoise(n, sigma, h, h), c) for n, c in zip(noisy, crops)]))
        h, score = max(scores.items(), key=lambda kv: kv[1])
        if h in (round(NLM_GRID[0] * sigma, 1), round(NLM_GRID[-1] * sigma, 1)):
            log.warning("sigma %g: the best h lies on the edge of the grid; widen NLM_GRID", sigma)
        best[sigma] = (h, score)
        print(f"sigma {sigma:g}: h = hColor = {h:g} ({', '.join(f'{k:g}: {v:.2f}' for k, v in scores.items())} dB)", flush=True)
    return best


# --- automatic strength ------------------------------------------------------------------------

# Upload-like noise (clipped and rounded to 8 bits): none, Gaussian, and camera noise with and without JPEG.
AUTO_CASES = {
    "clean": ("gaussian", {"sigma": 0.0}),
    "gaussian 5": ("gaussian", {"sigma": 5.0}),
    "gaussian 15": ("gaussian", {"sigma": 15.0}),
    "gaussian 25": ("gaussian", {"sigma": 25.0}),
    "gaussian 50": ("gaussian", {"sigma": 50.0}),
    "camera (peak 30, read 4)": ("camera", {"peak": 30.0, "sigma": 4.0}),
    "camera + JPEG 80": ("camera", {"peak": 30.0, "sigma": 4.0, "quality": 80}),
    "camera + JPEG 70, dark (peak 20, read 6)": ("camera", {"peak": 20.0, "sigma": 6.0, "quality": 70}),
    "camera + JPEG 90, bright (peak 100, read 2)": ("camera", {"peak": 100.0, "sigma": 2.0, "quality": 90}),
}


def auto_check(sets: list[str], limit: int | None, weights_source: str | None, tile: int, precision: str) -> list[dict]:
    """Per case: the true noise level (mean of the generator's noise-level map), the wavelet and the
    learned estimates, and the fidelity model's PSNR at the true level and at each estimate."""
    from ganlib.hub import load_weights
    from ganlib.noise import noise_std_map

    weights = load_weights(weights_source)
    if weights.estimator is None:
        raise ValueError(f"{weights.source} has no estimator/ folder: nothing to compare the wavelet estimate with")
    model = weights.fidelity
    rows = []
    for case, (kind, params) in AUTO_CASES.items():
        acc: dict[str, list[float]] = {k: [] for k in ("true", "wavelet", "learned", "psnr_true", "psnr_wavelet", "psnr_learned")}
        for folder in sets:
            for i, path in enumerate(list_set(folder, limit)):
                clean = load_rgb(path)
                noisy = add_noise(clean, kind, seed=i, clip=True, quantize=True, **params)
                levels = {"true": float(noise_std_map(clean, kind, **params).mean()) * 255,
                          "wavelet": estimate_sigma(noisy), "learned": estimate_sigma(noisy, weights.estimator)}
                for name, sigma in levels.items():
                    acc[name].append(sigma)
                    acc[f"psnr_{name}"].append(psnr(denoise(model, noisy, sigma, tile=tile, precision=precision), clean))
        mean = {k: sum(v) / len(v) for k, v in acc.items()}
        err = {k: sum(abs(a - t) for a, t in zip(acc[k], acc["true"])) / len(acc[k]) for k in ("wavelet", "learned")}
        rows.append({"case": case, "kind": kind, "params": params, "images": len(acc["true"]), **mean,
                     "err_wavelet": err["wavelet"], "err_learned": err["learned"]})
        log.info("auto-check %s: true %.2f, wavelet %.2f, learned %.2f", case, mean["true"], mean["wavelet"], mean["learned"])
    return rows


def auto_markdown(rows: list[dict]) -> str:
    lines = [("| noise (clipped, 8-bit) | true sigma | wavelet estimate (mean abs error) | learned estimate (mean abs error) "
              "| PSNR at true sigma | PSNR at wavelet | PSNR at learned |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['true']:.2f} | {r['wavelet']:.2f} ({r['err_wavelet']:.2f}) | {r['learned']:.2f} ({r['err_learned']:.2f}) "
                     f"| {r['psnr_true']:.2f} | {r['psnr_wavelet']:.2f} | {r['psnr_learned']:.2f} |")
    return "\n".join(lines)


# --- every noise kind, grayscale photos and real camera noise ------------------------------------
#
# These modes run in this process, one image at a time, and measure quality first: the time of each
# method is reported (seconds per image) but not its memory. Noise is added as the demo adds it:
# clipped and rounded to 8 bits, seeded by the image index (0, 1, ... in sorted file order).


@dataclass(frozen=True)
class Level:
    """One noise setting of --kinds: `kind` is the name given on the command line (salt_pepper_whole
    included), `noise` and `params` what `ganlib.noise.add_noise` takes, `label` the table row."""

    kind: str
    noise: str
    params: dict
    label: str


# --kinds name -> (ganlib.noise kind, the parameters of a level "A/B/C" in order, fixed parameters)
KIND_SPECS: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gaussian": ("gaussian", ("sigma",), {}),
    "poisson": ("poisson", ("peak",), {}),
    "speckle": ("speckle", ("sigma",), {}),
    "camera": ("camera", ("peak", "sigma", "quality"), {}),
    "salt_pepper": ("salt_pepper", ("amount",), {"whole_pixel": False}),
    "salt_pepper_whole": ("salt_pepper", ("amount",), {"whole_pixel": True}),
}
DEFAULT_KINDS = ["gaussian:15,50", "poisson:10,50", "speckle:0.1,0.3", "camera:30/4/75,30/4",
                 "salt_pepper:0.05,0.2", "salt_pepper_whole:0.05,0.2"]
DEFAULT_KODAK = "../shared/data/test-Kodak24"

# The classical peers of each kind (the best classical method we have for it), and their table names.
KIND_PEERS: dict[str, tuple[str, ...]] = {
    "gaussian": ("nlm_oracle",),
    "speckle": ("nlm_oracle",),
    "camera": ("nlm_oracle",),
    "poisson": ("nlm_oracle", "cbm3d_anscombe"),
    "salt_pepper": ("switching_median",),
    "salt_pepper_whole": ("switching_median",),
}
PEER_TITLES = {
    "nlm_oracle": "NLM, best h per image (oracle)",
    "cbm3d_anscombe": "CBM3D + Anscombe",
    "switching_median": "switching median 3x3",
    "bm3d": "BM3D (gray, true sigma)",
    "cbm3d": "CBM3D at its estimated sigma",
}
SLOW_PEERS = ("cbm3d_anscombe", "bm3d", "cbm3d")  # the peers --peer-limit applies to

# NLM oracle: h = hColor = ratio x the true noise level (mean of the exact noise map), the best per
# image by PSNR against the clean image; on real photos, whose level is unknown, absolute values of h.
NLM_ORACLE_RATIOS = (0.3, 0.45, 0.6, 0.75, 0.9, 1.1)
NLM_REAL_H = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0)


def parse_kinds(specs: list[str]) -> list[Level]:
    """`KIND:LEVEL,LEVEL,...` per kind (a camera level is PEAK/READ_SIGMA[/JPEG_QUALITY]) -> the levels,
    in order. Raises ValueError with a readable message for an unknown kind or a malformed level."""
    levels = []
    for spec in specs:
        kind, sep, values = spec.partition(":")
        if kind not in KIND_SPECS or not sep or not values.strip(","):
            raise ValueError(f"--kinds: expected KIND:LEVEL,LEVEL with KIND one of {', '.join(KIND_SPECS)}, got {spec!r}")
        noise, names, fixed = KIND_SPECS[kind]
        for value in (v for v in values.split(",") if v.strip()):
            parts = value.split("/")
            if not 1 <= len(parts) <= len(names) or (noise == "camera" and len(parts) < 2):
                raise ValueError(f"--kinds: a {kind} level is {'/'.join(names[:2] if noise == 'camera' else names)}"
                                 f"{'[/quality]' if noise == 'camera' else ''}, got {value!r}")
            try:
                params = {n: float(p) for n, p in zip(names, parts)}
            except ValueError:
                raise ValueError(f"--kinds: {value!r} is not a number ({spec!r})") from None
            if "quality" in params:
                params["quality"] = int(params["quality"])
            params.update(fixed)
            add_noise(torch.zeros(1, 3, 4, 4), noise, seed=0, **params)  # raises ValueError for bad parameters
            levels.append(Level(kind, noise, params, level_label(noise, params)))
    return levels


def level_label(noise: str, params: dict) -> str:
    """The table row of a noise setting: 'sigma 15', 'peak 30, read 4, JPEG 75', 'amount 0.05'."""
    if noise in ("gaussian", "speckle"):
        return f"sigma {params['sigma']:g}"
    if noise == "poisson":
        return f"peak {params['peak']:g}"
    if noise == "camera":
        jpeg = f", JPEG {params['quality']}" if params.get("quality") is not None else ", no JPEG"
        return f"peak {params['peak']:g}, read {params['sigma']:g}{jpeg}"
    return f"amount {params['amount']:g}"


def switching_median(noisy: torch.Tensor) -> torch.Tensor:
    """A plain switching median: OpenCV's 3x3 median, taken only where a value is 0 or 255 (per channel);
    every other value is kept. The classical baseline for salt & pepper noise."""
    import cv2

    arr = to_numpy(noisy)
    med = cv2.medianBlur(np.ascontiguousarray(arr), 3)
    return to_tensor(np.where((arr == 0) | (arr == 255), med, arr))


def nlm_oracle(noisy: torch.Tensor, clean: torch.Tensor, hs: list[float]) -> tuple[torch.Tensor, float]:
    """OpenCV NLM (colour) at each h of `hs` (hColor = h), the best by PSNR against `clean`: an oracle,
    an upper bound on what NLM does with any one rule for h. Returns (result, its h)."""
    best = None
    for h in hs:
        out = nlm_denoise(noisy, 0.0, h, h)
        score = psnr(out, clean)
        if best is None or score > best[0]:
            best = (score, h, out)
    return best[2], best[1]


def anscombe(z: np.ndarray) -> np.ndarray:
    """Anscombe transform of Poisson counts: 2 sqrt(z + 3/8), noise of about unit variance."""
    return 2.0 * np.sqrt(np.maximum(z, 0.0) + 3.0 / 8.0)


def inverse_anscombe(d: np.ndarray) -> np.ndarray:
    """The exact unbiased inverse of the Anscombe transform in its closed-form approximation
    (Makitalo & Foi 2011, "A closed-form approximation of the exact unbiased inverse of the Anscombe
    variance-stabilizing transformation", IEEE TIP 20(9)); 0 below d = 2 sqrt(3/8), where it is 0."""
    d = np.maximum(d, 2.0 * math.sqrt(3.0 / 8.0))
    r = math.sqrt(1.5)
    return np.maximum(d**2 / 4 + r / (4 * d) - 11 / (8 * d**2) + 5 * r / (8 * d**3) - 1 / 8, 0.0)


def cbm3d_anscombe(noisy: torch.Tensor, peak: float) -> torch.Tensor:
    """CBM3D for Poisson noise of `peak` photons at white: Anscombe transform of the counts, CBM3D at
    sigma 1 on that scale, exact unbiased inverse (Makitalo & Foi 2011)."""
    bm3d = _bm3d()
    d = anscombe(noisy[0].permute(1, 2, 0).double().numpy() * peak)
    top = float(anscombe(np.array(peak)))  # CBM3D works on about [0, 1]: scale the stabilised image
    den = bm3d.bm3d_rgb(d / top, sigma_psd=1.0 / top) * top
    out = np.clip(inverse_anscombe(den) / peak, 0, 1)
    return torch.from_numpy(out).float().permute(2, 0, 1)[None].contiguous()


def bm3d_gray(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """BM3D of a (1,1,H,W) image at `sigma` (0-255 scale)."""
    bm3d = _bm3d()
    out = bm3d.bm3d(noisy[0, 0].double().numpy(), sigma_psd=sigma / 255.0)
    return torch.from_numpy(np.clip(np.asarray(out).reshape(noisy.shape[-2:]), 0, 1)).float()[None, None].contiguous()


class Scores:
    """Per-image PSNR, SSIM and seconds of one method (and any per-image values, e.g. its h or sigma)."""

    def __init__(self) -> None:
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.seconds: list[float] = []
        self.extra: dict[str, list] = {}

    def add(self, out: torch.Tensor, clean: torch.Tensor, seconds: float = 0.0, **extra) -> None:
        self.psnr.append(psnr(out, clean))
        self.ssim.append(ssim(out, clean))
        self.seconds.append(seconds)
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)

    def summary(self) -> dict:
        """Means over the images measured, how many they are, and the per-image values."""
        n = len(self.psnr)
        return {"images": n, "psnr": float(np.mean(self.psnr)) if n else None, "ssim": float(np.mean(self.ssim)) if n else None,
                "seconds_per_image": float(np.mean(self.seconds)) if n else None,
                "psnr_per_image": [round(v, 4) for v in self.psnr], "ssim_per_image": [round(v, 5) for v in self.ssim],
                **{f"{k}_per_image": v for k, v in self.extra.items()}}


def _detail(out: torch.Tensor, clean: torch.Tensor) -> float:
    """The detail ratio of `out` against `clean` (`ganlib.detail_ratio`) as the results store it (4 decimals)."""
    return round(detail_ratio(out, clean), 4)


def _mean_detail(summary: dict) -> str | None:
    """A Scores summary's mean detail ratio for the tables (3 decimals); None when it has none."""
    values = summary.get("detail_per_image")
    return f"{np.mean(values):.3f}" if values else None


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds it took)."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def ours(weights, noisy: torch.Tensor, sigma=None, impulses: bool | None = None, realism: float = 0.0, precision: str = "auto",
         stride: int = 1, ensemble: bool = False):
    """Our denoiser as the demo and the CLI call it (`ganlib.inference.restore`); returns (Restored, seconds)."""
    from ganlib.images import ImageData
    from ganlib.inference import restore

    return timed(restore, weights, ImageData(pixels=noisy), sigma=sigma, impulses=impulses, realism=realism, precision=precision,
                 stride=stride, ensemble=ensemble)


def same_images(peer: dict, others: dict[str, Scores]) -> dict:
    """For a peer measured on the first k images only: our PSNR/SSIM on those same k images."""
    k = peer["images"]
    return {name: {"psnr": float(np.mean(s.psnr[:k])), "ssim": float(np.mean(s.ssim[:k]))} for name, s in others.items() if k}


def run_kinds(levels: list[Level], folder: str, limit: int | None, peer_limit: int | None, weights, precision: str,
              done=None) -> list[dict]:
    """Every level of every kind on `folder`: noisy, ours automatic (estimated map), ours informed (the
    exact map; impulses removed first for salt & pepper) and the kind's classical peers. One record per
    level; `done(records)` after each level (a long run keeps what it measured)."""
    from ganlib.noise import informed_noise_map, noise_std_map

    paths = list_set(folder, limit)
    cleans = [load_rgb(p) for p in paths]
    n_peer = len(paths) if peer_limit is None else min(peer_limit, len(paths))
    records = []
    for level in levels:
        salt = level.noise == "salt_pepper"
        peers = KIND_PEERS[level.kind]
        cells = {"noisy": Scores(), "ours_auto": Scores(), "ours_informed": Scores(), **{p: Scores() for p in peers}}
        for i, clean in enumerate(tqdm(cleans, desc=f"{level.kind} {level.label}", dynamic_ncols=True, leave=False)):
            noisy = add_noise(clean, level.noise, seed=i, clip=True, quantize=True, **level.params)
            cells["noisy"].add(noisy, clean)
            res, sec = ours(weights, noisy, precision=precision)
            cells["ours_auto"].add(res.image.pixels, clean, sec, sigma=round(res.sigma, 3), impulses=res.impulses)
            res, sec = ours(weights, noisy, informed_noise_map(clean, level.noise, **level.params), impulses=salt, precision=precision)
            cells["ours_informed"].add(res.image.pixels, clean, sec)
            for peer in peers:
                if peer in SLOW_PEERS and i >= n_peer:
                    continue
                if peer == "switching_median":
                    out, sec = timed(switching_median, noisy)
                    cells[peer].add(out, clean, sec)
                elif peer == "cbm3d_anscombe":
                    out, sec = timed(cbm3d_anscombe, noisy, level.params["peak"])
                    cells[peer].add(out, clean, sec)
                else:  # nlm_oracle: h around the true noise level (mean of the exact map)
                    level_255 = float(noise_std_map(clean, level.noise, **level.params).mean()) * 255
                    hs = sorted({round(max(1.0, r * level_255), 1) for r in NLM_ORACLE_RATIOS})
                    (out, h), sec = timed(nlm_oracle, noisy, clean, hs)
                    cells[peer].add(out, clean, sec, h=h, edge=h in (hs[0], hs[-1]) and len(hs) > 1)
        record = {"set": Path(folder).name, "kind": level.kind, "noise": level.noise, "params": level.params, "level": level.label,
                  "images": len(paths), **{name: cell.summary() for name, cell in cells.items()}}
        for peer in peers:
            record[peer]["title"] = PEER_TITLES[peer]
            if record[peer]["images"] < len(paths):
                record[peer]["ours_on_same_images"] = same_images(record[peer], {"ours_auto": cells["ours_auto"], "ours_informed": cells["ours_informed"]})
            edges = sum(record[peer].pop("edge_per_image", []))
            if edges:
                log.warning("%s %s: NLM's best h lay on the edge of its grid for %d image(s)", level.kind, level.label, edges)
        records.append(record)
        log.info("%s %s: noisy %.2f, ours auto %.2f, informed %.2f, %s", level.kind, level.label, record["noisy"]["psnr"],
                 record["ours_auto"]["psnr"], record["ours_informed"]["psnr"],
                 ", ".join(f"{p} {record[p]['psnr']:.2f}" for p in peers if record[p]["images"]))
        if done:
            done(records)
    return records


def _cell(summary: dict, total: int | None = None) -> str:
    """'PSNR / SSIM' of a summary; '(k images)' when it covers fewer than `total`; '' when none."""
    if not summary or not summary.get("images"):
        return "not run"
    text = f"{summary['psnr']:.2f} / {summary['ssim']:.4f}"
    if total is not None and summary["images"] < total:
        same = summary.get("ours_on_same_images", {}).get("ours_auto")
        text += f" ({summary['images']} image{'s' if summary['images'] > 1 else ''}" + (f"; ours auto on them {same['psnr']:.2f}" if same else "") + ")"
    return text


def kinds_markdown(records: list[dict]) -> str:
    """One table per kind: a row per level; noisy, ours automatic, ours informed and the peers."""
    lines = []
    for kind in dict.fromkeys(r["kind"] for r in records):
        rows = [r for r in records if r["kind"] == kind]
        peers = KIND_PEERS[kind]
        n = rows[0]["images"]
        what = "whole-pixel salt & pepper" if kind == "salt_pepper_whole" else kind.replace("_", " & ") if kind == "salt_pepper" else kind
        lines += [f"**{what}** ({rows[0]['set']}, {n} images, noise clipped and 8-bit, seed = image index): PSNR dB / SSIM", ""]
        lines.append("| level | noisy | ours, automatic | ours, informed | " + " | ".join(PEER_TITLES[p] for p in peers) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(peers))
        for r in rows:
            lines.append(f"| {r['level']} | {_cell(r['noisy'])} | {_cell(r['ours_auto'])} | {_cell(r['ours_informed'])} | "
                         + " | ".join(_cell(r[p], n) for p in peers) + " |")
        secs = {name: np.mean([r[key]["seconds_per_image"] for r in rows if r[key]["images"]]) for key, name in
                [("ours_auto", "ours automatic"), ("ours_informed", "ours informed"), *((p, PEER_TITLES[p]) for p in peers)]
                if any(r[key]["images"] for r in rows)}
        lines += ["", "seconds per image: " + ", ".join(f"{k} {v:.3g}" for k, v in secs.items()), ""]
    if any("nlm_oracle" in KIND_PEERS[r["kind"]] for r in records):
        lines.append(f"NLM is an oracle: h (= hColor) picked per image with the clean image from {len(NLM_ORACLE_RATIOS)} values "
                     f"({', '.join(f'{r:g}' for r in NLM_ORACLE_RATIOS)} x the true noise level).")
    return "\n".join(lines).rstrip() + "\n"


def load_gray(path: Path) -> torch.Tensor:
    """A (1,1,H,W) gray image; a colour file is averaged to gray (with a warning)."""
    pixels = load_image(path).pixels
    if pixels.shape[1] == 3:
        log.warning("%s is a colour image: averaged to gray", path.name)
        pixels = pixels.mean(dim=1, keepdim=True)
    return pixels


def run_gray(folder: str, sigmas: list[float], protocols: list[str], limit: int | None, peer_limit: int | None, weights,
             precision: str, done=None, realisms: list[float] = ()) -> list[dict]:
    """1-channel photos with Gaussian noise: noisy, ours informed (the true sigma), ours automatic,
    BM3D (gray, at the true sigma) on the first `peer_limit` images, and ours informed at each realism
    of `realisms` (with its detail ratio). One record per (protocol, sigma)."""
    sweep = [a for a in dict.fromkeys(realisms) if a != 0.0]
    if sweep and weights.gan is None:
        log.warning("realism sweep left out: %s has no GAN weights", weights.source)
        sweep = []
    paths = list_set(folder, limit)
    cleans = [load_gray(p) for p in paths]
    n_peer = len(paths) if peer_limit is None else min(peer_limit, len(paths))
    records = []
    for protocol in protocols:
        for sigma in sigmas:
            cells = {"noisy": Scores(), "ours_auto": Scores(), "ours_informed": Scores(), "bm3d": Scores(),
                     **{f"ours@{a:g}": Scores() for a in sweep}}
            for i, clean in enumerate(tqdm(cleans, desc=f"gray sigma {sigma:g} {protocol}", dynamic_ncols=True, leave=False)):
                noisy = make_noisy(clean, sigma, protocol, seed=i)
                cells["noisy"].add(noisy, clean)
                res, sec = ours(weights, noisy, float(sigma), impulses=False, precision=precision)
                cells["ours_informed"].add(res.image.pixels, clean, sec, detail=_detail(res.image.pixels, clean))
                for a in sweep:
                    res, sec = ours(weights, noisy, float(sigma), impulses=False, realism=a, precision=precision)
                    cells[f"ours@{a:g}"].add(res.image.pixels, clean, sec, detail=_detail(res.image.pixels, clean))
                res, sec = ours(weights, noisy, precision=precision)
                cells["ours_auto"].add(res.image.pixels, clean, sec, sigma=round(res.sigma, 3))
                if i < n_peer:
                    out, sec = timed(bm3d_gray, noisy, sigma)
                    cells["bm3d"].add(out, clean, sec)
            record = {"set": Path(folder).name, "protocol": protocol, "sigma": sigma, "images": len(paths),
                      **{name: cell.summary() for name, cell in cells.items()}}
            record["bm3d"]["title"] = PEER_TITLES["bm3d"]
            if record["bm3d"]["images"] < len(paths):
                record["bm3d"]["ours_on_same_images"] = same_images(record["bm3d"], {"ours_auto": cells["ours_auto"], "ours_informed": cells["ours_informed"]})
            records.append(record)
            log.info("gray sigma %g %s: noisy %.2f, ours informed %.2f, auto %.2f, BM3D %s", sigma, protocol, record["noisy"]["psnr"],
                     record["ours_informed"]["psnr"], record["ours_auto"]["psnr"],
                     f"{record['bm3d']['psnr']:.2f}" if record["bm3d"]["images"] else "not run")
            if done:
                done(records)
    return records


def gray_markdown(records: list[dict]) -> str:
    """One table per protocol: a row per sigma; noisy, ours informed, ours automatic, BM3D."""
    lines = []
    for protocol in dict.fromkeys(r["protocol"] for r in records):
        rows = [r for r in records if r["protocol"] == protocol]
        n = rows[0]["images"]
        sweep = [k for k in rows[0] if k.startswith("ours@")]
        lines += [f"**{rows[0]['set']}** (gray, {n} images, {protocol} protocol, seed = image index): PSNR dB / SSIM", "",
                  f"| sigma | noisy | ours, informed (true sigma) | ours, automatic | {PEER_TITLES['bm3d']} | "
                  + "".join(f"{k} (informed; detail) | " for k in sweep), "|---|---|---|---|---|" + "---|" * len(sweep)]

        def detail(summary: dict) -> str:
            mean = _mean_detail(summary)
            return f" ({mean})" if mean else ""

        for r in rows:
            lines.append(f"| {r['sigma']:g} | {_cell(r['noisy'])} | {_cell(r['ours_informed'])}{detail(r['ours_informed'])} | "
                         f"{_cell(r['ours_auto'])} | {_cell(r['bm3d'], n)} | " + "".join(f"{_cell(r[k])}{detail(r[k])} | " for k in sweep))
        secs = {name: np.mean([r[key]["seconds_per_image"] for r in rows if r[key]["images"]]) for key, name in
                [("ours_informed", "ours informed"), ("ours_auto", "ours automatic"), ("bm3d", "BM3D")] if any(r[key]["images"] for r in rows)}
        lines += ["", "seconds per image: " + ", ".join(f"{k} {v:.3g}" for k, v in secs.items()), ""]
    return "\n".join(lines).rstrip() + "\n"


def real_pairs(folder: str | Path, limit: int | None) -> list[tuple[str, Path, Path]]:
    """(name, noisy, ground truth) for each `NAME_real.*` beside a `NAME_mean.*` in `folder`, sorted by name
    (`train.data.real_pairs`); the first `limit` of them."""
    from .data import real_pairs as pairs_in

    try:
        pairs = pairs_in(folder)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    return pairs[:limit] if limit else pairs


def run_real(folder: str, limit: int | None, peer_limit: int | None, weights, precision: str, realisms: list[float],
             ensemble: bool = False) -> dict:
    """Real noisy photos against their ground truth (the mean of many shots): ours automatic, ours
    automatic with pixel-shuffle stride 2 and its refinement (`restore(stride=2)`, the camera-photo mode), NLM with the best
    h per image (an oracle), CBM3D at the wavelet estimate of sigma (first `peer_limit` images), and
    ours at each realism of `realisms` (automatic strength) at stride 1 (`ours@A`) and at stride 2
    (`ours_stride2@A`, the camera-photo mode, where real noise is gone before realism adds texture).
    Ours has its detail ratio per image (`detail_per_image`). ensemble: also stride 2 with the x8
    self-ensemble (`ours_stride2_x8`: the demo's camera-photo and best-quality boxes together, 8x the
    time of stride 2; about 25x that of stride 1 on CC15)."""
    pairs = real_pairs(folder, limit)
    n_peer = len(pairs) if peer_limit is None else min(peer_limit, len(pairs))
    sweep = [a for a in dict.fromkeys(realisms) if a != 0.0]
    if sweep and weights.gan is None:
        log.warning("realism sweep left out: %s has no GAN weights", weights.source)
        sweep = []
    cells = {"noisy": Scores(), "ours_auto": Scores(), "ours_stride2": Scores(), "nlm_oracle": Scores(), "cbm3d": Scores(),
             **({"ours_stride2_x8": Scores()} if ensemble else {}), **{f"ours@{a:g}": Scores() for a in sweep},
             **{f"ours_stride2@{a:g}": Scores() for a in sweep}}
    names = []
    for i, (name, noisy_path, clean_path) in enumerate(tqdm(pairs, desc="real noise", dynamic_ncols=True, leave=False)):
        noisy, clean = load_rgb(noisy_path), load_rgb(clean_path)
        if noisy.shape != clean.shape:
            raise SystemExit(f"{noisy_path.name} and {clean_path.name} differ in size")
        names.append(name)
        cells["noisy"].add(noisy, clean)
        res, sec = ours(weights, noisy, precision=precision)
        cells["ours_auto"].add(res.image.pixels, clean, sec, sigma=round(res.sigma, 3), detail=_detail(res.image.pixels, clean))
        res, sec = ours(weights, noisy, precision=precision, stride=2)
        cells["ours_stride2"].add(res.image.pixels, clean, sec, sigma=round(res.sigma, 3), detail=_detail(res.image.pixels, clean))
        if ensemble:
            res, sec = ours(weights, noisy, precision=precision, stride=2, ensemble=True)
            cells["ours_stride2_x8"].add(res.image.pixels, clean, sec, sigma=round(res.sigma, 3))
        (out, h), sec = timed(nlm_oracle, noisy, clean, list(NLM_REAL_H))
        cells["nlm_oracle"].add(out, clean, sec, h=h)
        if i < n_peer:
            sigma = estimate_sigma(noisy)  # scikit-image's wavelet estimate (no learned estimator)
            out, sec = timed(cbm3d_denoise, noisy, sigma)
            cells["cbm3d"].add(out, clean, sec, sigma=round(sigma, 3))
        for a in sweep:
            for key, stride in ((f"ours@{a:g}", 1), (f"ours_stride2@{a:g}", 2)):
                res, sec = ours(weights, noisy, realism=a, precision=precision, stride=stride)
                cells[key].add(res.image.pixels, clean, sec, detail=_detail(res.image.pixels, clean))
    result = {"set": Path(folder).name, "images": names, **{k: c.summary() for k, c in cells.items()}}
    result["nlm_oracle"]["title"] = PEER_TITLES["nlm_oracle"]
    result["cbm3d"]["title"] = PEER_TITLES["cbm3d"]
    result["cbm3d"]["sigma_estimate"] = "skimage.restoration.estimate_sigma (wavelet MAD, averaged over channels) of the noisy photo"
    if result["cbm3d"]["images"] < len(pairs):
        result["cbm3d"]["ours_on_same_images"] = same_images(result["cbm3d"], {"ours_auto": cells["ours_auto"]})
    return result


def real_markdown(result: dict) -> str:
    """A row per image and the mean: noisy, ours automatic (its sigma), NLM oracle (its h), CBM3D (its
    sigma), the realism sweep."""
    sweep = [k for k in result if k.startswith("ours@")]
    sweep2 = [k for k in result if k.startswith("ours_stride2@")]
    extra = ["ours_stride2_x8"] if "ours_stride2_x8" in result else []  # --real-ensemble's column
    n = len(result["images"])
    lines = [f"**{result['set']}** ({n} real noisy photos against the mean image): PSNR dB / SSIM", "",
             "| image | noisy | ours, automatic (sigma) | ours, stride 2 (sigma) | NLM, best h (oracle) | CBM3D (wavelet sigma) | "
             + ("ours, stride 2 + x8 ensemble | " if extra else "") + " | ".join(sweep) + (" |" if sweep else ""),
             "|---|---|---|---|---|---|" + "---|" * (len(extra) + len(sweep))]

    def one(summary: dict, i: int, extra: str | None = None) -> str:
        if i >= summary["images"]:
            return ""
        text = f"{summary['psnr_per_image'][i]:.2f} / {summary['ssim_per_image'][i]:.4f}"
        return text + (f" ({summary[extra + '_per_image'][i]:g})" if extra else "")

    for i, name in enumerate(result["images"]):
        cells = [one(result["noisy"], i), one(result["ours_auto"], i, "sigma"), one(result["ours_stride2"], i, "sigma"), one(result["nlm_oracle"], i, "h"),
                 one(result["cbm3d"], i, "sigma"), *(one(result[k], i) for k in extra + sweep)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = [_cell(result["noisy"]), _cell(result["ours_auto"]), _cell(result["ours_stride2"]), _cell(result["nlm_oracle"]), _cell(result["cbm3d"], n),
             *(_cell(result[k]) for k in extra + sweep)]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    names = {"ours_auto": "ours automatic", "ours_stride2": "ours stride 2", "nlm_oracle": "NLM oracle (all h values)", "cbm3d": "CBM3D",
             **{k: "ours stride 2 + x8" for k in extra}, **{k: k for k in sweep + sweep2}}
    secs = {names[k]: result[k]["seconds_per_image"] for k in names if result[k]["images"]}
    grid = ", ".join(f"{h:g}" for h in NLM_REAL_H)
    lines += ["", "seconds per image: " + ", ".join(f"{k} {v:.3g}" for k, v in secs.items()),
              (f"NLM is an oracle: h (= hColor) picked per image with the ground truth from {grid}. CBM3D runs at "
               "scikit-image's wavelet estimate of sigma (estimate_sigma, averaged over channels); ours at its automatic strength "
               "(the learned estimator's map where the weights have one)."), ""]
    if sweep:
        lines += [f"**{result['set']}, realism sweep** (automatic strength; mean PSNR dB / SSIM (detail ratio)): stride 1 is the "
                  "default, stride 2 the camera-photo mode", "", "| realism | stride 1 | stride 2 |", "|---|---|---|"]
        for a, s1, s2 in [("0", "ours_auto", "ours_stride2"), *((k[len("ours@"):], k, "ours_stride2@" + k[len("ours@"):]) for k in sweep)]:
            lines.append(f"| {a} | {_cell(result[s1])} ({_mean_detail(result[s1]) or '-'}) | "
                         + (f"{_cell(result[s2])} ({_mean_detail(result[s2]) or '-'})" if s2 in result else "not run") + " |")
        lines.append("")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=[], help="test folders (each one a set)")
    p.add_argument("--sigmas", type=_floats, default=[15.0, 25.0, 50.0], help="comma-separated, 0-255 scale")
    p.add_argument("--methods", default="ours,ours-gan,cbm3d,nlm", help="ours, ours-gan, ours@REALISM (any of them +x8: self-ensemble), cbm3d, nlm")
    p.add_argument("--realism-sweep", type=_floats, default=[], help="add ours@A for each A (e.g. 0,0.25,0.5,0.75,1)")
    p.add_argument("--piqe", action="store_true", help="also the no-reference PIQE score (train.naturalness, pyiqa; lower = better)")
    p.add_argument("--protocol", choices=["standard", "realistic", "both"], default="standard")
    p.add_argument("--limit", type=int, default=None, help="first N images of each set")
    p.add_argument("--weights", default=None, help="weights folder or Hub repo id (default: GANLIB_WEIGHTS, else checkpoints/)")
    p.add_argument("--tile", type=int, default=512, help="our tile side (as the CLI)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="our precision (as the CLI; auto = bfloat16 where native)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and OpenCV (0 = their defaults)")
    p.add_argument("--jobs", type=int, default=1,
                   help="methods measured at once, each in its own worker (e.g. 2 with --threads 1 on 2 cores: CBM3D on one, the rest on the other)")
    p.add_argument("--output", type=Path, help="results JSON")
    p.add_argument("--plot", type=Path, help="PNG: PSNR against seconds per megapixel")
    p.add_argument("--plot-sigma", type=float, default=None, help="sigma of the plot (default 25, else the middle one)")
    p.add_argument("--grid-real", help="folder of real noisy photos for a visual grid")
    p.add_argument("--grid-out", type=Path, default=Path("grid.png"))
    p.add_argument("--grid-crop", type=int, default=192, help="centre crop side of each grid cell")
    p.add_argument("--grid-methods", default="ours,ours-gan,cbm3d", help="ours, ours-gan, ours@R, ours-stride2 (pixel-shuffled), cbm3d, nlm")
    p.add_argument("--realism-crops", type=Path, metavar="PNG",
                   help="figure of textured crops at realism 0/0.5/1 (or --realism-sweep): --crop-photos CLEAN1 CLEAN2 [--crop-real NOISY MEAN]")
    p.add_argument("--crop-photos", nargs="+", type=Path, default=[], help="clean photos for --realism-crops (gaussian 25, camera noise)")
    p.add_argument("--crop-real", nargs=2, type=Path, default=None, metavar=("NOISY", "MEAN"), help="a real noisy photo and its ground truth")
    p.add_argument("--brightness-check", action="store_true", help="channel-mean shift of clean images at strengths 0-100")
    p.add_argument("--auto-check", action="store_true", help="with --data: the automatic strength (estimated vs true noise level, PSNR at each)")
    p.add_argument("--memory-check", action="store_true", help="peak memory of a 6000x4000 photo through our tiled inference")
    p.add_argument("--kinds", nargs="*", metavar="KIND:LEVELS",
                   help="every noise kind on --data (default " + DEFAULT_KODAK + "): KIND:LEVEL,LEVEL with KIND one of "
                   + ", ".join(KIND_SPECS) + "; a camera level is PEAK/READ_SIGMA[/JPEG_QUALITY]; no value = " + " ".join(DEFAULT_KINDS))
    p.add_argument("--gray", metavar="FOLDER", help="grayscale photos (e.g. ../shared/data/test-BSD68-gray) at --sigmas, --protocol, beside BM3D")
    p.add_argument("--real", metavar="FOLDER", help="real noisy photos NAME_real.png with ground truth NAME_mean.png (e.g. ../shared/data/real-CC15)")
    p.add_argument("--real-ensemble", action="store_true",
                   help="with --real: also stride 2 with the x8 self-ensemble (the demo's camera-photo and best-quality boxes; about 25x the time of stride 1)")
    p.add_argument("--peer-limit", type=int, default=None, help="the slow peers (CBM3D, BM3D) on the first N images only (default all)")
    p.add_argument("--same-process", action="store_true", help="no worker processes (quick checks; peak memory then mixes methods)")
    p.add_argument("--tune-nlm", metavar="TRAIN_DIR", help="choose NLM strengths per sigma on training images and exit")
    p.add_argument("--cards", type=Path, metavar="WEIGHTS_DIR",
                   help="write the results of --from JSON files into WEIGHTS_DIR/{fidelity,gan}/README.md and exit")
    p.add_argument("--from", dest="from_json", type=Path, nargs="+", default=[], metavar="JSON", help="results files for --cards")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for a in args.realism_sweep:
        if not 0 <= a <= 1:
            p.error(f"--realism-sweep values must lie in [0, 1], got {a:g}")
        name = "ours" if a == 0 else "ours-gan" if a == 1 else f"ours@{a:g}"
        if name not in args.methods:
            args.methods.append(name)
    for m in args.methods:
        if m not in PEERS and realism_of(m) is None:
            p.error(f"unknown method {m!r}: use ours, ours-gan, ours@REALISM, cbm3d or nlm")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.auto_check and not args.data:
        p.error("--auto-check needs --data FOLDER ...")
    if args.cards and not args.from_json:
        p.error("--cards needs --from RESULTS.json ...")
    if args.kinds is not None:
        try:
            args.levels = parse_kinds(args.kinds or DEFAULT_KINDS)
        except ValueError as err:
            p.error(str(err))
        if args.auto_check:
            p.error("--kinds and --auto-check are separate runs")
    if args.peer_limit is not None and args.peer_limit < 0:
        p.error(f"--peer-limit must be >= 0, got {args.peer_limit}")
    if args.peer_limit is not None and args.kinds is None and not args.gray and not args.real:
        p.error("--peer-limit applies to --kinds, --gray and --real; with --data alone use --limit (every method on the first N images)")
    if args.realism_crops and not args.crop_photos:
        p.error("--realism-crops needs --crop-photos CLEAN1 [CLEAN2]")
    if not (args.data or args.grid_real or args.memory_check or args.tune_nlm or args.cards or args.kinds is not None or args.gray
            or args.real or args.realism_crops or args.brightness_check):
        p.error("nothing to do: give --data, --kinds, --gray, --real, --grid-real, --realism-crops, --memory-check, --tune-nlm or --cards")
    return args


def run_peer_modes(args: argparse.Namespace, result: dict, key: str, run, table) -> None:
    """Run one of --kinds, --gray, --real in this process: `run(done)` gives its results, saved under
    `result[key]` (and in --output after each finished level, so a long run keeps what it measured);
    its table, `table(results)`, is printed and saved under `result["markdown_" + key]`."""
    import cv2

    if args.threads:
        cv2.setNumThreads(args.threads)
    logging.getLogger("ganlib.inference").setLevel(logging.WARNING)  # not a line per image and method
    if (key != "kinds" or any("cbm3d_anscombe" in KIND_PEERS[lv.kind] for lv in args.levels)) and importlib.util.find_spec("bm3d") is None:
        raise SystemExit("the CBM3D/BM3D peers need the optional `bm3d` package (pip install -r requirements-dev.txt)")

    def done(partial) -> None:
        if args.output:
            write_json(args.output, {**result, key: partial, "unfinished": [key]})

    t = time.perf_counter()
    result[key] = run(done)
    result.setdefault("seconds", {})[key] = round(time.perf_counter() - t, 1)
    result["markdown_" + key] = table(result[key])
    print(result["markdown_" + key])
    print(f"({key}: {result['seconds'][key]:.0f} s in all)", flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:  # this process's own work (--auto-check, --grid-real, --same-process); workers set theirs
        torch.set_num_threads(args.threads)
    if args.tune_nlm:
        tune_nlm(args.tune_nlm, args.sigmas, args.limit or 4)
        return 0
    if args.cards:
        for card in write_cards(args.cards, args.from_json):
            log.info("benchmark section written to %s", card)
        return 0
    meta = {
        "command": "python -m train.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}",
        "weights": args.weights or os.environ.get("GANLIB_WEIGHTS") or "checkpoints/ (bundled)",
        "noise_seed": "image index in sorted file order (0, 1, ...)",
        "protocols": {"standard": "AWGN in float, no clipping", "realistic": "AWGN, clipped and rounded to 8 bits"},
        "nlm_h": {f"{s:g}": nlm_strength(s) for s in args.sigmas},
        "nlm_note": "OpenCV NLM takes 8-bit input only: its input is always clipped and rounded",
        "tile": args.tile,
        "precision": resolve_precision(args.precision),
    }
    if args.kinds is not None or args.gray or args.real:
        meta.update({
            "peer_limit": args.peer_limit,
            "images_note": "each method's `images` says how many images its numbers are over (the slow peers: --peer-limit)",
            "kinds_noise": "ganlib.noise.add_noise, clipped and rounded to 8 bits (as the demo adds it), seed = image index",
            "ours": "ganlib.inference.restore: automatic = estimated noise map (sigma None, impulses detected); "
                    "informed = the exact map (informed_noise_map; impulses removed first for salt & pepper), or the true sigma",
            "oracle_note": "NLM's h is picked per image with the clean image (an oracle: an upper bound on NLM)",
        })
    result: dict = {"meta": meta, "results": []}
    runner = (lambda fn, *a: fn(*a)) if args.same_process else in_worker
    if args.auto_check:
        try:
            rows = auto_check(args.data, args.limit, args.weights, args.tile, args.precision)
        except ValueError as err:
            log.error("%s", err)
            return 2
        result["auto_check"] = rows
        result["markdown"] = auto_markdown(rows)
        print(result["markdown"])
    elif args.kinds is not None:
        folder = args.data[0] if args.data else DEFAULT_KODAK
        if len(args.data) > 1:
            log.warning("--kinds measures one folder: %s (the others are left out)", folder)
        run_peer_modes(args, result, "kinds", lambda done: run_kinds(args.levels, folder, args.limit, args.peer_limit, load_weights(args.weights),
                                                                      args.precision, done), kinds_markdown)
    elif args.data:
        protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
        if "cbm3d" in args.methods and importlib.util.find_spec("bm3d") is None:
            log.warning("leaving out cbm3d: the optional `bm3d` package is not installed (pip install -r requirements-dev.txt)")
            args.methods.remove("cbm3d")

        def ordered(by_method: dict[str, list[dict]]) -> list[dict]:  # the order of --methods, whatever finished first
            return [r for m in args.methods for r in by_method.get(m, [])]

        def save_partial(by_method: dict[str, list[dict]]) -> None:
            if args.output:
                write_json(args.output, {**result, "results": ordered(by_method), "unfinished": [m for m in args.methods if m not in by_method]})

        result["results"] = ordered(run_methods(args, protocols, save_partial))
        table = markdown(result["results"])
        print(table)
        result["markdown"] = table
        if args.plot and result["results"]:
            sigma = args.plot_sigma if args.plot_sigma is not None else (25.0 if 25.0 in args.sigmas else args.sigmas[len(args.sigmas) // 2])
            plot(result["results"], args.plot, sigma)
            log.info("plot written to %s", args.plot)
    if args.gray:
        protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
        run_peer_modes(args, result, "gray", lambda done: run_gray(args.gray, args.sigmas, protocols, args.limit, args.peer_limit,
                                                                    load_weights(args.weights), args.precision, done, args.realism_sweep),
                       gray_markdown)
    if args.real:
        run_peer_modes(args, result, "real", lambda done: run_real(args.real, args.limit, args.peer_limit, load_weights(args.weights),
                                                                    args.precision, args.realism_sweep, args.real_ensemble), real_markdown)
    if args.grid_real:
        methods = [m.strip() for m in args.grid_methods.split(",") if m.strip()]
        result["grid"] = {"file": str(args.grid_out), "crop": args.grid_crop, "columns": ["noisy", *methods],
                          "images": real_grid(args.grid_real, args.grid_out, args.weights, methods, args.grid_crop, args.limit, args.tile, args.precision)}
        log.info("grid written to %s", args.grid_out)
    if args.brightness_check:
        rows = brightness_check(args.weights)
        result["brightness"] = rows
        print("| image | " + " | ".join(f"strength {k}" for k in rows[0] if k != "image") + " |")
        print("|---" * len(rows[0]) + "|")
        for row in rows:
            print(f"| {row['image']} | " + " | ".join(f"{v:.2f}" for k, v in row.items() if k != "image") + " |")
    if args.realism_crops:
        realisms = args.realism_sweep or [0.0, 0.5, 1.0]
        result["realism_crops"] = {"file": str(args.realism_crops), "realisms": realisms,
                                   "rows": realism_crops(args.crop_photos, tuple(args.crop_real) if args.crop_real else None,
                                                         args.realism_crops, args.weights, realisms, precision=args.precision)}
        for row in result["realism_crops"]["rows"]:
            print(row)
    if args.memory_check:
        mem = runner(memory_check, args.weights, args.tile, args.threads, args.precision)
        result["memory_check"] = mem
        print(f"24-megapixel check: {mem['width']}x{mem['height']} in {mem['seconds']:.1f} s "
              f"({mem['sec_per_mp']:.3g} s/MP), peak RSS {mem['peak_rss_mb']:.0f} MB "
              f"(process before the image: {mem['rss_before_mb']:.0f} MB)")
    if args.output:
        write_json(args.output, result)
        log.info("results written to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
