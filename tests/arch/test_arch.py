from __future__ import annotations

import dataclasses
import importlib
import sys

import pytest

from nas.arch.codecs import load_spec
from nas.arch.spec import BlockSpec, NetworkSpec, SpecError, make_divisible


def _block(**kw):
    base = dict(kernel=3, expansion=16, out=16, se=False, activation="RE", stride=1)
    base.update(kw)
    return BlockSpec(**base)


def test_arch_imports_without_torch():
    sys.modules.pop("nas.arch.spec", None)
    saved = sys.modules.get("torch")
    sys.modules["torch"] = None  # any import of torch now raises ImportError
    try:
        module = importlib.import_module("nas.arch.spec")
        assert module.NetworkSpec is not None
    finally:
        if saved is not None:
            sys.modules["torch"] = saved
        else:
            del sys.modules["torch"]


def test_specs_are_immutable_and_hashable():
    spec = load_spec("small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.resolution = 96  # type: ignore[misc]
    assert hash(spec) == hash(load_spec("small"))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"stride": 3}, "stride"),
        ({"kernel": 4}, "kernel"),
        ({"out": 0}, "out"),
        ({"expansion": -8}, "expansion"),
        ({"activation": "swish"}, "activation"),
        ({"se": "yes"}, "se"),
        ({"dilation": 3}, "dilation"),
    ],
)
def test_block_validation_names_the_field(changes, field):
    with pytest.raises(SpecError, match=f"'{field}'"):
        _block(**changes)


def test_network_validation_names_row_and_field():
    blocks = [_block(), _block()]
    object.__setattr__(blocks[1], "stride", 5)  # bypass the block's own check
    with pytest.raises(SpecError, match=r"bneck row 2: field 'stride'"):
        NetworkSpec(blocks=tuple(blocks))
    with pytest.raises(SpecError, match="last_stage"):
        NetworkSpec(blocks=(_block(),), last_stage="fancy")
    with pytest.raises(SpecError, match="blocks"):
        NetworkSpec(blocks=())


def test_make_divisible_matches_torchvision():
    from torchvision.models._utils import _make_divisible

    for v in [3.0, 12.0, 16 * 0.35, 88 * 0.75, 960 * 1.25, 184 * 0.5, 7.9, 100.0]:
        assert make_divisible(v) == _make_divisible(v, 8)


def test_contexts_track_channels_and_resolution():
    spec = load_spec("large")
    ctxs = list(spec.contexts())
    assert [c.in_resolution for c in ctxs][:3] == [112, 112, 56]
    assert ctxs[0].in_channels == 16 and ctxs[0].has_residual
    assert not ctxs[1].has_residual  # stride 2
    assert ctxs[-1].in_channels == 160 and spec.final_resolution == 7


def test_width_conventions_differ_as_documented():
    large = load_spec("large")
    tv = large.replace(width_mult=0.75).resolved()
    tf = large.replace(width_mult=0.75, width_convention="tf").resolved()
    # torchvision scales the pooled head, TF keeps it for multipliers below one.
    assert tv.head_features == 960 and tf.head_features == 1280
    # TF: expansion is a ratio of the scaled input (80 -> 64, 200/80 * 64 = 160).
    assert tf.blocks[7].expansion == 160
    assert tv.blocks[7].expansion == make_divisible(200 * 0.75)
    assert tv.width_mult == 1.0 and tf.width_mult == 1.0
