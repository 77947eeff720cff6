"""A checkpoint is refused for other settings, and a setting it predates counts as its default."""

from __future__ import annotations

import pytest

from nas.training.checkpoint import CheckpointError, check_matches, settings_diff

SAVED = {"train": {"lr": 0.1, "steps": 10}, "data": {"name": "cifar10"}}


def test_a_changed_setting_is_named_with_both_values():
    now = {"train": {"lr": 0.2, "steps": 10}, "data": {"name": "cifar10"}}
    assert settings_diff(SAVED, now) == ["train.lr: checkpoint 0.1 vs now 0.2"]
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: written with other settings \(train\.lr"):
        check_matches({"arch": "a", "settings": SAVED}, "ckpt.pt", arch="a", settings=now)


def test_a_setting_the_checkpoint_predates_counts_as_its_default():
    now = {"train": {"lr": 0.1, "steps": 10, "new_flag": True}, "data": {"name": "cifar10"}}
    defaults = {"train": {"lr": 0.1, "steps": None, "new_flag": True}}
    assert settings_diff(SAVED, now, defaults) == []
    check_matches({"arch": "a", "settings": SAVED}, "ckpt.pt", arch="a", settings=now, defaults=defaults)
    # ... and only its default: asked for another value, the older checkpoint is refused.
    other = {"train": {**now["train"], "new_flag": False}, "data": now["data"]}
    assert settings_diff(SAVED, other, defaults) == ["train.new_flag: checkpoint True vs now False"]
    # Without defaults an absent setting never matches a value.
    assert settings_diff(SAVED, now) == ["train.new_flag: checkpoint None vs now True"]
