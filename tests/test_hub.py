"""Loading weights: local folders, strict safetensors-only loading, interpolation, and the Hub path
(real huggingface_hub code against a pre-filled cache in offline mode, a closed port, a silent
server and a local server that answers "not found")."""

import http.server
import json
import logging
import shutil
import socket
import threading
import time

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from ganlib import hub
from ganlib.hub import Weights, WeightsError, load_weights
from ganlib.models import Generator, GeneratorConfig

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def tiny(seed: int, widths=(8, 16), blocks=(1, 1)) -> Generator:
    torch.manual_seed(seed)
    return Generator(GeneratorConfig(widths=list(widths), blocks=list(blocks))).eval()


def same_weights(a: Generator, b: Generator) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def pair(tmp_path):
    """A weights folder with fidelity/ and gan/ (different random inits) and the original models."""
    fid, gan = tiny(1), tiny(2)
    fid.save_pretrained(tmp_path / "w" / "fidelity")
    gan.save_pretrained(tmp_path / "w" / "gan")
    return tmp_path / "w", fid, gan


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """An isolated Hugging Face cache. huggingface_hub reads HF_* variables once at import, so the
    constants module is patched as well as the environment."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("GANLIB_REVISION", raising=False)
    monkeypatch.delenv("GANLIB_WEIGHTS", raising=False)
    return cache


def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def online(monkeypatch, endpoint: str):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def fill_cache(cache, repo_id: str, commit: str, folder, ref: str | None = None):
    """The layout snapshot_download leaves behind: models--user--repo/snapshots/<commit>/..., refs/<ref>."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- local folders


def test_load_folder_with_fidelity_and_gan(pair):
    folder, fid, gan = pair
    w = load_weights(folder)
    assert same_weights(w.fidelity, fid) and same_weights(w.gan, gan)
    assert w.source == str(folder)
    assert not w.fidelity.training


def test_load_plain_generator_folder(pair):
    folder, fid, _ = pair
    w = load_weights(str(folder / "fidelity"))
    assert same_weights(w.fidelity, fid) and w.gan is None
    assert w.generator(0) is w.fidelity
    with pytest.raises(ValueError, match="GAN weights"):
        w.generator(0.5)


def test_interpolation(pair):
    folder, fid, gan = pair
    w = load_weights(folder)
    assert same_weights(w.generator(0.0), fid)
    assert same_weights(w.generator(1.0), gan)
    half = w.generator(0.5)
    sf, sg = fid.state_dict(), gan.state_dict()
    for k, v in half.state_dict().items():
        assert torch.allclose(v, (sf[k] + sg[k]) / 2, atol=1e-7), k
    assert w.generator(0.5) is half  # cached
    third = w.generator(0.3)
    assert third is not half and not same_weights(third, half)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():  # a blend gives outputs between the endpoints' (for this tiny, near-linear net)
        assert not torch.allclose(half(x, 0.1), fid(x, 0.1))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            w.generator(bad)


def test_strict_loading_rejects_mismatched_tensors(tmp_path):
    folder = tmp_path / "bad"
    tiny(1).save_pretrained(folder)  # config.json says widths [8, 16]
    tiny(1, widths=(8, 32)).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(WeightsError, match="do not match config.json") as err:
        load_weights(folder)
    assert str(folder) in str(err.value)
    # missing tensors (one block more in the config than in the file) fail too
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["blocks"] = [1, 2]
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="do not match"):
        load_weights(tmp_path / "other")


def test_bad_config_and_mixed_stages(tmp_path, pair):
    folder, _, _ = pair
    (folder / "gan" / "config.json").write_text('{"widths": [8, 16], "blocks": [1, 1], "colour": 3}')
    with pytest.raises(WeightsError, match="gan: config.json is not a valid generator config"):
        load_weights(folder)
    shutil.rmtree(folder / "gan")
    tiny(3, widths=(8, 32)).save_pretrained(folder / "gan")
    with pytest.raises(WeightsError, match="different configs"):
        load_weights(folder)


def test_pickle_only_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    model = tiny(1)
    (folder / "config.json").write_text(json.dumps({"channels": 3, "widths": [8, 16], "blocks": [1, 1], "unshuffle": 2}))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    def no_pickles(*a, **k):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_pickles)
    with pytest.raises(WeightsError, match="pytorch_model.bin.*safetensors"):
        load_weights(folder)


