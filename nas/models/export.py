"""ONNX export of built networks (and any module, e.g. one block for off-host timing).

The torch exporter (dynamo, opset 18+) emits native ``HardSwish`` / ``HardSigmoid`` nodes
(ONNX opset >= 14), so runtimes can fuse h-swish as the paper's Table 5 assumes. The file
is self-contained unless external data is asked for.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

MIN_OPSET = 14
# "dynamo": torch.export-based (the default of torch.onnx). "torchscript": the older tracing
# exporter; for this project's networks it writes an equivalent graph (the same Conv,
# HardSwish, HardSigmoid, Mul, Add and Gemm nodes, BatchNorm folded; GlobalAveragePool and
# Flatten where dynamo writes ReduceMean and Reshape, plus Identity nodes) much faster per
# file, which matters when a latency table exports hundreds of ops. A table records
# which one it used, and its end-to-end checks export the same way.
EXPORTERS = ("dynamo", "torchscript")


def export_module(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    opset: int | None = None,
    external_data: bool = False,
    exporter: str = "dynamo",
    dynamic_batch: bool = False,
) -> Path:
    """Export ``module`` (eval mode, on CPU) traced with ``example`` to ``path``.

    ``exporter`` is ``"dynamo"`` (default) or ``"torchscript"`` (see :data:`EXPORTERS`).
    ``dynamic_batch`` names the first axis of input and output ``batch`` so one file serves
    any batch size (deployment); latency-table exports keep the example's fixed batch.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} for native HardSwish, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().cpu()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(
                module, (example.cpu(),), str(path), input_names=["input"], output_names=["output"],
                opset_version=opset, dynamo=True, external_data=external_data, verbose=False,
                dynamic_axes=axes,
            )
        else:
            # The tracing exporter needs an explicit opset; 20 is the dynamo default's era.
            torch.onnx.export(
                module, (example.cpu(),), str(path), input_names=["input"], output_names=["output"],
                opset_version=opset or 20, dynamo=False, verbose=False, dynamic_axes=axes,
            )
    return path


def onnx_op_counts(path: str | Path) -> Counter:
    """How often each ONNX op type occurs in the graph (e.g. ``HardSwish``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset the file was written with."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def compare_with_onnxruntime(
    module: nn.Module, path: str | Path, example: torch.Tensor, *, threads: int = 1
) -> float:
    """Max absolute difference between torch and onnxruntime outputs on ``example``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module.eval().cpu()(example.cpu()).numpy()
    (actual,) = session.run(None, {session.get_inputs()[0].name: example.cpu().numpy()})
    return float(np.max(np.abs(actual - expected)))
