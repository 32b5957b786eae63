"""Where the weights come from: the bundled checkpoints/ folder, any local folder, or a Hub repo.

A weights source (folder or Hub model repo) holds `fidelity/` and optionally `gan/`, each a
generator folder (config.json + model.safetensors, as `Generator.save_pretrained` writes it), and
optionally `estimator/` (a `NoiseEstimator` folder, used to set the strength automatically) and
`gray/` (a fidelity generator fine-tuned on gray photos only, used for them, as FFDNet and DRUNet ship
a gray model beside the colour one); a plain generator folder works too (fidelity only). Only safetensors are ever loaded, strictly:
a config.json that does not match its tensors is an error, never a partial load.

Hub downloads go through `huggingface_hub.snapshot_download`, pinned to a revision (argument,
else env GANLIB_REVISION, else 'main' with a logged note). The Hub is probed first with a short
timeout (env GANLIB_HUB_TIMEOUT, default 5 s): when it is unreachable (no network, timeout,
HF_HUB_OFFLINE=1, Hub errors) the local HF cache is used if it has the revision, otherwise the
`fallback` folder (bundled weights by default) with a logged warning. A repo or revision that the
Hub says does not exist is an error (WeightsError), not a silent fallback: a typo must not give
other weights than asked for.

`Weights.generator(realism)` blends the two stages by network interpolation (ESRGAN style): every
tensor of the state dict is lerped from the fidelity model (0, best PSNR) to the GAN model (1,
sharpest texture); `Weights.generator(realism, gray=True)` adds the same change (GAN minus fidelity)
to the gray model instead (task arithmetic).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import EstimatorConfig, Generator, GeneratorConfig, NoiseEstimator

log = logging.getLogger(__name__)

BUNDLED = Path(__file__).resolve().parent.parent / "checkpoints"
HUB_TIMEOUT = 5.0  # seconds to wait for the Hub before using the cache or the fallback
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_ALLOW = [prefix + name for prefix in ("", "fidelity/", "gan/", "estimator/", "gray/") for name in ("config.json", "model.safetensors", "README.md")]
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class WeightsError(ValueError):
    """Weights cannot be found or loaded; the message is one clear sentence naming the source."""


@dataclass
class Weights:
    """The fidelity generator, the optional GAN generator, the optional noise-level estimator, the
    optional generator for gray photos, and where they came from."""

    fidelity: Generator
    gan: Generator | None = None
    source: str = ""
    estimator: NoiseEstimator | None = None
    gray: Generator | None = None
    _blend: tuple[float, bool, Generator] | None = field(default=None, init=False, repr=False, compare=False)

    def base(self, gray: bool = False) -> Generator:
        """The fidelity (realism 0) generator: the gray model for gray photos when there is one."""
        return self.gray if gray and self.gray is not None else self.fidelity

    def generator(self, realism: float = 0.0, gray: bool = False) -> Generator:
        """The generator at `realism` in [0, 1]: 0 = fidelity (`base(gray)`), 1 = GAN. In between,
        the base's weights plus `realism` times the GAN stage's change (GAN minus fidelity): for colour
        that is the interpolation of the two (ESRGAN's network interpolation); for gray photos (gray=True:
        one channel, or R = G = B) the same adversarial change added to the gray model (task arithmetic,
        Ilharco et al. 2023), so that its end is the gray model with the GAN's texture, not the colour GAN.
        The last blended model is cached. Raises ValueError for realism outside [0, 1] or without GAN weights."""
        realism = float(realism)
        if not (math.isfinite(realism) and 0.0 <= realism <= 1.0):
            raise ValueError(f"realism must be between 0 and 1, got {realism}")
        base = self.base(gray)
        if realism == 0.0:
            return base
        if self.gan is None:
            raise ValueError(f"realism {realism} needs GAN weights, but {self.source or 'this source'} has only the fidelity model; use realism 0")
        uses_gray = base is not self.fidelity
        if realism == 1.0 and not uses_gray:
            return self.gan
        cached = self._blend
        if cached is not None and cached[:2] == (realism, uses_gray):
            return cached[2]
        start, fid, gan = base.state_dict(), self.fidelity.state_dict(), self.gan.state_dict()
        if uses_gray:
            mixed = {k: v + realism * (gan[k] - fid[k]) if v.is_floating_point() else v for k, v in start.items()}
        else:
            mixed = {k: torch.lerp(v, gan[k], realism) if v.is_floating_point() else v for k, v in start.items()}
        model = _for_inference(Generator(base.config).to(next(base.parameters()).device))
        model.load_state_dict(mixed, strict=True)
        self._blend = (realism, uses_gray, model)
        return model

    def to(self, device: str | torch.device) -> Weights:
        """Move every network to `device` (in place); returns self."""
        for model in (self.fidelity, self.gan, self.estimator, self.gray):
            if model is not None:
                model.to(device)
        self._blend = None
        return self


def _load_generator(folder: Path, label: str, cls: type = Generator) -> Generator:
    """Strictly load one generator folder (config.json + model.safetensors); `cls` NoiseEstimator
    loads an estimator folder the same way."""
    from safetensors.torch import load_file

    weights_file, config_file = folder / "model.safetensors", folder / "config.json"
    if not weights_file.is_file():
        pickles = sorted(p.name for pattern in _PICKLES for p in folder.glob(pattern))
        if pickles:
            raise WeightsError(
                f"{label}: found {', '.join(pickles)} but no model.safetensors; ganlib loads only safetensors "
                "(pickle files can run code), convert it with safetensors.torch.save_file"
            )
        raise WeightsError(f"{label}: no model.safetensors in this folder")
    if not config_file.is_file():
        raise WeightsError(f"{label}: model.safetensors has no config.json next to it")
    try:
        config = (EstimatorConfig if cls is NoiseEstimator else GeneratorConfig)(**json.loads(config_file.read_text()))
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError; unknown keys are a TypeError
        kind = "noise-estimator" if cls is NoiseEstimator else "generator"
        raise WeightsError(f"{label}: config.json is not a valid {kind} config ({e})") from None
    try:
        state = load_file(weights_file)
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        raise WeightsError(f"{label}: model.safetensors cannot be read ({e})") from None
    model = cls(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise WeightsError(f"{label}: the tensors in model.safetensors do not match config.json ({detail})") from None
    return _for_inference(model)


def _for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with channels_last weights: 5-15% faster convolutions on CPU (oneDNN), same results
    to 1e-6; the model still saves normally (`Generator._save_pretrained` writes contiguous copies)."""
    return model.to(memory_format=torch.channels_last).eval()


