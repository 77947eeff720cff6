"""``litert``: litert-torch conversion to ``.tflite``, timed in ai-edge-litert's Interpreter.

The Interpreter's default delegate is XNNPACK, created with the interpreter's ``num_threads``
(a one-thread delegate runs without a thread pool). Inputs and outputs of rank 4 are
channels-last (NHWC), as a deployed LiteRT model is fed: an NCHW interface would add a
TRANSPOSE at each end, about 10% of a single block's time. :meth:`LiteRTBackend.run` converts
back to NCHW for comparisons with torch.

Which ops XNNPACK took is read from the interpreter's node list after delegation (a
``DELEGATE`` node per partition, the original nodes kept beside them): an original node runs
on the builtin kernels when its output feeds a delegate partition or is a model output no
partition produces, or when it feeds such a node or reads its output other than through a
partition (propagated to a fixed point). ``fully_delegated`` is true when XNNPACK took every op in one partition.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from nas.cost import kit_runner, sampling
from nas.cost.backends.base import (
    Artifact,
    BackendConfig,
    LatencyBackend,
    example_array,
)


@contextmanager
def _quiet_converter() -> Iterator[None]:
    # litert-torch prints a progress tree unless told otherwise through this variable; it is
    # set for the conversion only, not for the process.
    saved = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved


def delegation(interpreter: Any) -> dict[str, Any]:
    """What the default delegate took of an allocated interpreter's graph (module docstring)."""
    ops = interpreter._get_ops_details()  # experimental API: the only view of the node list
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    fed = {int(t) for op in partitions for t in op["inputs"]}
    produced = {int(t) for op in partitions for t in op["outputs"]}
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    outside: set[int] = set()
    for i, op in enumerate(originals):
        outs = {int(t) for t in op["outputs"]}
        ins = {int(t) for t in op["inputs"] if t >= 0}
        if (outs & fed) - produced or (outs & outputs) - produced or (ins & inputs) - fed:
            outside.add(i)
    if not partitions:
        outside = set(range(len(originals)))
    changed = True
    while changed:
        changed = False
        made = {int(t) for i in outside for t in originals[i]["outputs"]}
        needs = {int(t) for i in outside for t in originals[i]["inputs"] if t >= 0}
        for i, op in enumerate(originals):
            if i in outside:
                continue
            outs = {int(t) for t in op["outputs"]}
            ins = {int(t) for t in op["inputs"] if t >= 0}
            if (outs & needs) - produced or (ins & made) - fed:
                outside.add(i)
                changed = True
    left = Counter(originals[i]["op_name"] for i in outside)
    return {
        "delegate_partitions": len(partitions),
        "ops": len(originals),
        "undelegated_ops": dict(sorted(left.items())),
        "fully_delegated": len(partitions) == 1 and not left,
    }


class LiteRTBackend(LatencyBackend):
    """LiteRT (TensorFlow Lite) Interpreter with the XNNPACK delegate, NHWC input."""

    name = "litert"
    extra = "litert"
    modules = ("litert_torch", "ai_edge_litert")
    converter = "litert_torch.convert"
    delegate = "XNNPACK"
    io_layout = "NHWC"
    suffix = ".tflite"

    def version(self) -> str:
        return metadata.version("ai-edge-litert")

    def runtime_name(self) -> str:
        return "ai-edge-litert"

    def runtime_info(self) -> dict[str, Any]:
        return {"converter_version": metadata.version("litert-torch"),
                "op_resolver": "BUILTIN (default delegates: XNNPACK)"}

    @staticmethod
    def _channels_last(rank: int) -> bool:
        return rank == 4

    def _export(self, module: Any, example: Any, path: Path, unit: str) -> Artifact:
        litert_torch = self.require("litert_torch")
        import torch

        with torch.no_grad():
            out_rank = module(example).ndim
        wrapped, sample = module, example
        if self._channels_last(example.ndim):
            outs = [0] if self._channels_last(out_rank) else []
            wrapped = litert_torch.to_channel_last_io(module, args=[0], outputs=outs).eval()
            sample = example.permute(0, 2, 3, 1).contiguous()
        with _quiet_converter():
            litert_torch.convert(wrapped, (sample,)).export(str(path))
        interpreter = self._interpreter(path, 1)
        return self.make_artifact(unit, path, example, output_rank=out_rank,
                                  **delegation(interpreter))

    def _interpreter(self, path: Path, threads: int):
        interpreter_module = self.require("ai_edge_litert.interpreter")
        interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()  # applies the default (XNNPACK) delegate
        return interpreter

    def sampler(self, artifact: Artifact, input_shape: Sequence[int],
                cfg: BackendConfig | None = None) -> Callable[[int], float]:
        cfg = cfg or BackendConfig()
        self.check(artifact, input_shape, cfg)
        interpreter = self._interpreter(artifact.path, cfg.threads)
        array = example_array(artifact.input_shape, cfg,
                              channels_last=self._channels_last(len(artifact.input_shape) + 1))
        # The off-host runner times the same call on a board.
        return sampling.perf_counter_sample(kit_runner.litert_call(interpreter, array))

    def run(self, artifact: Artifact, x: Any) -> Any:
        import numpy as np

        interpreter = self._interpreter(artifact.path, 1)
        array = x.numpy()
        if self._channels_last(array.ndim):
            array = np.ascontiguousarray(array.transpose(0, 2, 3, 1))
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], array)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        if self._channels_last(out.ndim) and self._channels_last(artifact.details.get("output_rank", 0)):
            out = out.transpose(0, 3, 1, 2)
        return out
