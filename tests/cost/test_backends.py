"""Latency backends: every runtime converts a MobileNetV3 block and canonical Small with
torch's outputs, times them through the harness's statistics and says what it timed.

The runtimes are dev dependencies (installed by CI): a missing one fails here, it is not
skipped. Each model is converted once per backend for the whole module (conversion takes
seconds); inputs are small and sampling is short.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nas.arch.codecs import load_spec
from nas.config import ConfigError
from nas.cost.backends import (
    BACKENDS,
    Artifact,
    BackendConfig,
    BackendError,
    BackendUnavailableError,
    ConversionError,
    baseline_module,
    get_backend,
    measure,
    measure_baseline,
)
from nas.cost.sampling import run_samples
from nas.models.builder import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"warmup": 2, "warmup_time": 0.0, "repeats": 10, "min_run_time": 0.0, "max_run_time": 0.5}
BLOCK_SHAPE = (24, 28, 28)
# 96 px: the smallest resolution at which Small's last 5x5 depthwise convs see a 3x3 map, so
# every kernel tap reaches the input (below it the builder trims the kernel, a different graph).
SMALL_SHAPE = (3, 96, 96)
SHAPES = {"block": BLOCK_SHAPE, "small": SMALL_SHAPE}
EXTRAS = {"litert": "ai_edge_litert", "executorch": "executorch", "openvino": "openvino"}
VERSIONS = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai-edge-litert",
            "executorch": "executorch", "openvino": "openvino"}


def make_block() -> nn.Module:
    """A MobileNetV3 bneck (5x5 depthwise, stride 2, SE, h-swish) as torchvision builds it."""
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    return mobilenet_v3_small(weights=None).features[4].eval()


def make_small() -> nn.Module:
    """Canonical MobileNetV3-Small; the classifier gets unit-gain weights, because the
    builder's N(0, 0.01) init makes random-weight logits too small to compare usefully."""
    torch.manual_seed(0)
    model = build_model(load_spec("mobilenet_v3_small").replace(resolution=SMALL_SHAPE[-1]))
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, layer.in_features ** -0.5)
    return model.eval()


class Histogram(nn.Module):
    """No converter here lowers aten.histc."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=4)


class CumsumBetweenConvs(nn.Module):
    """XNNPACK has no cumulative sum: the delegates must leave it to the runtime's kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cumsum(self.conv(x), dim=1))


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"block": make_block(), "small": make_small()}


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory) -> Callable[[str, str], Artifact]:
    """``converted(backend, unit)``: the unit's artifact, converted once for the module."""
    cache: dict[tuple[str, str], Artifact] = {}
    folder = tmp_path_factory.mktemp("backends")

    def get(name: str, unit: str) -> Artifact:
        if (name, unit) not in cache:
            cache[(name, unit)] = get_backend(name).export(
                models[unit], SHAPES[unit], folder / f"{name}-{unit}", unit=unit)
        return cache[(name, unit)]

    return get


