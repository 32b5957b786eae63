"""Bounded load test of the demo's `/denoise` endpoint on localhost (not part of the fast test run).

Starts `app.py` (this interpreter) on a free port as a subprocess, sends `--requests` requests from `--clients`
concurrent gradio_client clients (a synthetic image with gaussian noise), then reports p50/p95 latency,
the error count (must be 0) and the server's peak resident memory (VmHWM from /proc).

    .venv/bin/python -m tests.load_test                                  # bundled weights (or GANLIB_WEIGHTS)
    .venv/bin/python -m tests.load_test --weights random --requests 32 --clients 8 --size 512
    .venv/bin/python -m tests.load_test --weights tiny --requests 8      # quick smoke run

--weights: a folder / Hub repo id (as GANLIB_WEIGHTS), `random` (the shipped architecture with random
weights: same speed and memory as the trained model) or `tiny` (a tiny random model). The clients must
not outnumber the server's queue (GANLIB_QUEUE_SIZE, default 16) plus its concurrency, or requests
are turned away ("queue is full") and counted as errors. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size of a process (Linux /proc VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _make_weights(kind: str, folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    import torch

    from ganlib.models import Generator, GeneratorConfig

    config = GeneratorConfig() if kind == "random" else GeneratorConfig(widths=[8, 16], blocks=[1, 1])
    torch.manual_seed(0)
    Generator(config).save_pretrained(folder / "fidelity")
    return folder


def _make_image(path: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    arr = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.sin(12 * x * y)], -1)
    Image.fromarray((arr * 255).round().astype(np.uint8)).save(path)
    return path


def run_load(requests: int = 32, clients: int = 8, size: int = 512, weights: str | None = None, timeout: float = 600) -> dict:
    """Run the load test; returns {'requests', 'clients', 'size', 'errors', 'p50_s', 'p95_s', 'max_s', 'wall_s', 'peak_rss_mb', ...}."""
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="ganlib-load-"))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    if weights in ("random", "tiny"):
        env["GANLIB_WEIGHTS"] = str(_make_weights(weights, work / "weights"))
    elif weights:
        env["GANLIB_WEIGHTS"] = weights
    port = _free_port()
    env["GRADIO_SERVER_PORT"] = str(port)
    image = _make_image(work / "load.png", size)
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}; see {work / 'server.log'}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"the server did not come up in 180 s; see {work / 'server.log'}") from None
                time.sleep(0.5)
        rss_idle = _peak_rss_mb(server.pid)

        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        todo = list(range(requests))

        def worker() -> None:
            client = Client(url, verbose=False)
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                t0 = time.perf_counter()
                try:
                    _, metrics = client.predict(
                        image=handle_file(str(image)), noise_kind="gaussian", sigma=25, seed=i, api_name="/denoise"
                    )
                    if "psnr_denoised" not in metrics:
                        raise RuntimeError(f"no metrics in the answer: {metrics}")
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        hung = sum(t.is_alive() for t in threads)
        if hung:
            errors.append(f"{hung} client(s) still waiting after {timeout:.0f} s")
        lat = sorted(latencies)
        q = statistics.quantiles(lat, n=20, method="inclusive") if len(lat) >= 2 else lat * 19
        return {
            "requests": requests,
            "clients": clients,
            "size": f"{size}x{size}",
            "ok": len(lat),
            "errors": len(errors),
            "error_messages": sorted(set(errors))[:5],
            "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": round(q[18], 3) if lat else None,
            "max_s": round(lat[-1], 3) if lat else None,
            "wall_s": round(wall, 2),
            "throughput_per_s": round(len(lat) / wall, 3) if wall > 0 else None,
            "idle_rss_mb": round(rss_idle, 1) if rss_idle else None,
            "peak_rss_mb": round(_peak_rss_mb(server.pid) or 0, 1) or None,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.slow
def test_load_short():
    """A short version (tiny model, 8 requests from 4 clients): zero errors, latencies reported."""
    r = run_load(requests=8, clients=4, size=128, weights="tiny", timeout=240)
    assert r["errors"] == 0, r["error_messages"]
    assert r["ok"] == 8 and 0 < r["p50_s"] <= r["p95_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--size", type=int, default=512, help="side of the square test image, pixels")
    ap.add_argument("--weights", default=None, help="folder or Hub repo id, 'random' or 'tiny' (default: GANLIB_WEIGHTS or bundled)")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args(argv)
    r = run_load(a.requests, a.clients, a.size, a.weights, a.timeout)
    print(
        f"{r['ok']}/{r['requests']} ok from {r['clients']} concurrent clients, {r['size']} images: "
        f"p50 {r['p50_s']} s, p95 {r['p95_s']} s, max {r['max_s']} s, wall {r['wall_s']} s "
        f"({r['throughput_per_s']} req/s), errors {r['errors']}, server peak RSS {r['peak_rss_mb']} MB (idle {r['idle_rss_mb']} MB)"
    )
    for msg in r["error_messages"]:
        print("  error:", msg)
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
