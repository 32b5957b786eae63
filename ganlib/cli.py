"""Command line: `python -m ganlib denoise ...` and `python -m ganlib noise ...`.

denoise INPUT... -o OUTPUT [--sigma auto|S] [--weights SRC] [--revision R] [--realism A] [--tile N] [--precision P] [--ensemble] [--overwrite]
    INPUTs are image files or folders (a folder contributes the image files directly inside it, not
    its subfolders). Each result is written losslessly to OUTPUT/<stem>.png, or to OUTPUT itself when it
    names a .png file and one image is given (alpha, 16-bit, ICC and
    EXIF kept; the EXIF orientation is applied to the pixels and reset to 1; EXIF that cannot be kept
    is reported in one line). Inputs are never overwritten; an existing output is skipped unless --overwrite. A bad
    input is reported on one line (`error: <file>: <reason>`) and the others are still processed.
noise INPUT -o OUTPUT --kind KIND [--sigma S] [--amount A] [--peak P] [--quality Q] [--seed N] [--overwrite]
    Writes a noisy copy of INPUT as a PNG (OUTPUT may be a folder: OUTPUT/<stem>.png).

Exit status: 0 all done, 1 some input or the weights failed, 2 usage error, 130 interrupted.
Messages and the progress bar go to stderr; expected errors never print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("ganlib.cli")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}


def _number(text: str, *, low: float = 0.0, high: float = math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise argparse.ArgumentTypeError(f"{text} is out of range [{low:g}, {high:g}]")
    return value


def _sigma(text: str) -> float | None:
    return None if text.strip().lower() == "auto" else _number(text)


def _realism(text: str) -> float:
    return _number(text, high=1.0)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ganlib", description="GAN image denoiser: remove noise from photos, or add synthetic noise.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{denoise,noise}")

    d = sub.add_parser("denoise", help="denoise image files or folders",
                       description="Denoise images; results go to OUTPUT/<stem>.png, or for one image to OUTPUT when it names a .png file.")
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or folders of images (not searched recursively)")
    d.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="folder for the results (created if needed), or a .png file when one image is given")
    d.add_argument("--sigma", type=_sigma, default=None, metavar="auto|S", help="noise level on the 0-255 scale, or 'auto' to estimate it per image (default)")
    d.add_argument("--weights", default=None, metavar="SRC", help="weights folder or Hub repo id (default: env GANLIB_WEIGHTS, else bundled checkpoints/)")
    d.add_argument("--revision", default=None, metavar="R", help="Hub revision (commit, tag or branch) to pin (default: env GANLIB_REVISION, else main)")
    d.add_argument("--realism", type=_realism, default=0.0, metavar="A", help="0 = fidelity model (default); up to 1 = more GAN texture and fine detail (see restore)")
    d.add_argument("--tile", type=_count, default=512, metavar="N", help="tile side in pixels, bounds memory (0 = whole image at once; default 512)")
    d.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",  # = inference.PRECISIONS; torch stays unimported here
                   help="auto (default): bfloat16 where the CPU/GPU runs it natively (about 2.5x faster, -0.01 dB), else float32")
    d.add_argument("--ensemble", action="store_true", help="average the 8 flips/rotations: 8x the time for about +0.2 dB")
    d.add_argument("--stride", type=int, choices=(1, 2, 3, 4), default=1, metavar="N",
                   help="pixel-shuffle stride: 2 for the blotchy noise of camera and phone photos (default 1: fine-grained noise)")
    d.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never replaced)")

    n = sub.add_parser("noise", help="add synthetic noise to an image", description="Write a noisy copy of an image as PNG.")
    n.add_argument("input", metavar="INPUT", help="image file")
    n.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output .png file, or a folder (OUTPUT/<stem>.png)")
    n.add_argument("--kind", required=True, choices=_kinds(), help="noise model")
    n.add_argument("--sigma", type=_number, default=None, metavar="S", help="gaussian/camera: std on the 0-255 scale; speckle: multiplicative std")
    n.add_argument("--amount", type=lambda t: _number(t, high=1.0), default=None, metavar="A", help="salt_pepper: fraction of pixels replaced")
    n.add_argument("--peak", type=_number, default=None, metavar="P", help="poisson/camera: photons at full white (lower = noisier)")
    n.add_argument("--quality", type=_count, default=None, metavar="Q", help="camera: JPEG quality 1-100 (default: no JPEG)")
    n.add_argument("--seed", type=_count, default=0, metavar="N", help="random seed (default 0: the same noise every run)")
    n.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (never the input)")
    return parser


def _kinds() -> tuple[str, ...]:
    from .noise import KINDS

    return KINDS


class _TqdmHandler(logging.Handler):
    """Log lines on stderr that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname.lower()}: {msg}"
        tqdm.write(msg, file=sys.stderr)


def _setup_logging() -> tuple[logging.Handler, int, int]:
    """Warnings from every library, info from ganlib, on stderr; undone by `_restore_logging`."""
    root, ours = logging.getLogger(), logging.getLogger("ganlib")
    handler = _TqdmHandler()
    handler.setLevel(logging.INFO)
    state = (handler, root.level, ours.level)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    ours.setLevel(logging.INFO)
    return state


