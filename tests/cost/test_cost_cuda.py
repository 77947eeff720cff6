"""The latency harness's ``torch-cuda`` runtime, run for real on a GPU (skipped without one).

Covered: tables built on the GPU (in-network and isolated op timing, batch 1 and a larger
batch) with a provenance naming the GPU, the host check of such a table, end-to-end CUDA-event
timing in float32 and float16, and in-context op timing on the GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import TINY, requires_cuda
from nas.cost.harness import HarnessConfig
from nas.cost.host_check import host_device
from nas.cost.keys import keys_for_spec
from nas.cost.lut import LatencyTable, build_table
from nas.cost.timing import measure, measure_in_context
from nas.models.builder import build_model

# Short sampling: each measurement takes a few milliseconds of GPU time.
FAST = HarnessConfig(runtime="torch-cuda", warmup=2, warmup_time=0.0, repeats=3, min_run_time=0.0,
                     max_run_time=0.05, passes=2)

pytestmark = requires_cuda


@pytest.mark.parametrize("method", ["context", "isolated"])
@pytest.mark.parametrize("batch", [1, 16])
def test_cuda_table_for_a_tiny_network(tmp_path: Path, method: str, batch: int) -> None:
    harness = FAST.replace(batch=batch)
    table = build_table([TINY], tmp_path, harness, method=method, progress=False)
    assert table.missing_keys([TINY]) == []
    assert all(table.ms(key) > 0 and math.isfinite(table.ms(key)) for key in table.keys)
    assert table.predict(TINY) > 0
    loaded = LatencyTable.load(tmp_path)
    provenance = loaded.provenance
    assert provenance["runtime"] == "torch-cuda" and provenance["method"] == method
    assert provenance["batch"] == batch
    assert provenance["device"] == torch.cuda.get_device_name(0)
    # Measured on this GPU with this torch: the host check finds nothing to warn about.
    assert host_device("torch-cuda") == provenance["device"]
    assert loaded.check_host() == []


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_end_to_end_timing_with_cuda_events(dtype: str) -> None:
    timing = measure(build_model(TINY), (3, 32, 32), FAST.replace(dtype=dtype))
    assert timing.n >= 3 and 0 < timing.median_ms < 1000


def test_in_context_op_timing_on_the_gpu() -> None:
    total, ops = measure_in_context(TINY, FAST)
    assert [key for key, _ in ops] == keys_for_spec(TINY.resolved())
    # Every op's CUDA events were read back after the forward's synchronisation.
    assert all(t.n > 0 and t.median_ms > 0 for _, t in ops)
    assert total.median_ms > 0