def _load_folder(folder: Path, label: str) -> Weights:
    """A folder with fidelity/ [+ gan/] subfolders, or itself a generator folder."""
    if (folder / "fidelity").is_dir():
        fidelity = _load_generator(folder / "fidelity", f"{label}/fidelity")
        gan = _load_generator(folder / "gan", f"{label}/gan") if (folder / "gan").is_dir() else None
        if gan is not None and gan.config != fidelity.config:
            raise WeightsError(f"{label}: fidelity/ and gan/ have different configs, so they cannot be interpolated")
        estimator = None
        if (folder / "estimator").is_dir():
            estimator = _load_generator(folder / "estimator", f"{label}/estimator", NoiseEstimator)
            if estimator.config.channels != fidelity.config.channels:
                raise WeightsError(f"{label}: estimator/ is for {estimator.config.channels}-channel images, the generator for {fidelity.config.channels}")
        gray = _load_generator(folder / "gray", f"{label}/gray") if (folder / "gray").is_dir() else None
        if gray is not None and gray.config != fidelity.config:
            raise WeightsError(f"{label}: gray/ and fidelity/ have different configs (gray/ must be fine-tuned from fidelity/)")
        return Weights(fidelity, gan, label, estimator, gray)
    if any((folder / name).exists() for name in ("model.safetensors", "config.json")) or any(any(folder.glob(p)) for p in _PICKLES):
        return Weights(_load_generator(folder, label), None, label)
    raise WeightsError(f"{label}: no weights found (expected fidelity/ and gan/ subfolders, or config.json + model.safetensors)")


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any((folder / sub / "model.safetensors").is_file() for sub in ("fidelity", ""))


