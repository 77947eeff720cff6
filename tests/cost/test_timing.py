"""The timing harness: settings, statistics, threads, runtimes, interleaved passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.arch.spec import BlockSpec, NetworkSpec
from nas.cost import sampling
from nas.cost.harness import HarnessConfig, HarnessError, Timing
from nas.cost.keys import keys_for_spec
from nas.cost.timing import measure, measure_in_context, measure_interleaved

FAST = HarnessConfig(warmup=1, warmup_time=0.0, repeats=5, min_run_time=0.0, max_run_time=0.2)


class Recorder(nn.Module):
    """Records the thread count and input shape it runs with."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.threads: set[int] = set()
        self.shapes: set[tuple[int, ...]] = set()

    def forward(self, x):
        self.threads.add(torch.get_num_threads())
        self.shapes.add(tuple(x.shape))
        return self.conv(x)


def tiny_spec(resolution: int = 32) -> NetworkSpec:
    return NetworkSpec(
        blocks=(BlockSpec(3, 8, 8, True, "RE", 2), BlockSpec(5, 24, 16, False, "HS", 2),
                BlockSpec(3, 32, 16, True, "HS", 1)),
        stem_channels=8, last_conv=32, head_features=64, num_classes=10, resolution=resolution)


def test_config_rejects_bad_settings():
    with pytest.raises(HarnessError, match="runtime"):
        HarnessConfig(runtime="tflite")
    with pytest.raises(HarnessError, match="float32"):
        HarnessConfig(runtime="onnxruntime", dtype="float16")
    with pytest.raises(HarnessError, match="threads"):
        HarnessConfig(threads=0)
    cfg = HarnessConfig(threads=2, batch=3)
    assert HarnessConfig.from_dict(cfg.to_dict()) == cfg


def test_measure_sets_and_restores_threads_and_batch():
    module = Recorder()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timing = measure(module, (3, 16, 16), FAST.replace(threads=1, batch=3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert module.threads == {1}
    assert module.shapes == {(3, 3, 16, 16)}
    assert isinstance(timing, Timing)
    assert timing.n >= 5 and timing.median_ms > 0 and timing.iqr_ms >= 0


def test_run_samples_statistics_and_stopping():
    calls = []

    def sample(number: int) -> float:
        calls.append(number)
        return 0.001 * number * (1 + len(calls) % 3)  # 1, 2, 3 ms per call in turn

    stats = sampling.run_samples(sample, warmup=2, warmup_time=0.0, repeats=9,
                                   min_run_time=0.0, max_run_time=5.0)
    assert stats["n"] == 9
    assert stats["number"] == 1
    assert 1.0 <= stats["median_ms"] <= 3.0
    assert stats["min_ms"] == pytest.approx(1.0)
    assert sampling.summarize([0.001, 0.002, 0.003, 0.004])["median_ms"] == pytest.approx(2.5)
    assert sampling.quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0


def test_fast_calls_are_grouped_for_clock_resolution():
    stats = sampling.run_samples(lambda number: 1e-7 * number, warmup=1, warmup_time=0.0,
                                   repeats=3, min_run_time=0.0, min_sample_time=1e-5)
    assert stats["number"] >= 100
    assert stats["median_ms"] == pytest.approx(1e-4)


def test_onnxruntime_harness_times_an_export():
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish())
    timing = measure(module, (3, 16, 16), FAST.replace(runtime="onnxruntime"))
    assert timing.n >= 5 and timing.median_ms > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_harness():
    timing = measure(nn.Conv2d(3, 8, 3), (3, 32, 32), FAST.replace(runtime="torch-cuda"))
    assert timing.median_ms > 0


def test_cuda_harness_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(HarnessError, match="CUDA"):
        measure(nn.Conv2d(3, 8, 3), (3, 32, 32), FAST.replace(runtime="torch-cuda"))


def test_in_context_times_every_op_of_the_network():
    spec = tiny_spec()
    e2e, per_op = measure_in_context(spec, FAST)
    assert [k for k, _ in per_op] == keys_for_spec(spec)
    assert all(t.median_ms > 0 and t.n >= 5 for _, t in per_op)
    # The ops are a part of the forward pass.
    assert sum(t.median_ms for _, t in per_op) < e2e.median_ms * 1.5


def test_realtime_option_runs_either_way():
    timing = measure(nn.Conv2d(3, 4, 3), (3, 8, 8), FAST.replace(realtime=True))
    assert timing.median_ms > 0


def test_interleaved_passes_resume_from_their_log(tmp_path):
    log = tmp_path / "passes.csv"
    names = ["a", "b", "c"]

    def build(name):
        return nn.Conv2d(3, 4, 1 + 2 * names.index(name)), (3, 8, 8)

    class Stop(Exception):
        pass

    def stop_after_four(done, total, key):
        if done == 4:
            raise Stop

    with pytest.raises(Stop):
        measure_interleaved(names, build, FAST, passes=3, log_path=log, progress=False,
                            callback=stop_after_four)
    assert len(sampling.read_pass_log(log)) == 4
    seen = []
    figures, per_pass = measure_interleaved(names, build, FAST, passes=3, log_path=log,
                                            progress=False,
                                            callback=lambda done, total, key: seen.append(total))
    assert len(seen) == 5 and seen[0] == 5  # only the 9 - 4 units left
    assert all(figures[n]["passes"] == 3 for n in names)
    assert sorted(int(r["pass"]) for r in per_pass["a"]) == [0, 1, 2]


def test_steady_allocator_is_recorded_in_the_provenance():
    from nas.cost.harness import steady_allocator
    from nas.cost.provenance import harness_provenance

    applied = steady_allocator()
    assert isinstance(applied, bool)
    info = harness_provenance(FAST)
    assert info["steady_allocator_active"] == applied
    assert info["threads"] == 1 and info["runtime"] == "torch-cpu" and info["device"]
