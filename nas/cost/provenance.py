"""What a latency table records about how it was measured: the runtime and its version (a
deployment backend's own record for LiteRT, ExecuTorch and OpenVINO), the device, threads,
batch, dtype and the harness. Above both the harness and the backends, so neither imports
the other's layer upward."""

from __future__ import annotations

from typing import Any

from nas.cost import ort_runner, sampling
from nas.cost.harness import BACKEND_RUNTIMES, TORCH_RUNTIMES, HarnessConfig, device_name, steady_allocator
from nas.cost.sampling import realtime_priority


def runtime_version(runtime: str) -> str:
    """The version of ``runtime`` here (:class:`ImportError` when a backend's extra is missing)."""
    if runtime in BACKEND_RUNTIMES:
        from nas.cost.backends import get_backend

        return get_backend(runtime).version()
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import torch

    return torch.__version__


def harness_provenance(cfg: HarnessConfig) -> dict[str, Any]:
    """What a table must record about the harness that measured it."""
    import torch

    info = {
        "runtime": cfg.runtime,
        "runtime_version": runtime_version(cfg.runtime),
        "torch_version": torch.__version__,
        "device": device_name(cfg),
        "host": sampling.device_info(),
        "threads": cfg.threads,
        "batch": cfg.batch,
        "dtype": cfg.dtype,
        "harness": cfg.to_dict(),
    }
    if cfg.runtime == "onnxruntime":
        info.update(ort_runner.ort_provenance(cfg.threads, cfg.ort_opt_level))
    if cfg.runtime in BACKEND_RUNTIMES:
        info.update(backend_provenance(cfg))
    if cfg.realtime:
        with realtime_priority(True) as rt:
            info["realtime_active"] = rt.active
    if cfg.steady_allocator and cfg.runtime in TORCH_RUNTIMES:
        info["steady_allocator_active"] = steady_allocator()
    return info


def backend_provenance(cfg: HarnessConfig) -> dict[str, Any]:
    """A deployment backend's own record (:meth:`LatencyBackend.provenance`) for a table:
    backend, converter, delegate, precision, layout and what the runtime reports under
    ``cfg``. The table's ``runtime`` stays the backend's name; the runtime's package name
    is kept as ``runtime_package``."""
    from nas.cost.backends import BackendConfig, get_backend

    record = get_backend(cfg.runtime).provenance(BackendConfig.from_harness(cfg))
    record["runtime_package"] = record.pop("runtime")
    for shared in ("device", "torch_version", "threads", "batch"):
        record.pop(shared, None)  # the harness records these already
    return record


__all__ = ["backend_provenance", "harness_provenance", "runtime_version"]
