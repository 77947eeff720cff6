"""``executorch``: ``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK
partitioner -> ``.pte``, timed with ``executorch.runtime``.

ExecuTorch's thread pool (used by the XNNPACK delegate) starts with one thread per core;
the sampler resets it to ``cfg.threads`` (``_unsafe_reset_threadpool``, process-wide) before
each sample, and the provenance reads the count back.

The partitioner leaves what XNNPACK does not support to ExecuTorch's portable (reference)
kernels without a word. The lowered program is inspected instead: every ``call_function``
node that is not a delegate call or a ``getitem`` runs outside XNNPACK. Those that depend on
the input are counted in ``undelegated_ops``; those computed from constants only (the
dim-order copies of h-sigmoid's scalar constants) in ``undelegated_constant_ops``, since
they also run on every call but on 0-d tensors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas.cost import sampling
from nas.cost.backends.base import (
    Artifact,
    BackendConfig,
    LatencyBackend,
    example_input,
)

_NOT_WORK = ("executorch_call_delegate", "getitem")


def delegation(exported_program: Any) -> dict[str, Any]:
    """Delegate partitions and the ops left outside them in a lowered program (module docstring)."""
    graph = exported_program.graph_module.graph
    user_inputs = set(exported_program.graph_signature.user_inputs)
    data: set[Any] = set()
    left: Counter[str] = Counter()
    constant: Counter[str] = Counter()
    partitions = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name in user_inputs:
                data.add(node)
            continue
        if node.op != "call_function":
            continue
        depends = any(arg in data for arg in node.all_input_nodes)
        if depends:
            data.add(node)
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            partitions += 1
        elif name not in _NOT_WORK:
            (left if depends else constant)[name] += 1
    return {
        "delegate_partitions": partitions,
        "undelegated_ops": dict(sorted(left.items())),
        "undelegated_constant_ops": dict(sorted(constant.items())),
        "fully_delegated": partitions == 1 and not left,
    }


class ExecuTorchBackend(LatencyBackend):
    """ExecuTorch runtime with the XNNPACK delegate (portable kernels for the rest)."""

    name = "executorch"
    extra = "executorch"
    modules = ("executorch",)
    converter = "torch.export + executorch.exir.to_edge_transform_and_lower(XnnpackPartitioner)"
    delegate = "XNNPACK"
    suffix = ".pte"

    def version(self) -> str:
        return self.require("executorch.version").__version__

    def runtime_settings(self, cfg: BackendConfig) -> dict[str, Any]:
        pool = self._set_threads(cfg.threads)
        return {"threadpool_threads": pool._threadpool_get_thread_count()}

    def _set_threads(self, threads: int):
        pool = self.require("executorch.extension.pybindings.portable_lib")
        if pool._threadpool_get_thread_count() != threads:
            pool._unsafe_reset_threadpool(threads)
        return pool

    def _export(self, module: Any, example: Any, path: Path, unit: str) -> Artifact:
        import torch

        exir = self.require("executorch.exir")
        partitioner = self.require("executorch.backends.xnnpack.partition.xnnpack_partitioner")
        program = torch.export.export(module, (example,))
        edge = exir.to_edge_transform_and_lower(program, partitioner=[partitioner.XnnpackPartitioner()])
        details = delegation(edge.exported_program())
        path.write_bytes(edge.to_executorch().buffer)
        # Loading the method here makes a kernel missing from the runtime a conversion error.
        self._method(path)
        return self.make_artifact(unit, path, example, **details)

    def _method(self, path: Path):
        runtime = self.require("executorch.runtime").Runtime.get()
        return runtime.load_program(str(path)).load_method("forward")

    def sampler(self, artifact: Artifact, input_shape: Sequence[int],
                cfg: BackendConfig | None = None) -> Callable[[int], float]:
        cfg = cfg or BackendConfig()
        self.check(artifact, input_shape, cfg)
        self._set_threads(cfg.threads)
        method = self._method(artifact.path)
        inputs = (example_input(artifact.input_shape, cfg),)
        inner = sampling.perf_counter_sample(lambda: method.execute(inputs))

        def sample(number: int) -> float:
            # The pool is process-wide: another sampler may have changed it since.
            self._set_threads(cfg.threads)
            return inner(number)

        return sample

    def run(self, artifact: Artifact, x: Any) -> Any:
        self._set_threads(1)
        return self._method(artifact.path).execute((x,))[0].numpy()
