"""``nas-predict``: the top-5 classes of image files under a trained network.

    nas-predict runs/small-proxy cat.jpg dog.png            # a nas-train output folder
    nas-predict mobilenet_v3_small.pth --arch small --classes imagenet_classes.txt photo.jpg

A ``nas-train`` folder carries everything: the network (``summary.yaml``'s one-line spec),
its class names and the resolution it was trained at, and the weights (``model.pth``). For
any other state_dict (e.g. torchvision's ``.pth`` on disk) give ``--arch`` (a canonical name or
bneck YAML) and ``--classes`` (a text file, one class name per line, in output order).
Images are resized to the training resolution (small images, as in training, are upsampled;
larger ones are resized and centre-cropped the ImageNet way) and normalised with ImageNet's
statistics, as the training pipeline does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nas.errors import NASError

class PredictError(NASError, ValueError):
    """The model, its classes or an image cannot be used (the message names the file)."""


def _load_run(folder: Path) -> tuple[Any, dict[str, Any], list[str], int]:
    """(spec, state_dict path, classes, resolution) from a nas-train output folder."""
    import yaml

    from nas.arch.codecs import from_string

    summary_path, weights = folder / "summary.yaml", folder / "model.pth"
    for path in (summary_path, weights):
        if not path.is_file():
            raise PredictError(f"{path}: missing; a nas-train output folder holds summary.yaml "
                               "and model.pth")
    summary = yaml.safe_load(summary_path.read_text(encoding="utf-8"))
    if not isinstance(summary, dict) or not summary.get("arch_string") or not summary.get("classes"):
        raise PredictError(f"{summary_path}: lacks arch_string or classes (written by an older "
                           "nas-train? pass the .pth with --arch and --classes)")
    spec = from_string(summary["arch_string"])
    return spec, weights, list(summary["classes"]), int(summary.get("resolution") or spec.resolution)


def _read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise PredictError(f"{path}: no such class-name file")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise PredictError(f"{path}: no class names (one per line expected)")
    return names


def _image(path: Path, resolution: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    from nas.training.transforms import eval_transform

    try:
        with Image.open(path) as img:
            image = img.convert("RGB")
    except FileNotFoundError:
        raise PredictError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"{path}: cannot decode image ({err})") from None
    # Small images were upsampled in training; large ones get the ImageNet resize + crop.
    augment = "pad_crop" if min(image.size) <= resolution else "resized_crop"
    return eval_transform(resolution, augment)(image)


def predict(args: argparse.Namespace) -> list[tuple[str, list[tuple[str, float]]]]:
    """``[(image, [(class, probability) x k])]`` for every image of ``args``."""
    import torch

    from nas.arch.codecs import load_spec
    from nas.models.builder import build_model
    from nas.training.train import load_weights

    torch.set_num_threads(args.threads)
    source = Path(args.model)
    if source.is_dir():
        spec, weights, classes, resolution = _load_run(source)
    else:
        if args.arch is None or args.classes is None:
            raise PredictError(f"{source}: a state_dict file needs --arch and --classes "
                               "(or give a nas-train output folder)")
        spec, weights = load_spec(args.arch), source
        classes, resolution = _read_classes(Path(args.classes)), spec.resolution
    model = build_model(spec, num_classes=len(classes))
    reinitialised = load_weights(model, weights)
    if reinitialised:
        raise PredictError(f"{weights}: its classifier has another class count than the "
                           f"{len(classes)} class names given")
    model.eval()
    results = []
    with torch.no_grad():
        for image_path in args.images:
            logits = model(_image(Path(image_path), resolution)[None])
            probs = logits.softmax(dim=1)[0]
            top = probs.topk(min(args.top, len(classes)))
            results.append((image_path, [(classes[i], float(p)) for p, i in
                                         zip(top.values.tolist(), top.indices.tolist())]))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a nas-train output folder, or a state_dict .pth")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--arch", help="with a .pth: a canonical name or bneck YAML")
    parser.add_argument("--classes", help="with a .pth: class names, one per line")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from nas.arch.spec import SpecError
    from nas.training.train import WeightsError

    args = build_parser().parse_args(argv)
    try:
        results = predict(args)
    except (PredictError, SpecError, WeightsError) as err:
        print(f"nas-predict: error: {err}", file=sys.stderr)
        return 2
    for image, top in results:
        shown = ", ".join(f"{name} {100 * p:.1f}%" for name, p in top)
        print(f"{image}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