def relative_error(actual: Any, expected: torch.Tensor) -> float:
    expected = expected.numpy()
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("unit", ["block", "small"])
@pytest.mark.parametrize("name", BACKENDS)
def test_conversion_matches_torch(name, unit, models, converted):
    artifact = converted(name, unit)
    assert artifact.backend == name and artifact.unit == unit
    assert artifact.input_shape == SHAPES[unit] and artifact.batch == 1
    if name != "torch":
        assert artifact.path.is_file() and artifact.path.stat().st_size > 0
    x = torch.randn(1, *SHAPES[unit], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = models[unit](x)
    # float32 everywhere: ~1e-6 measured; bf16 (OpenVINO's default here) gives ~1e-2.
    assert relative_error(get_backend(name).run(artifact, x), expected) < 1e-4


@pytest.mark.parametrize("name", ["litert", "executorch"])
def test_xnnpack_takes_the_whole_mobilenet(name, converted):
    for unit in SHAPES:
        details = converted(name, unit).details
        assert details["fully_delegated"] is True, details
        assert details["delegate_partitions"] == 1 and details["undelegated_ops"] == {}


@pytest.mark.parametrize("name", ["litert", "executorch"])
def test_ops_left_outside_the_delegate_are_recorded(name, tmp_path):
    backend = get_backend(name)
    module = CumsumBetweenConvs().eval()
    artifact = backend.export(module, (4, 8, 8), tmp_path / "cumsum")
    details = backend.provenance(BackendConfig(), artifact)
    assert details["fully_delegated"] is False
    assert details["delegate_partitions"] == 2  # the conv before, the relu after
    expected = {"litert": {"CUMSUM": 1}, "executorch": {"aten.cumsum.default": 1}}[name]
    assert details["undelegated_ops"] == expected
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert relative_error(backend.run(artifact, x), module(x)) < 1e-4


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "torch"])
def test_unconvertible_unit_fails_in_one_line(name, tmp_path):
    with pytest.raises(ConversionError) as info:
        get_backend(name).export(Histogram(), (4, 8, 8), tmp_path / "histogram")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name} cannot convert unit 'Histogram' (")
    assert "histc" in message  # the converter's reason, not a banner line


# ---------------------------------------------------------------------------- timing
@pytest.mark.parametrize("name", BACKENDS)
def test_samplers_time_through_the_harness(name, converted):
    backend = get_backend(name)
    medians = {}
    for unit, shape in SHAPES.items():
        stats = run_samples(backend.sampler(converted(name, unit), shape, BackendConfig()), **FAST)
        assert math.isfinite(stats["median_ms"]) and stats["median_ms"] > 0
        assert stats["n"] >= 3
        medians[unit] = stats["median_ms"]
    # Small at 96 px is ~10x a block's work in every runtime measured here.
    assert medians["small"] > medians["block"], medians


def test_empty_model_has_the_units_input_and_output_shapes():
    empty = baseline_module((3, 8, 8), (10,))
    assert empty(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert baseline_module(BLOCK_SHAPE)(torch.randn(1, *BLOCK_SHAPE)).shape == (1, *BLOCK_SHAPE)


@pytest.mark.parametrize("name", BACKENDS)
def test_empty_model_baseline_is_below_a_block(name, converted):
    block = run_samples(get_backend(name).sampler(converted(name, "block"), BLOCK_SHAPE), **FAST)
    empty = measure_baseline(name, BLOCK_SHAPE, output_shape=(40, 14, 14), settings=FAST)
    assert 0 < empty.median_ms < block["median_ms"]


def test_measure_keeps_end_to_end_and_baseline(models):
    result = measure("onnxruntime", models["block"], BLOCK_SHAPE, settings=FAST, unit="bneck")
    assert result.baseline is not None and result.baseline.median_ms > 0
    assert result.net_ms == pytest.approx(result.timing.median_ms - result.baseline.median_ms)
    assert result.provenance["unit"] == "bneck" and result.provenance["backend"] == "onnxruntime"


def test_sampler_refuses_another_shape_or_batch(converted):
    artifact = converted("onnxruntime", "block")
    backend = get_backend("onnxruntime")
    with pytest.raises(BackendError, match="static shapes"):
        backend.sampler(artifact, (24, 56, 56))
    with pytest.raises(BackendError, match="static shapes"):
        backend.sampler(artifact, BLOCK_SHAPE, BackendConfig(batch=2))
    with pytest.raises(BackendError, match="made by backend 'onnxruntime'"):
        get_backend("openvino").sampler(artifact, BLOCK_SHAPE)


def test_executorch_threadpool_follows_the_config(converted):
    from executorch.extension.pybindings import portable_lib

    backend = get_backend("executorch")
    artifact = converted("executorch", "block")
    for threads in (2, 1):
        sample = backend.sampler(artifact, BLOCK_SHAPE, BackendConfig(threads=threads))
        portable_lib._unsafe_reset_threadpool(3)  # someone else changed the process-wide pool
        sample(1)
        assert portable_lib._threadpool_get_thread_count() == threads
        assert backend.provenance(BackendConfig(threads=threads))["threadpool_threads"] == threads


# ---------------------------------------------------------------------------- provenance
@pytest.mark.parametrize("name", BACKENDS)
def test_provenance_names_what_was_timed(name, converted):
    backend = get_backend(name)
    info = backend.provenance(BackendConfig(), converted(name, "block"))
    for key in ("runtime", "runtime_version", "delegate", "precision", "threads", "batch",
                "io_layout", "device", "unit", "convert_s"):
        assert info[key] not in (None, ""), key
    assert info["backend"] == name and info["threads"] == 1 and info["batch"] == 1
    assert info["precision"] == "fp32"
    assert info["runtime_version"].startswith(metadata.version(VERSIONS[name]).split("+")[0])
    assert backend.version() == info["runtime_version"]


def test_openvino_provenance_says_f32(converted):
    backend = get_backend("openvino")
    artifact = converted("openvino", "small")
    backend.sampler(artifact, SMALL_SHAPE)  # compiling records the precisions used
    info = backend.provenance(BackendConfig(), artifact)
    assert info["precision"] == "fp32" and info["inference_precision_hint"] == "f32"
    assert set(info["layer_precisions"]) == {"f32"}, info["layer_precisions"]
    assert info["threads_used"] == 1


def test_openvino_converter_sends_no_telemetry(converted):
    converted("openvino", "block")
    from openvino.tools.ovc import convert_impl, telemetry_stub

    # Each telemetry event would start a thread that forks a sender process mid-measurement.
    assert convert_impl.tm is telemetry_stub


# ---------------------------------------------------------------------------- bad input
def test_unknown_backend_lists_the_allowed_ones():
    with pytest.raises(BackendError) as info:
        get_backend("tflite")
    message = str(info.value)
    assert "\n" not in message and "'tflite'" in message
    assert all(name in message for name in BACKENDS)


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_missing_extra_names_the_pip_extra(name, monkeypatch, converted):
    artifact = converted(name, "block")
    backend = get_backend(name)  # installed here: CI installs every extra
    monkeypatch.setitem(sys.modules, EXTRAS[name], None)  # what an import sees when it is absent
    expected = f"latency backend '{name}' needs the extra: pip install 'mnv3-nas[{name}]'"
    with pytest.raises(BackendUnavailableError) as info:
        get_backend(name)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    # A backend obtained before the runtime went missing fails the same way when used.
    with pytest.raises(BackendUnavailableError, match=r"needs the extra"):
        backend.sampler(artifact, BLOCK_SHAPE)


def test_config_refuses_other_precisions():
    with pytest.raises(ConfigError, match="precision"):
        BackendConfig(precision="fp16")
    with pytest.raises(ConfigError, match="threads"):
        BackendConfig(threads=0)
    with pytest.raises(TypeError):
        BackendConfig(2)  # keyword-only


def test_artifact_paths_get_the_runtime_suffix(converted):
    assert converted("litert", "block").path.suffix == ".tflite"
    assert converted("executorch", "block").path.suffix == ".pte"
    assert converted("openvino", "block").path.suffix == ".xml"
    assert converted("openvino", "block").path.with_suffix(".bin").is_file()
    assert converted("onnxruntime", "block").path.suffix == ".onnx"
    assert converted("torch", "block").path is None
