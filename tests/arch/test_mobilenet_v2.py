"""MobileNetV2 1.0 as a spec: the paper's comparison baseline (3.4M params, 300M MAdds)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from nas.arch.codecs import from_string, from_yaml, load_spec, to_string, to_yaml
from nas.arch.spec import SpecError
from nas.cost.keys import build_op, keys_for_spec
from nas.cost.profile import profile_spec
from nas.models.builder import build_model
from nas.models.channel_groups import PruneError
from nas.models.prune import prune_model

V2 = load_spec("v2")


def test_v2_has_torchvisions_layers_parameters_and_the_papers_madds():
    ours = build_model(V2)
    theirs = torchvision.models.mobilenet_v2()
    shapes = [tuple(t.shape) for t in ours.state_dict().values()]
    assert shapes == [tuple(t.shape) for t in theirs.state_dict().values()]
    profile = profile_spec(V2)
    assert profile.params == sum(p.numel() for p in theirs.parameters()) == 3_504_872
    assert profile.madds == pytest.approx(300e6, rel=0.01)  # paper / MobileNetV2 Table 4: 300M
    assert ours(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_v2_round_trips_and_its_tail_is_keyed():
    assert from_yaml(to_yaml(V2)) == V2 and from_string(to_string(V2)) == V2
    tail = keys_for_spec(V2)[-3:]
    assert tail == ["lastconv_r7_i320_k1_c1280_s1_r6", "pool_r7_i1280", "head_i1280_c1000"]
    module, shape = build_op(tail[0])
    assert isinstance(module[2], torch.nn.ReLU6) and shape == (320, 7, 7)


def test_the_v2_head_has_no_pooled_feature_layer():
    with pytest.raises(SpecError, match="'head_features' \\(1024\\) must equal 'last_conv' \\(1280\\)"):
        V2.replace(head_features=1024)


def test_pruning_a_v2_head_is_refused_clearly():
    smaller = V2.with_blocks([V2.blocks[0], V2.blocks[1].replace(expansion=64), *V2.blocks[2:]])
    with pytest.raises(PruneError, match="mobilenetv2"):
        prune_model(build_model(V2), smaller)
