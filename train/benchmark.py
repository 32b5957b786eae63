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
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ganlib.images import load_image, to_numpy, to_pil, to_tensor
from ganlib.inference import PRECISIONS, denoise, estimate_sigma, resolve_precision
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

        model = load_weights(weights_source).generator(realism)
        model.eval()
        ensemble = method.endswith("+x8")
        return lambda noisy, sigma: denoise(model, noisy, sigma, tile=tile, precision=precision, ensemble=ensemble)
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
               weights: str | None, tile: int, threads: int, precision: str = "auto") -> list[dict]:
    """All measurements of one method; meant to run in a fresh process (see `measure`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
        import cv2

        cv2.setNumThreads(threads)
    fn = make_method(method, weights, tile, precision)
    warm = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fn(warm, 25.0)  # first-call costs (allocators, kernels) are not the method's speed
    can_reset = reset_peak()
    records = []
    for folder in sets:
        paths = list_set(folder, limit)
        cells = {(p, s): {"psnr": [], "ssim": [], "detail": [], "seconds": 0.0, "pixels": 0, "peak": 0.0} for p in protocols for s in sigmas}
        bar = tqdm(total=len(paths) * len(cells), desc=f"{method} on {Path(folder).name}", dynamic_ncols=True, leave=False)
        for i, path in enumerate(paths):
            clean = load_rgb(path)
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
        return (method, args.data, args.sigmas, protocols, args.limit, args.weights, args.tile, args.threads, args.precision)

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
            collect(m, lambda: run_method(*params(m)))
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
        lines.append("| method | " + " | ".join(f"sigma {s:g}" for s in sigmas) + f" | detail @{mid:g} | s/MP | peak MB |")
        lines.append("|---|" + "---|" * len(sigmas) + "---|---|---|")
        for m in methods:
            cells = {r["sigma"]: r for r in rows if r["method"] == m}
            peaks = [c["peak_mb"] for c in cells.values() if c["peak_mb"] is not None]
            peak = f"{max(peaks):.0f}" if peaks else "n/a"
            detail = f"{cells[mid]['detail']:.3f}" if mid in cells and "detail" in cells[mid] else "n/a"
            lines.append(f"| {m} | {_quality_cells(cells, sigmas)} | {detail} | {_speed(cells):.3g} | {peak} |")
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
    out = [f"{CARD_SECTION} (`python -m train.benchmark`, standard protocol: AWGN in floating point, "
           "seed = image index, no clipping)", ""]
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

    estimator = load_weights(weights).estimator  # the demo's automatic strength (wavelet MAD if none)
    fns = {}
    for m in methods:
        try:
            fns[m] = make_method(m, weights, tile, precision)
        except (SystemExit, ValueError) as err:
            log.warning("grid: leaving out %s (%s)", m, err)
    rows, info = [], []
    for path in tqdm(list_set(folder, limit), desc="real grid", dynamic_ncols=True):
        image = load_rgb(path)
        sigma = estimate_sigma(image, estimator)
        h, w = image.shape[-2:]
        side = min(crop, h, w)
        y, x = (h - side) // 2, (w - side) // 2
        noisy = image[..., y : y + side, x : x + side].contiguous()
        tiles = [noisy] + [fn(noisy, sigma) for fn in fns.values()]
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
    lines = ["| noise (clipped, 8-bit) | true sigma | wavelet estimate (mean abs error) | learned estimate (mean abs error) "
             "| PSNR at true sigma | PSNR at wavelet | PSNR at learned |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['true']:.2f} | {r['wavelet']:.2f} ({r['err_wavelet']:.2f}) | {r['learned']:.2f} ({r['err_learned']:.2f}) "
                     f"| {r['psnr_true']:.2f} | {r['psnr_wavelet']:.2f} | {r['psnr_learned']:.2f} |")
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
    p.add_argument("--grid-methods", default="ours,ours-gan,cbm3d")
    p.add_argument("--auto-check", action="store_true", help="with --data: the automatic strength (estimated vs true noise level, PSNR at each)")
    p.add_argument("--memory-check", action="store_true", help="peak memory of a 6000x4000 photo through our tiled inference")
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
    if not (args.data or args.grid_real or args.memory_check or args.tune_nlm or args.cards):
        p.error("nothing to do: give --data, --grid-real, --memory-check, --tune-nlm or --cards")
    return args


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
    if args.grid_real:
        methods = [m.strip() for m in args.grid_methods.split(",") if m.strip()]
        result["grid"] = {"file": str(args.grid_out), "crop": args.grid_crop, "columns": ["noisy", *methods],
                          "images": real_grid(args.grid_real, args.grid_out, args.weights, methods, args.grid_crop, args.limit, args.tile, args.precision)}
        log.info("grid written to %s", args.grid_out)
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