def test_missing_and_empty_sources(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="no such folder"):
        load_weights(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no weights found"):
        load_weights(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightsError, match="must be a folder"):
        load_weights(tmp_path / "file")
    # nothing given and nothing bundled: say how to get weights
    monkeypatch.setattr(hub, "BUNDLED", tmp_path / "empty")
    monkeypatch.delenv("GANLIB_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="python -m train.train or pass --weights"):
        load_weights()


def test_defaults_from_environment(tmp_path, pair, monkeypatch):
    folder, fid, _ = pair
    monkeypatch.setenv("GANLIB_WEIGHTS", str(folder))
    assert same_weights(load_weights().fidelity, fid)
    monkeypatch.delenv("GANLIB_WEIGHTS")
    monkeypatch.setattr(hub, "BUNDLED", folder.resolve())
    w = load_weights()
    assert w.source == "checkpoints/ (bundled)" and same_weights(w.fidelity, fid)


# ----------------------------------------------------------------------------- the Hub


def test_hub_repo_from_prefilled_cache(pair, hf, monkeypatch):
    folder, fid, gan = pair
    other = folder.parent / "other"
    tiny(7).save_pretrained(other / "fidelity")
    fill_cache(hf, "user/repo", COMMIT_A, folder)
    fill_cache(hf, "user/repo", COMMIT_B, other, ref="main")
    offline(monkeypatch)
    calls = []
    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)

    w = load_weights("user/repo", revision=COMMIT_A)
    assert same_weights(w.fidelity, fid) and same_weights(w.gan, gan)
    assert w.source == f"user/repo@{COMMIT_A[:12]}"
    (args, kwargs), = calls
    assert args == ("user/repo",) and kwargs["revision"] == COMMIT_A
    assert "fidelity/model.safetensors" in kwargs["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt", "*")) for p in kwargs["allow_patterns"])

    # a branch name goes through refs/; the revision defaults to GANLIB_REVISION, then 'main'
    w = load_weights("user/repo", revision="main")
    assert w.source == f"user/repo@{COMMIT_B[:12]}" and w.gan is None
    monkeypatch.setenv("GANLIB_REVISION", COMMIT_A)
    assert same_weights(load_weights("user/repo").fidelity, fid)
    monkeypatch.delenv("GANLIB_REVISION")
    assert load_weights("user/repo").source == f"user/repo@{COMMIT_B[:12]}"


