"""L2-norm channel pruning: the pruned network computes what the original computes with the
dropped channels zeroed (expansions, residual groups, tied depthwise channels, SE, head)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.arch.codecs import load_spec
from nas.arch.spec import BlockSpec, NetworkSpec
from nas.models.builder import build_model
from nas.models.channel_groups import STEM, PruneError, check_prunable, has_expand_conv, residual_groups
from nas.models.prune import apply_plan, plan_pruning, prune_model, zero_pruned_channels

from conftest import TINY  # five blocks with every pruning case

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def trained_looking(spec: NetworkSpec, seed: int = 0) -> nn.Module:
    """A model with non-trivial BN statistics/affines and a classifier with real scale,
    so that a wrong slice shows up in the logits."""
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.2)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def assert_truncation_equals_zeroing(model: nn.Module, target: NetworkSpec) -> None:
    plan = plan_pruning(model, target)
    pruned = apply_plan(model, plan).eval()
    zeroed = build_model(model.spec)
    zeroed.load_state_dict(model.state_dict())
    zeroed.eval()
    zero_pruned_channels(zeroed, plan)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b, original = pruned(x), zeroed(x), model(x)
    assert (a - b).abs().max().item() <= TOL
    # ... and the pruning changed something (the check is not vacuous).
    assert (a - original).abs().max().item() > 10 * TOL




def test_residual_groups_of_the_canonical_networks():
    small = [(g.positions, g.channels, g.consumer) for g in residual_groups(load_spec("small"))]
    assert small == [((STEM,), 16, 0), ((0,), 16, 1), ((1, 2), 24, 3), ((3, 4, 5), 40, 6),
                     ((6, 7), 48, 8), ((8, 9, 10), 96, None)]
    large = residual_groups(load_spec("large"))
    # Large's first block is stride 1 with 16 -> 16: the stem is in its group.
    assert large[0].positions == (STEM, 0) and large[0].channels == 16


def test_expansion_shrink_equals_zeroing():
    model = trained_looking(TINY)
    blocks = list(TINY.blocks)
    blocks[1] = blocks[1].replace(expansion=32)        # no SE
    blocks[3] = blocks[3].replace(expansion=40)        # with SE: its squeeze shrinks too
    assert_truncation_equals_zeroing(model, TINY.with_blocks(blocks))


def test_bottleneck_group_with_residuals_equals_zeroing():
    model = trained_looking(TINY)
    blocks = list(TINY.blocks)
    # Group {3, 4} (32 ch, one residual) -> 24: outputs of 3 and 4, input of 4, the last conv.
    blocks[3] = blocks[3].replace(out=24)
    blocks[4] = blocks[4].replace(out=24)
    # Group {1, 2} (24 ch, residual) -> 16: the consumer (block 3) loses input channels.
    blocks[1] = blocks[1].replace(out=16)
    blocks[2] = blocks[2].replace(out=16)
    assert_truncation_equals_zeroing(model, TINY.with_blocks(blocks))


def test_stem_group_with_tied_consumer_equals_zeroing():
    # Small's stem feeds block 0, which has no expand conv (expansion == in = 16): its
    # depthwise channels (and SE) are the stem's channels and must shrink with them.
    model = trained_looking(TINY)
    blocks = list(TINY.blocks)
    blocks[0] = blocks[0].replace(expansion=8)
    target = TINY.with_blocks(blocks).replace(stem_channels=8)
    assert not has_expand_conv(TINY)[0]
    assert_truncation_equals_zeroing(model, target)


def test_large_first_group_with_tied_member_and_everything_at_once():
    # Large: stem + block 0 (16 -> 16, stride 1, no expand conv) share one width; shrink
    # it, every other residual group, expansions, the last conv and the head together.
    spec = load_spec("large")
    model = trained_looking(spec)
    groups = residual_groups(spec)
    width = {p: g.channels - 8 for g in groups for p in g.positions}
    blocks = []
    for ctx in spec.contexts():
        b = ctx.block
        new_in = width[ctx.index - 1]
        exp = new_in if b.expansion == ctx.in_channels else b.expansion - 16
        blocks.append(b.replace(expansion=exp, out=width[ctx.index]))
    target = spec.with_blocks(blocks).replace(stem_channels=width[STEM], last_conv=spec.last_conv - 64,
                                              head_features=spec.head_features - 128)
    assert_truncation_equals_zeroing(model, target)


def test_keeps_the_largest_l2_filters():
    model = trained_looking(TINY)
    expand = model.features[2].block[0][0].weight  # block 1's expand conv (48 filters)
    with torch.no_grad():
        expand.mul_(0.01)
        expand[[5, 17, 40]] *= 1000.0  # three filters far larger than the rest
    blocks = list(TINY.blocks)
    blocks[1] = blocks[1].replace(expansion=8)
    plan = plan_pruning(model, TINY.with_blocks(blocks))
    assert {5, 17, 40} <= set(plan.expansions[1])
    assert plan.expansions[1] == tuple(sorted(plan.expansions[1]))


def test_pruned_model_trains_and_keeps_train_mode():
    model = trained_looking(TINY).train()
    blocks = list(TINY.blocks)
    blocks[4] = blocks[4].replace(expansion=48)
    pruned = prune_model(model, TINY.with_blocks(blocks))
    assert pruned.training
    loss = pruned(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.with_blocks([s.blocks[0].replace(out=24), *s.blocks[1:]]), "grows"),
    (lambda s: s.with_blocks([*s.blocks[:2], s.blocks[2].replace(out=16), *s.blocks[3:]]),
     "residual pattern"),
    (lambda s: s.with_blocks([s.blocks[0], s.blocks[1].replace(expansion=16), *s.blocks[2:]]),
     "expand conv"),
    (lambda s: s.with_blocks([s.blocks[0].replace(kernel=5), *s.blocks[1:]]), "kernel"),
])
def test_rejects_targets_that_are_not_prunings(change, message):
    with pytest.raises(PruneError, match=message):
        check_prunable(TINY, change(TINY))
