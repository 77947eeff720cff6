"""mnv3-nas: latency-aware neural architecture search in the MobileNetV3 family.

The public API is below (``__all__``). Names are imported on first use, so ``import nas``
stays cheap (no torch, no Optuna until something needs them).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mnv3-nas")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

_PUBLIC = {
    "NASError": "nas.errors",
    "NetworkSpec": "nas.arch.spec",
    "BlockSpec": "nas.arch.spec",
    "load_spec": "nas.arch.codecs",
    "save_spec": "nas.arch.codecs",
    "to_string": "nas.arch.codecs",
    "from_string": "nas.arch.codecs",
    "build_model": "nas.models.builder",
    "profile_spec": "nas.cost.profile",
    "LatencyTable": "nas.cost.lut",
    "load_space": "nas.arch.space",
    "SearchSpace": "nas.arch.space",
    "run_search": "nas.api",
    "run_netadapt": "nas.api",
    "search_config": "nas.api",
    "SearchConfig": "nas.search.config",
    "SearchRun": "nas.search.pipeline",
    "LatencyPolicy": "nas.cost.policy",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
