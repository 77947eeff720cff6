"""``onnxruntime``: ONNX export (native HardSwish) timed in an onnxruntime CPU session.

Wraps today's code: :func:`nas.cost.samplers.export_for_ort` writes the ``.onnx`` file and
:func:`nas.cost.samplers.ort_sampler` times it (``cfg.threads`` intra-op threads, one inter-op
thread, sequential execution, all graph optimisations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas.cost.backends.base import Artifact, BackendConfig, LatencyBackend
from nas.cost.backends.torch_eager import harness_config


class OnnxRuntimeBackend(LatencyBackend):
    """onnxruntime's CPUExecutionProvider on a torch.onnx (dynamo) export."""

    name = "onnxruntime"
    modules = ("onnxruntime", "onnx")
    converter = "torch.onnx.export (dynamo)"
    delegate = "CPUExecutionProvider"
    suffix = ".onnx"

    def version(self) -> str:
        return self.require("onnxruntime").__version__

    def runtime_settings(self, cfg: BackendConfig) -> dict[str, Any]:
        from nas.cost import ort_runner

        # The off-host runner's record of a session, so both say the same things.
        return {**ort_runner.ort_provenance(cfg.threads, "all"), "inter_op_threads": 1}

    def _export(self, module: Any, example: Any, path: Path, unit: str) -> Artifact:
        from nas.cost.samplers import export_for_ort

        cfg = BackendConfig(batch=int(example.shape[0]))
        export_for_ort(module, tuple(example.shape[1:]), harness_config(cfg, "onnxruntime"), path)
        # A session is made once here so an op onnxruntime lacks fails the conversion, not
        # the timing.
        session = self._session(path, 1)
        return self.make_artifact(unit, path, example, onnx_nodes=self._node_count(path),
                                  ort_providers=session.get_providers())

    @staticmethod
    def _node_count(path: Path) -> int:
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node)

    def _session(self, path: Path, threads: int):
        from nas.cost import ort_runner

        self.require("onnxruntime")
        return ort_runner.make_session(path, threads)

    def sampler(self, artifact: Artifact, input_shape: Sequence[int],
                cfg: BackendConfig | None = None) -> Callable[[int], float]:
        from nas.cost.samplers import ort_sampler

        cfg = cfg or BackendConfig()
        self.check(artifact, input_shape, cfg)
        return ort_sampler(artifact.path, artifact.input_shape, harness_config(cfg, "onnxruntime"))

    def run(self, artifact: Artifact, x: Any) -> Any:
        session = self._session(artifact.path, 1)
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