def _label(folder: Path) -> str:
    return "checkpoints/ (bundled)" if folder.resolve() == BUNDLED else str(folder)


def _load_fallback(fallback: Path | None, reason: str) -> Weights:
    if fallback is None or not _has_weights(Path(fallback)):
        where = "no fallback was given" if fallback is None else f"the fallback {_label(Path(fallback))} has no weights"
        raise WeightsError(f"{reason}, and {where}")
    fallback = Path(fallback)
    log.warning("%s; using %s instead", reason, _label(fallback))
    return _load_folder(fallback, _label(fallback))


def _from_hub(repo_id: str, revision: str, fallback: Path | None) -> Weights:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    timeout = float(os.environ.get("GANLIB_HUB_TIMEOUT", HUB_TIMEOUT))
    unreachable = "offline mode is on (HF_HUB_OFFLINE)" if constants.is_offline_mode() else None
    if unreachable is None:
        try:  # a quick, bounded probe (the snapshot's own metadata calls have no timeout)
            revision = HfApi().model_info(repo_id, revision=revision, timeout=timeout).sha or revision
        except RevisionNotFoundError:
            raise WeightsError(f"{repo_id}: the Hub has no revision {revision!r} in this repo") from None
        except RepositoryNotFoundError:
            raise WeightsError(f"{repo_id}: no such model repo on the Hub (or it is private/gated and no valid token was given)") from None
        except HFValidationError as e:
            raise WeightsError(f"{repo_id!r} is not a valid Hub repo id ({e})") from None
        except Exception as e:  # connection refused, DNS, timeout, proxy, Hub 5xx: all mean "not reachable now"
            unreachable = f"the Hub is unreachable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_ALLOW, local_files_only=unreachable is not None, etag_timeout=timeout))
    except LocalEntryNotFoundError:  # includes an incomplete cached snapshot
        return _load_fallback(fallback, f"cannot load {repo_id}@{revision}: {unreachable} and it is not in the local Hugging Face cache")
    except (RevisionNotFoundError, RepositoryNotFoundError):
        raise WeightsError(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except Exception as e:  # the connection dropped during the download
        return _load_fallback(fallback, f"the download of {repo_id}@{revision} failed ({type(e).__name__}: {e})")
    if unreachable:
        log.warning("%s; using the cached copy of %s", unreachable, repo_id)
    return _load_folder(path, f"{repo_id}@{path.name[:12]}")


def load_weights(source: str | Path | None = None, *, revision: str | None = None, fallback: Path | None = BUNDLED) -> Weights:
    """Load generator weights from a local folder or a Hub repo id (see the module docstring).

    source None: env GANLIB_WEIGHTS, else the bundled checkpoints/. revision (Hub only): argument,
    else env GANLIB_REVISION, else 'main'. fallback: folder used when the Hub cannot be reached.
    Raises WeightsError (a ValueError) with one clear sentence when nothing usable is found.
    """
    if source is None or str(source) == "":
        source = os.environ.get("GANLIB_WEIGHTS") or None
    if source is None:
        if not _has_weights(BUNDLED):
            raise WeightsError(f"no weights found in {BUNDLED}: train with python -m train.train or pass --weights (a folder or Hub repo id)")
        source = BUNDLED
    folder = Path(source).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise WeightsError(f"{folder}: weights must be a folder (config.json + model.safetensors, or fidelity/ and gan/), not a file")
        weights = _load_folder(folder, _label(folder))
    elif isinstance(source, str) and _REPO_ID.fullmatch(source):
        if revision is None:
            revision = os.environ.get("GANLIB_REVISION") or None
        if revision is None:
            revision = "main"
            log.info("note: %s is not pinned to a revision (using 'main'); pass --revision or set GANLIB_REVISION", source)
        weights = _from_hub(source, revision, fallback)
    else:
        raise WeightsError(f"{source}: no such folder, and not a Hub repo id of the form user/name")
    parts = (["fidelity"] + ["gan"] * (weights.gan is not None) + ["estimator"] * (weights.estimator is not None)
             + ["gray"] * (weights.gray is not None))
    log.info("weights: %s (%s)", weights.source, " + ".join(parts))
    return weights