def _restore_logging(state: tuple[logging.Handler, int, int]) -> None:
    handler, root_level, our_level = state
    logging.getLogger().removeHandler(handler)
    logging.getLogger().setLevel(root_level)
    logging.getLogger("ganlib").setLevel(our_level)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: reported as one line, never a traceback."""
    from .hub import WeightsError

    try:
        from .images import ImageError
    except ImportError:  # pragma: no cover - images.py always defines it
        ImageError = ValueError  # noqa: N806
    return (ImageError, WeightsError, ValueError, OSError, RuntimeError)


def _message(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file or folder"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _collect(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named or found (non-recursively) in the named folders, and per-input failures."""
    files, failures = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((item, "folder holds no image files (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            failures.append((item, "no such file or folder"))
    unique, seen = [], set()
    for f in files:  # the same file named twice (or through a folder) is processed once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, failures


def _fail(failures: list[tuple[str, str]], name: str, reason: str) -> None:
    failures.append((name, reason))
    log.error("%s: %s", name, reason)


def run_denoise(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .hub import load_weights
    from .images import load_image, save_image
    from .inference import denoise_image

    files, failures = _collect(args.inputs)
    for name, reason in failures:
        log.error("%s: %s", name, reason)
    if not files:
        log.error("no images to denoise")
        return 1
    outdir, single = Path(args.output), None  # single: -o names the one result's file
    if not outdir.is_dir() and outdir.suffix.lower() in IMAGE_SUFFIXES:
        if outdir.suffix.lower() != ".png":
            log.error("%s: results are saved losslessly as PNG; name a .png file or a folder", outdir)
            return 1
        if len(files) != 1:
            log.error("%s names one file, but %d images were given; name a folder for them", outdir, len(files))
            return 1
        outdir, single = outdir.parent, outdir
    elif outdir.exists() and not outdir.is_dir():
        log.error("%s: the output must be a folder or a .png file name, and this is another file", outdir)
        return 1
    errors = _expected_errors()
    try:
        weights = load_weights(args.weights, revision=args.revision)
        weights.generator(args.realism)  # fail now, not once per file, when realism needs missing GAN weights
    except errors as e:
        log.error("%s", _message(e))
        return 1
    if torch.cuda.is_available():
        weights.to("cuda")
    outdir.mkdir(parents=True, exist_ok=True)
    inputs = {f.resolve() for f in files}
    written: dict[Path, Path] = {}
    skipped = 0
    for path in tqdm(files, desc="denoise", unit="image", file=sys.stderr, disable=None):
        out = single or outdir / f"{path.stem}.png"
        key = out.resolve()
        if key in inputs:
            _fail(failures, str(path), f"the output {out} would replace an input file; choose another -o")
            continue
        if key in written:
            _fail(failures, str(path), f"the output {out} was already written from {written[key]} (same file name)")
            continue
        if out.exists() and not args.overwrite:
            log.info("skip %s: %s exists (use --overwrite to replace it)", path, out)
            skipped += 1
            continue
        try:
            image = load_image(path)
            for note in getattr(image, "notes", []):
                log.warning("%s: %s", path, note)
            result = denoise_image(weights, image, sigma=args.sigma, realism=args.realism, tile=args.tile or None, precision=args.precision, ensemble=args.ensemble,
                                  stride=args.stride)
            save_image(result, out)
        except errors as e:
            _fail(failures, str(path), _message(e))
            continue
        written[key] = path
    log.info("wrote %d of %d image(s) to %s%s", len(written), len(files), single or outdir, f", skipped {skipped} existing" if skipped else "")
    if failures:  # the summary repeats each failure once, indented, after the progress bar
        lines = [f"failed: {len(failures)} input(s):"] + [f"  {name}: {reason}" for name, reason in failures]
        print("\n".join(lines), file=sys.stderr)
        return 1
    return 0


def run_noise(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .noise import DEFAULTS, add_noise

    params = {"sigma": args.sigma, "amount": args.amount, "peak": args.peak, "quality": args.quality}
    given = {k: v for k, v in params.items() if v is not None}
    wrong = sorted(set(given) - set(DEFAULTS[args.kind]))
    if wrong:
        takes = ", ".join(f"--{k}" for k in DEFAULTS[args.kind] if k in params) or "no options"
        parser.error(f"--kind {args.kind} takes {takes}, not {', '.join('--' + k for k in wrong)}")
    from .images import load_image, save_image

    src, out = Path(args.input), Path(args.output)
    if out.is_dir():
        out = out / f"{src.stem}.png"
    elif out.suffix == "":
        out = out.with_suffix(".png")
    if out.suffix.lower() != ".png":
        parser.error(f"OUTPUT {args.output} must end in .png (the noisy image is saved losslessly) or be a folder")
    if out.exists() and out.resolve() == src.resolve():
        log.error("%s: the output would replace the input; choose another OUTPUT", src)
        return 1
    if out.exists() and not args.overwrite:
        log.error("%s exists; use --overwrite to replace it", out)
        return 1
    try:
        image = load_image(src)
        noisy = add_noise(image.pixels, args.kind, seed=args.seed, **given)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(image.with_pixels(noisy), out)
    except _expected_errors() as e:
        log.error("%s: %s", src, _message(e))
        return 1
    log.info("wrote %s (%s noise, seed %d)", out, args.kind, args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # usage errors exit with status 2
        state = _setup_logging()
        try:
            return run_denoise(args) if args.command == "denoise" else run_noise(args, parser)
        finally:
            _restore_logging(state)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
