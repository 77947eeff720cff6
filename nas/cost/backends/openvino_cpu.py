"""``openvino``: ``openvino.convert_model`` from the torch module, saved as IR, compiled on
"CPU" and timed with an infer request.

Two defaults would change what is timed and are overridden:

* On CPUs with AVX512-BF16 (or AMX) the CPU plugin infers in bf16 unless told otherwise
  (relative error ~1e-2 against torch on MobileNetV3-Small, measured here). The model is
  compiled with ``INFERENCE_PRECISION_HINT=f32``, and the provenance records the precision
  the compiled model reports and the runtime precision of every executed layer.
* ``openvino.save_model`` stores weights as f16 by default; the IR is saved with
  ``compress_to_fp16=False`` so the file holds the module's float32 weights.

Compilation also fixes ``INFERENCE_NUM_THREADS`` (``cfg.threads``), one stream and the
latency performance hint.

OpenVINO's converter sends usage telemetry unless the user opted out: each event starts a
background thread that forks a process to post it, at ``import openvino`` and at every
``convert_model``. Forks and network attempts do not belong in a timing process (and fork
after JAX, which litert-torch loads, may deadlock), so the backend imports OpenVINO with its
own telemetry stub, the module OpenVINO uses when ``openvino_telemetry`` is not installed.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from nas.cost import sampling
from nas.cost.backends.base import (
    Artifact,
    BackendConfig,
    LatencyBackend,
    baseline_module,
    example_array,
)
from nas.cost.backends.signal_stack import install_lasting_signal_stack

_PRECISION = {"fp32": "f32"}
# OpenVINO's element type names in this project's vocabulary (BackendConfig.precision).
_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
# Layers that move data in or out or hold constants: their "precision" is not a compute one.
_NOT_COMPUTE = ("Input", "Output", "Const")
# The converter's modules that bind ``tm`` to openvino_telemetry or, failing that, to the stub.
_TELEMETRY_USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils",
                    "openvino.tools.ovc.utils", "openvino.tools.ovc.main")


class OpenVINOBackend(LatencyBackend):
    """OpenVINO CPU plugin, f32 inference precision forced."""

    name = "openvino"
    extra = "openvino"
    modules = ("openvino",)
    converter = "openvino.convert_model (PyTorch frontend)"
    delegate = "CPU plugin"
    suffix = ".xml"

    def __init__(self) -> None:
        self._core = None

    def require(self, module: str) -> ModuleType:
        """Import an OpenVINO module, its converter using the telemetry stub (module docstring)."""
        if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # -> ImportError
            try:
                super().require("openvino")
            finally:
                del sys.modules["openvino_telemetry"]
        stub = super().require("openvino.tools.ovc.telemetry_stub")
        for name in _TELEMETRY_USERS:  # imported earlier by someone else, with telemetry
            user = sys.modules.get(name)
            if user is not None and getattr(user, "tm", stub) is not stub:
                user.tm = stub
        return super().require(module)

    def openvino(self) -> ModuleType:
        return self.require("openvino")

    def core(self):
        if self._core is None:
            self._core = self.openvino().Core()
        return self._core

    def version(self) -> str:
        return self.openvino().get_version()

    def runtime_info(self) -> dict[str, Any]:
        props = self.require("openvino.properties")
        core = self.core()
        return {"cpu_capabilities": list(core.get_property("CPU", props.device.capabilities)),
                "performance_hint": "LATENCY", "num_streams": 1}

    def compile_config(self, cfg: BackendConfig) -> dict[Any, Any]:
        """The CPU plugin's settings for ``cfg`` (the runtime's own property objects)."""
        ov = self.openvino()
        props = self.require("openvino.properties")
        hints = self.require("openvino.properties.hint")
        return {
            hints.inference_precision: getattr(ov.Type, _PRECISION[cfg.precision]),
            props.inference_num_threads: cfg.threads,
            props.num_streams: 1,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }

    def _compile(self, model: Any, cfg: BackendConfig):
        compiled = self.core().compile_model(model, "CPU", self.compile_config(cfg))
        # The plugin's engine swapped this thread's signal stack; see signal_stack.
        install_lasting_signal_stack()
        return compiled

    @staticmethod
    def precisions(compiled: Any) -> dict[str, Any]:
        """The precision a compiled model reports and the runtime precision of its layers."""
        used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        layers: Counter[str] = Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) not in _NOT_COMPUTE:
                layers[info["runtimePrecision"].astype(str)] += 1
        return {"precision": _NAMES.get(used, used), "inference_precision_hint": used,
                "layer_precisions": dict(sorted(layers.items())),
                "threads_used": int(compiled.get_property("INFERENCE_NUM_THREADS"))}

    def runtime_settings(self, cfg: BackendConfig) -> dict[str, Any]:
        # Compile the empty model under cfg and read back what the plugin chose, so the
        # recorded precision is the one used, not the one asked for.
        import torch

        ov = self.openvino()
        shape = (cfg.batch, 8, 4, 4)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model = ov.convert_model(baseline_module(shape[1:]), example_input=torch.zeros(shape),
                                     input=[shape])
        found = self.precisions(self._compile(model, cfg))
        return {"precision": found["precision"], "precision_requested": cfg.precision,
                "inference_precision_hint": found["inference_precision_hint"],
                "threads_used": found["threads_used"]}

    def _export(self, module: Any, example: Any, path: Path, unit: str) -> Artifact:
        import torch

        ov = self.openvino()
        # The PyTorch frontend traces with TorchScript: its tracer warnings are about Python
        # values frozen at this input shape, which a static-shape artifact is anyway.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model = ov.convert_model(module, example_input=example, input=[tuple(example.shape)])
        ov.save_model(model, str(path), compress_to_fp16=False)
        compiled = self._compile(self.core().read_model(str(path)), BackendConfig(batch=int(example.shape[0])))
        return self.make_artifact(unit, path, example, ov_ops=len(model.get_ordered_ops()),
                                  layer_precisions=self.precisions(compiled)["layer_precisions"])

    def _request(self, artifact: Artifact, cfg: BackendConfig):
        compiled = self._compile(self.core().read_model(str(artifact.path)), cfg)
        artifact.details.update(self.precisions(compiled))
        return compiled.create_infer_request()

    def sampler(self, artifact: Artifact, input_shape: Sequence[int],
                cfg: BackendConfig | None = None) -> Callable[[int], float]:
        cfg = cfg or BackendConfig()
        self.check(artifact, input_shape, cfg)
        request = self._request(artifact, cfg)
        feed = {0: example_array(artifact.input_shape, cfg)}
        infer = request.infer
        # Shared buffers: no copy in or out, the cheapest per-call path the Python API has.
        return sampling.perf_counter_sample(lambda: infer(feed, share_inputs=True, share_outputs=True))

    def run(self, artifact: Artifact, x: Any) -> Any:
        request = self._request(artifact, BackendConfig(batch=int(x.shape[0])))
        return request.infer({0: x.numpy()})[0].copy()
