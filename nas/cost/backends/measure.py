"""Time a module with a backend: convert, sample with the harness's statistics, and time
the backend's empty model for the unit's input and output shapes, so callers can subtract the
per-call overhead of the runtime's Python API.

For a single MobileNetV3 block that overhead is a large share of the wall time (the docs give
the figures measured here), so both are kept: the end-to-end ``timing`` and the
``baseline``; ``net_ms`` is their difference.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.cost.backends.base import (
    Artifact,
    BackendConfig,
    LatencyBackend,
    baseline_module,
)
from nas.cost.harness import Timing
from nas.cost.sampling import run_samples


@dataclass(frozen=True, kw_only=True)
class BackendTiming:
    """One backend measurement.

    Attributes:
        timing: end-to-end per-call figures of the unit (what a caller of the runtime waits).
        baseline: the same for the backend's empty model on the unit's input, or None.
        provenance: :meth:`LatencyBackend.provenance` with the unit's artifact.
    """

    timing: Timing
    baseline: Timing | None
    provenance: dict[str, Any]

    @property
    def net_ms(self) -> float | None:
        """Median per-call time less the empty model's median (None without a baseline)."""
        if self.baseline is None:
            return None
        return self.timing.median_ms - self.baseline.median_ms


def output_shape(module: Any, artifact: Artifact) -> tuple[int, ...]:
    """The shape of ``module``'s output for the artifact's input, without the batch dimension."""
    import torch

    with torch.no_grad():
        x = torch.zeros((artifact.batch, *artifact.input_shape))
        return tuple(int(s) for s in module(x).shape[1:])


def _backend(backend: LatencyBackend | str) -> LatencyBackend:
    if isinstance(backend, LatencyBackend):
        return backend
    from nas.cost.backends import get_backend

    return get_backend(backend)


def measure_baseline(backend: LatencyBackend | str, input_shape: Sequence[int],
                     cfg: BackendConfig | None = None, *, output_shape: Sequence[int] | None = None,
                     settings: Mapping[str, Any] | None = None,
                     workdir: str | Path | None = None) -> Timing:
    """Time the backend's empty model (:func:`baseline_module`) for a unit's input and output
    shapes (without the batch dimension; the output defaults to the input's)."""
    backend = _backend(backend)
    cfg = cfg or BackendConfig()
    with tempfile.TemporaryDirectory(prefix=f"nas-{backend.name}-", dir=workdir) as tmp:
        artifact = backend.export(baseline_module(input_shape, output_shape), input_shape,
                                  Path(tmp) / "empty", cfg=cfg, unit="empty model")
        stats = run_samples(backend.sampler(artifact, input_shape, cfg), **dict(settings or {}))
    return Timing.from_stats(stats)


def measure(backend: LatencyBackend | str, module: Any, input_shape: Sequence[int],
            cfg: BackendConfig | None = None, *, settings: Mapping[str, Any] | None = None,
            baseline: bool = True, unit: str | None = None,
            workdir: str | Path | None = None) -> BackendTiming:
    """Convert ``module`` with ``backend`` and time it on ``(cfg.batch, *input_shape)``.

    ``settings`` are :func:`nas.cost.sampling.run_samples` keyword arguments (e.g.
    ``HarnessConfig.sampling()``); artifacts go to a temporary folder under ``workdir``.
    With ``baseline`` the empty model is timed right after the unit.
    """
    backend = _backend(backend)
    cfg = cfg or BackendConfig()
    with tempfile.TemporaryDirectory(prefix=f"nas-{backend.name}-", dir=workdir) as tmp:
        artifact = backend.export(module, input_shape, Path(tmp) / "unit", cfg=cfg, unit=unit)
        stats = run_samples(backend.sampler(artifact, input_shape, cfg), **dict(settings or {}))
        provenance = backend.provenance(cfg, artifact)
    empty = None
    if baseline:
        empty = measure_baseline(backend, input_shape, cfg, output_shape=output_shape(module, artifact),
                                 settings=settings, workdir=workdir)
    return BackendTiming(timing=Timing.from_stats(stats), baseline=empty, provenance=provenance)