def test_offline_repo_not_cached_falls_back(pair, hf, monkeypatch, caplog):
    folder, fid, _ = pair
    offline(monkeypatch)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        w = load_weights("user/not-cached", revision="main", fallback=folder)
    assert time.monotonic() - t0 < 5
    assert same_weights(w.fidelity, fid) and w.source == str(folder)
    assert any("offline" in r.getMessage() and str(folder) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        load_weights("user/not-cached", fallback=None)
    with pytest.raises(WeightsError, match="has no weights"):
        load_weights("user/not-cached", fallback=folder.parent / "nothing-here")


def test_closed_port_falls_back_quickly(pair, hf, monkeypatch, caplog):
    folder, fid, gan = pair
    online(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        w = load_weights("user/repo", revision="main", fallback=folder)
    assert time.monotonic() - t0 < 5
    assert same_weights(w.fidelity, fid)
    assert any("unreachable" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    # ... but a copy in the HF cache wins over the fallback
    fill_cache(hf, "user/repo", COMMIT_A, folder / "gan", ref="main")
    w = load_weights("user/repo", revision="main", fallback=folder)
    assert w.source == f"user/repo@{COMMIT_A[:12]}" and same_weights(w.fidelity, gan)


def test_silent_server_times_out_and_falls_back(pair, hf, monkeypatch, caplog):
    folder, fid, _ = pair
    with socket.socket() as server:  # accepts connections (kernel backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        online(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("GANLIB_HUB_TIMEOUT", "0.5")
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="ganlib"):
            w = load_weights("user/repo", revision="main", fallback=folder)
        assert time.monotonic() - t0 < 5
    assert same_weights(w.fidelity, fid)
    assert any("unreachable" in r.getMessage() for r in caplog.records)


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Answers like the Hub does for a missing repo, or a missing revision of user/repo."""

    def do_GET(self):
        code = "RevisionNotFound" if self.path.startswith("/api/models/user/repo/") else "RepoNotFound"
        body = json.dumps({"error": code}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_unknown_repo_or_revision_is_an_error_not_a_fallback(pair, hf, monkeypatch):
    folder, _, _ = pair
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        online(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(WeightsError, match="no such model repo"):
            load_weights("user/typo", revision="main", fallback=folder)
        with pytest.raises(WeightsError, match="no revision 'v9'"):
            load_weights("user/repo", revision="v9", fallback=folder)
    finally:
        server.shutdown()
        server.server_close()


def test_weights_dataclass_direct():
    w = Weights(fidelity=tiny(1), gan=tiny(2), source="mem")
    assert w.generator() is w.fidelity and w.generator(1) is w.gan


def test_loaded_models_are_channels_last_and_still_save(pair, tmp_path):
    folder, fid, _ = pair
    w = load_weights(folder)
    for model in (w.fidelity, w.gan, w.generator(0.5)):
        assert model.head.weight.is_contiguous(memory_format=torch.channels_last)
        assert not model.head.weight.is_contiguous()  # really re-laid out (a 3x3 conv over 13 channels)
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.allclose(w.fidelity(x, 0.1), fid(x, 0.1), atol=1e-5)
    w.generator(0.5).save_pretrained(tmp_path / "again")  # safetensors needs contiguous tensors
    again = load_weights(tmp_path / "again")
    assert same_weights(again.fidelity, w.generator(0.5))


def test_estimator_folder_is_loaded_strictly_and_from_the_hub(pair, hf, monkeypatch):
    from ganlib.models import EstimatorConfig, NoiseEstimator

    folder, fid, _ = pair
    assert load_weights(folder).estimator is None  # optional: the wavelet estimate is used without it
    torch.manual_seed(3)
    est = NoiseEstimator(EstimatorConfig(width=8))
    est.save_pretrained(folder / "estimator")
    w = load_weights(folder)
    assert same_weights(w.estimator, est) and not w.estimator.training
    fill_cache(hf, "user/repo", COMMIT_A, folder)  # the Hub path fetches estimator/ too
    offline(monkeypatch)
    assert same_weights(load_weights("user/repo", revision=COMMIT_A).estimator, est)

    (folder / "estimator" / "config.json").write_text('{"width": 8, "depth": 3}')
    with pytest.raises(WeightsError, match="estimator: config.json is not a valid noise-estimator config"):
        load_weights(folder)
    NoiseEstimator(EstimatorConfig(channels=1, width=8)).save_pretrained(folder / "estimator")
    with pytest.raises(WeightsError, match="estimator/ is for 1-channel images, the generator for 3"):
        load_weights(folder)
    NoiseEstimator(EstimatorConfig(width=8)).save_pretrained(folder / "estimator")
    (folder / "estimator" / "config.json").write_text('{"width": 16}')
    with pytest.raises(WeightsError, match="do not match config.json"):
        load_weights(folder)


def test_gray_folder_is_the_base_for_gray_photos_and_blends_with_gan(pair, hf, monkeypatch):
    folder, fid, gan = pair
    assert load_weights(folder).gray is None  # optional: gray photos then use fidelity/
    gray = tiny(4)
    gray.save_pretrained(folder / "gray")
    w = load_weights(folder)
    assert same_weights(w.gray, gray) and not w.gray.training
    assert w.base(gray=True) is w.gray and w.base() is w.fidelity
    assert w.generator(0.0, gray=True) is w.gray and w.generator(0.0) is w.fidelity
    colour_half, gray_half = w.generator(0.5), w.generator(0.5, gray=True)
    sg, sa, sf = gray.state_dict(), gan.state_dict(), fid.state_dict()
    for k, v in gray_half.state_dict().items():  # the GAN stage's change (GAN - fidelity) added to the gray model
        assert torch.allclose(v, sg[k] + 0.5 * (sa[k] - sf[k]), atol=1e-6), k
    assert not same_weights(colour_half, gray_half)  # each its own blend, not the cached other one
    assert w.generator(0.5, gray=True) is gray_half
    gray_end = w.generator(1.0, gray=True)  # the gray end is not the colour GAN
    for k, v in gray_end.state_dict().items():
        assert torch.allclose(v, sg[k] + sa[k] - sf[k], atol=1e-6), k
    assert w.generator(1.0) is w.gan

    fill_cache(hf, "user/repo", COMMIT_A, folder)  # the Hub path fetches gray/ too
    offline(monkeypatch)
    assert same_weights(load_weights("user/repo", revision=COMMIT_A).gray, gray)

    tiny(4, widths=(8, 8)).save_pretrained(folder / "gray")
    with pytest.raises(WeightsError, match="gray/ and fidelity/ have different configs"):
        load_weights(folder)


def test_weights_to_moves_every_network_and_drops_the_cached_blend(pair):
    from ganlib.models import EstimatorConfig, NoiseEstimator

    folder, _, _ = pair
    tiny(4).save_pretrained(folder / "gray")
    NoiseEstimator(EstimatorConfig(width=8)).save_pretrained(folder / "estimator")
    w = load_weights(folder)
    w.generator(0.5)
    assert w.to("meta") is w and w._blend is None
    for model in (w.fidelity, w.gan, w.estimator, w.gray):
        assert all(p.device.type == "meta" for p in model.parameters())
