from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.arch.codecs import load_spec
from nas.models.builder import build_model
from nas.models.export import compare_with_onnxruntime, export_module, onnx_op_counts, onnx_opset


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Randomise BN statistics and widen the classifier so outputs are not tiny."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["small", "large_minimal"])
def test_onnx_export_matches_onnxruntime(name, tmp_path: Path):
    spec = load_spec(name).replace(resolution=96)
    model = _trained_looking(build_model(spec))
    x = torch.randn(1, 3, 96, 96)
    path = export_module(model, x, tmp_path / "net.onnx")
    assert compare_with_onnxruntime(model, path, x) <= 1e-4
    assert onnx_opset(path) >= 14
    ops = onnx_op_counts(path)
    if name == "small":
        assert ops["HardSwish"] > 0 and ops["HardSigmoid"] > 0
    # One self-contained file unless external data is asked for.
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]


def test_external_data_on_request(tmp_path: Path):
    model = build_model(load_spec("small").replace(resolution=64)).eval()
    path = export_module(model, torch.randn(1, 3, 64, 64), tmp_path / "net.onnx", external_data=True)
    assert len(list(tmp_path.iterdir())) == 2
    assert compare_with_onnxruntime(model, path, torch.randn(1, 3, 64, 64)) <= 1e-4


def test_old_opset_is_refused(tmp_path: Path):
    model = build_model(load_spec("small"))
    with pytest.raises(ValueError, match="opset"):
        export_module(model, torch.randn(1, 3, 64, 64), tmp_path / "x.onnx", opset=11)


def test_torchscript_exporter_writes_an_equivalent_graph(tmp_path: Path):
    # Latency tables may export with the faster tracing exporter: its graph must be the
    # dynamo one's up to naming (GlobalAveragePool for ReduceMean, Flatten for Reshape,
    # Identity nodes) and compute the same outputs.
    spec = load_spec("small").replace(resolution=64)
    model = _trained_looking(build_model(spec))
    x = torch.randn(1, 3, 64, 64)
    counts = {}
    for exporter in ("dynamo", "torchscript"):
        path = export_module(model, x, tmp_path / f"{exporter}.onnx", exporter=exporter)
        assert compare_with_onnxruntime(model, path, x) <= 1e-4
        same = {"GlobalAveragePool": "ReduceMean", "Flatten": "Reshape"}
        counts[exporter] = {same.get(op, op): n for op, n in onnx_op_counts(path).items()
                            if op != "Identity"}
    assert counts["torchscript"] == counts["dynamo"] and counts["dynamo"]["HardSwish"] > 0


def test_unknown_exporter_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_module(build_model(load_spec("small")), torch.randn(1, 3, 64, 64),
                      tmp_path / "x.onnx", exporter="tf2onnx")


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dynamic_batch_axis_runs_at_batch_1_and_4(exporter: str, tmp_path: Path):
    spec = load_spec("small_minimal").replace(resolution=64)
    model = _trained_looking(build_model(spec))
    path = export_module(model, torch.randn(1, 3, 64, 64), tmp_path / "net.onnx", exporter=exporter,
                         dynamic_batch=True)
    for batch in (1, 4):
        assert compare_with_onnxruntime(model, path, torch.randn(batch, 3, 64, 64)) <= 1e-4
