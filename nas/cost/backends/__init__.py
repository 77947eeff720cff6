"""Latency backends: one interface, one implementation per deployment runtime.

* ``torch``: PyTorch eager on the CPU; the artifact is the module itself.
* ``onnxruntime``: ``.onnx`` (torch.onnx dynamo export), onnxruntime's CPU provider.
* ``litert``: ``.tflite`` (litert-torch), ai-edge-litert's Interpreter with XNNPACK; extra
  ``[litert]``.
* ``executorch``: ``.pte`` (torch.export, XNNPACK partitioner), ``executorch.runtime``; extra
  ``[executorch]``.
* ``openvino``: OpenVINO IR (``.xml`` + ``.bin``), the CPU plugin in f32; extra ``[openvino]``.

``get_backend(name)`` returns a :class:`LatencyBackend`; :func:`measure` converts a module,
times it with :func:`nas.cost.sampling.run_samples` and, by default, the backend's empty
model too (see ``docs/latency-backends.md``).
"""

from __future__ import annotations

from nas.cost.backends.base import (
    Artifact,
    BackendConfig,
    BackendError,
    BackendUnavailableError,
    ConversionError,
    LatencyBackend,
    baseline_module,
    reason_line,
)
from nas.cost.backends.executorch_xnnpack import ExecuTorchBackend
from nas.cost.backends.litert_xnnpack import LiteRTBackend
from nas.cost.backends.measure import BackendTiming, measure, measure_baseline
from nas.cost.backends.onnxruntime_cpu import OnnxRuntimeBackend
from nas.cost.backends.openvino_cpu import OpenVINOBackend
from nas.cost.backends.torch_eager import TorchBackend

_CLASSES: dict[str, type[LatencyBackend]] = {
    cls.name: cls for cls in (TorchBackend, OnnxRuntimeBackend, LiteRTBackend, ExecuTorchBackend,
                              OpenVINOBackend)
}
BACKENDS: tuple[str, ...] = tuple(_CLASSES)


def get_backend(name: str) -> LatencyBackend:
    """The backend called ``name``; its runtime must be installed.

    Raises:
        BackendError: ``name`` is not one of :data:`BACKENDS`.
        BackendUnavailableError: the runtime's modules are missing (the message names the
            pip extra to install).
    """
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise BackendError(f"unknown latency backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    backend = cls()
    missing = cls.missing_module()
    if missing is not None:
        raise backend.unavailable(missing)
    return backend


def available_backends() -> tuple[str, ...]:
    """The backends whose runtimes are installed here."""
    return tuple(name for name, cls in _CLASSES.items() if cls.missing_module() is None)


__all__ = [
    "BACKENDS",
    "Artifact",
    "BackendConfig",
    "BackendError",
    "BackendTiming",
    "BackendUnavailableError",
    "ConversionError",
    "ExecuTorchBackend",
    "LatencyBackend",
    "LiteRTBackend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "available_backends",
    "baseline_module",
    "get_backend",
    "measure",
    "measure_baseline",
    "reason_line",
]
