"""``python -m nas``: the version and the commands, each with its one-line purpose."""

from __future__ import annotations

import sys

from nas import __version__

COMMANDS = {
    "nas-search": "the latency-aware platform search (Hydra app; the main job)",
    "nas-train": "train one network on a dataset or a named protocol (proxy, reference)",
    "nas-lut": "latency lookup tables: build, validate, calibrate, predict, off-host export/import",
    "nas-supernet": "train a weight-sharing supernet; extract sub-networks",
    "nas-netadapt": "NetAdapt refinement of a network to a latency target (Hydra app)",
    "nas-ablate": "the paper's ablations, ours beside its figures (Hydra app; -m for several)",
    "nas-arch": "bneck configs: show, export to ONNX, convert to timm/torchvision",
    "nas-study": "study storage maintenance (repair a torn journal)",
    "nas-predict": "top-5 classes of image files under a trained network",
}


def main() -> int:
    print(f"mnv3-nas {__version__}: latency-aware architecture search in the MobileNetV3 family\n")
    width = max(map(len, COMMANDS))
    for name, purpose in COMMANDS.items():
        print(f"  {name:<{width}}  {purpose}")
    print("\nEach command takes --help (Hydra apps: --help shows the config).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
