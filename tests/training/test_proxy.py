from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nas.arch.codecs import from_string, to_string
from nas.training.data_config import DataConfig
from nas.training.evaluator import EvalResult, Evaluator
from nas.training.proxy import ProxyTrainingEvaluator
from nas.training.train_config import TrainConfig

TINY = from_string(
    "stem8_hs|k3_e8_c8_s2_se_re|k3_e32_c16_s2_re|k5_e48_c16_s1_se_hs|k3_e64_c24_s2_hs"
    "|head96_128_hs_efficient|drop0.2|cls10|res32|w1.0_torchvision"
)
OTHER = TINY.with_blocks(TINY.blocks[:3])
DATA = DataConfig(resolution=32, train_samples=64, val_samples=32, batch_size=16)
TRAIN = TrainConfig(steps=3, progress=False, bn_recalibration_batches=2, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def test_evaluate_records_settings_and_caches_in_memory():
    evaluator = ProxyTrainingEvaluator(DATA, TRAIN)
    assert isinstance(evaluator, Evaluator)
    first = evaluator.evaluate(TINY)
    assert isinstance(first, EvalResult) and 0.0 <= first.top1 <= 1.0
    assert first.details["arch"] == to_string(TINY)
    assert first.details["settings"]["train"]["steps"] == 3
    assert first.details["settings"]["data"]["resolution"] == 32
    assert first.details["steps"] == 3 and first.details["history"]
    assert evaluator.trainings == 1
    again = evaluator.evaluate(TINY.replace(name="same network, other label"))
    assert again is first and evaluator.trainings == 1 and evaluator.cache_hits == 1
    evaluator.evaluate(OTHER)
    assert evaluator.trainings == 2


def test_other_settings_do_not_share_results():
    a = ProxyTrainingEvaluator(DATA, TRAIN)
    b = ProxyTrainingEvaluator(DATA, dataclasses.replace(TRAIN, lr=0.01))
    c = ProxyTrainingEvaluator(DATA, dataclasses.replace(TRAIN, progress=True, device="auto"))
    assert a.key(TINY) != b.key(TINY)
    # Display and device do not change what is trained.
    assert a.key(TINY) == c.key(TINY)


def test_disk_cache_survives_a_restart(tmp_path):
    path = tmp_path / "cache.jsonl"
    first = ProxyTrainingEvaluator(DATA, TRAIN, cache_path=path).evaluate(TINY)
    restarted = ProxyTrainingEvaluator(DATA, TRAIN, cache_path=path)
    assert restarted.cached(TINY) is not None and restarted.cached(OTHER) is None
    result = restarted.evaluate(TINY)
    assert restarted.trainings == 0 and restarted.cache_hits == 1
    assert result.top1 == first.top1 and result.top5 == first.top5
    assert result.details["settings"] == first.details["settings"]
    # A line torn by a crash is skipped with a warning, the rest still loads.
    with open(path, "a") as handle:
        handle.write('{"key": "torn')
    with pytest.warns(UserWarning, match="unreadable cache line"):
        again = ProxyTrainingEvaluator(DATA, TRAIN, cache_path=path)
    assert again.cached(TINY) is not None
    rows = [json.loads(line) for line in path.read_text().splitlines()[:1]]
    assert rows[0]["key"].startswith(to_string(TINY) + "#")


def test_per_spec_checkpoints(tmp_path):
    evaluator = ProxyTrainingEvaluator(DATA, dataclasses.replace(TRAIN, checkpoint_dir=str(tmp_path)))
    evaluator.evaluate(TINY)
    evaluator.evaluate(OTHER)
    assert len(list(tmp_path.glob("*/last.pt"))) == 2
