"""Shared fixtures: the real CIFAR-10 subset when ../shared is beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_SUBSET = REPO.parent / "shared" / "datasets" / "cifar10-subset"


@pytest.fixture
def cifar_subset() -> Path:
    """Path of the shared CIFAR-10 subset; skips the test when it is absent."""
    if not (CIFAR_SUBSET / "train").is_dir():
        pytest.skip(f"shared dataset not found at {CIFAR_SUBSET}")
    return CIFAR_SUBSET
