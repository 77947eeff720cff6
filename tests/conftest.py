"""Shared fixtures: the real CIFAR-10 subset when ../shared is beside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from nas.arch.spec import BlockSpec, NetworkSpec

#: Marks a test that exercises a CUDA code path for real: it runs where torch sees a GPU and
#: is skipped elsewhere (the project itself never needs one). scripts/gpu_check.sh runs them.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
#: Two-process NCCL runs need two GPUs: NCCL refuses two ranks on one device.
requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                                       reason="needs two CUDA GPUs (one NCCL rank per GPU)")

# Every pruning case in five blocks: SE; a stem whose consumer has no expand conv (16 == 16);
# residual groups {1, 2} and {3, 4}; blocks without SE.
TINY = NetworkSpec(blocks=(
    BlockSpec(3, 16, 16, True, "RE", 2),
    BlockSpec(3, 48, 24, False, "RE", 2),
    BlockSpec(3, 56, 24, False, "RE", 1),
    BlockSpec(5, 64, 32, True, "HS", 2),
    BlockSpec(5, 64, 32, True, "HS", 1),
), stem_channels=16, last_conv=96, head_features=128, num_classes=10, resolution=32, name="tiny")

REPO = Path(__file__).resolve().parents[1]

# Tests convert their few units in the test process (and in the CLIs they start): a pool of
# converter processes pays seconds of imports a worker. tests/cost/test_parallel_convert.py
# sets its own count.
os.environ.setdefault("NAS_CONVERT_WORKERS", "1")
CIFAR_SUBSET = REPO.parent / "shared" / "datasets" / "cifar10-subset"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a test module (request it with ``pytestmark``).

    The test machine is shared: OpenMP threads spinning against other processes make tiny
    convolutions 10-40x slower. The tests compare runs made under the same setting, so no
    assertion depends on it.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cifar_subset() -> Path:
    """Path of the shared CIFAR-10 subset; skips the test when it is absent."""
    if not (CIFAR_SUBSET / "train").is_dir():
        pytest.skip(f"shared dataset not found at {CIFAR_SUBSET}")
    return CIFAR_SUBSET


def write_image_folder(root: Path, counts: dict[str, int], *, classes: int = 3, size: int = 8,
                       seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<split>/class<c>/<i>.png`` of random images, for tests."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 60 * (c % 3), 30, size=(size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def run_study(module: str, *args: str, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m experiments.<module> args`` from the checkout root, as a study is run."""
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def study_folders(tmp_path: Path) -> list[str]:
    """A resumable study's ``--runs``, ``--work`` and ``--out`` under ``tmp_path``."""
    return [f"--{name}={tmp_path / name}" for name in ("runs", "work", "out")]


def jsonl_rows(folder: Path) -> list[dict]:
    """Every row of the JSON-lines files in ``folder``, file by file."""
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl"))
            for line in path.read_text().splitlines()]


class SmallDisk:
    """A small tmpfs file system of its own, filled and freed on demand (a real ENOSPC)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / ".filler"

    def fill(self) -> None:
        """Write a filler file until the file system is full (to the last byte)."""
        import errno

        with open(self._filler, "ab", buffering=0) as handle:
            for size in (1 << 16, 1 << 12, 1 << 8, 1):
                while True:
                    try:
                        handle.write(b"\0" * size)
                    except OSError as err:
                        assert err.errno == errno.ENOSPC
                        break

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def temporary_files(self) -> list[Path]:
        return [p for p in self.path.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs under ``tmp_path`` (needs root, as on the CI machine: skipped otherwise)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    """A table measured here for the tiny test space (64x64, few repeats: about 5 s)."""
    from nas.arch.space import load_space
    from nas.cost.harness import HarnessConfig
    from nas.cost.lut import LatencyTable

    harness = HarnessConfig(repeats=3, min_run_time=0.0, warmup=1, warmup_time=0.0, passes=1,
                            max_run_time=0.05)
    directory = tmp_path_factory.mktemp("table")
    LatencyTable.create(harness, resolution=64).build(
        load_space(REPO / "tests" / "data" / "spaces" / "space" / "tiny.yaml"), progress=False,
        save_to=directory)
    return directory
