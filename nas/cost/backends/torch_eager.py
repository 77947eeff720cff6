"""``torch``: the module itself in PyTorch eager on the CPU (today's ``torch-cpu`` harness).

Nothing is converted or written: the artifact holds the module. Sampling is
:func:`nas.cost.samplers.torch_sampler`, run inside :func:`nas.cost.harness.harness_context`
(intra-op threads set and restored, ``torch.inference_mode``, the steady allocator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas.cost.backends.base import Artifact, BackendConfig, LatencyBackend


def harness_config(cfg: BackendConfig, runtime: str):
    """The :class:`nas.cost.harness.HarnessConfig` that today's samplers take for ``cfg``."""
    from nas.cost.harness import HarnessConfig

    return HarnessConfig(runtime=runtime, threads=cfg.threads, batch=cfg.batch, seed=cfg.seed)


class TorchBackend(LatencyBackend):
    """PyTorch eager, CPU, float32, ``cfg.threads`` intra-op threads."""

    name = "torch"
    modules = ("torch",)
    converter = "none (eager module)"
    delegate = "none"

    def version(self) -> str:
        import torch

        return torch.__version__

    def runtime_info(self) -> dict[str, Any]:
        import torch

        from nas.cost.harness import steady_allocator

        # Which CPU kernels eager convolutions use (oneDNN when built with it), and whether
        # the harness's steady allocator is in force (it is applied by the first sample).
        return {"mkldnn": bool(torch.backends.mkldnn.is_available()),
                "steady_allocator_active": steady_allocator()}

    def _export(self, module: Any, example: Any, path: Path, unit: str) -> Artifact:
        artifact = self.make_artifact(unit, None, example)
        artifact.module = module
        return artifact

    def sampler(self, artifact: Artifact, input_shape: Sequence[int],
                cfg: BackendConfig | None = None) -> Callable[[int], float]:
        from nas.cost.harness import harness_context
        from nas.cost.samplers import torch_sampler

        cfg = cfg or BackendConfig()
        self.check(artifact, input_shape, cfg)
        hcfg = harness_config(cfg, "torch-cpu")
        inner = torch_sampler(artifact.module, artifact.input_shape, hcfg)

        def sample(number: int) -> float:
            # The context is entered per sample (outside the timed loop) so threads are
            # restored between samples, whatever else runs in the process.
            with harness_context(hcfg):
                return inner(number)

        return sample

    def run(self, artifact: Artifact, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            return artifact.module(x).numpy()
