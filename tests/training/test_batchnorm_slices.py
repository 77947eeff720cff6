"""BatchNorm over fixed slices of the batch in one process: each slice normalised as a rank
holding only that slice would normalise it, the running statistics moved by the mean of the
slices' updates (what the ranks' average of their own updates gives)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nas.config import ConfigError
from nas.supernet.dynamic_ops import DynamicBatchNorm2d
from nas.supernet.train import SupernetTrainConfig
from nas.training.distributed import DataParallel
from nas.training.global_batch import check_slices, global_batch_layers


def _bn(cls: type[nn.BatchNorm2d] = nn.BatchNorm2d, channels: int = 6, momentum: float | None = 0.1):
    bn = cls(channels, momentum=momentum)
    with torch.no_grad():  # not the initial 1 / 0, so a wrong slice of them would show
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.train()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_each_slice_is_normalised_alone_and_the_running_statistics_move_by_the_mean(momentum):
    torch.manual_seed(0)
    x = torch.randn(8, 6, 5, 5) * 3 + 2
    bn = _bn(momentum=momentum)
    ranks = [copy.deepcopy(bn) for _ in range(2)]  # one BatchNorm per "rank", its own slice
    expected = torch.cat([rank(part) for rank, part in zip(ranks, x.chunk(2))])
    with global_batch_layers(bn, DataParallel(), batchnorm_slices=2):
        out = bn(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name in ("running_mean", "running_var"):
        averaged = (getattr(ranks[0], name) + getattr(ranks[1], name)) / 2
        torch.testing.assert_close(getattr(bn, name), averaged, rtol=1e-6, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    # Not the whole batch's normalisation (the slices' means differ).
    whole = copy.deepcopy(ranks[0]).train()
    assert not torch.allclose(out, whole(x), atol=1e-3)


def test_gradients_are_those_of_the_slices_and_the_layer_is_plain_again_afterwards():
    torch.manual_seed(1)
    x = torch.randn(6, 6, 4, 4, requires_grad=True)
    bn = _bn()
    ranks = [copy.deepcopy(bn) for _ in range(3)]
    reference = torch.cat([rank(part) for rank, part in zip(ranks, x.chunk(3))])
    (reference.square().sum()).backward()
    expected_x, expected_w = x.grad.clone(), sum(r.weight.grad for r in ranks)
    x.grad = None
    with global_batch_layers(bn, DataParallel(), batchnorm_slices=3):
        bn(x).square().sum().backward()
    torch.testing.assert_close(x.grad, expected_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, expected_w, rtol=1e-4, atol=1e-5)
    assert "forward" not in vars(bn)  # restored: the layer is the plain one outside the block


def test_elastic_batchnorm_slices_its_active_channels_only():
    torch.manual_seed(2)
    bn = _bn(DynamicBatchNorm2d, channels=8)
    untouched = bn.running_mean[4:].clone()
    x = torch.randn(4, 4, 3, 3)  # 4 of the layer's 8 channels active
    plain = nn.BatchNorm2d(4)
    with torch.no_grad():
        plain.weight.copy_(bn.weight[:4])
        plain.bias.copy_(bn.bias[:4])
        plain.running_mean.copy_(bn.running_mean[:4])
        plain.running_var.copy_(bn.running_var[:4])
    ranks = [copy.deepcopy(plain) for _ in range(2)]
    expected = torch.cat([rank(part) for rank, part in zip(ranks, x.chunk(2))])
    with global_batch_layers(bn, DataParallel(), batchnorm_slices=2):
        out = bn(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean[:4], (ranks[0].running_mean + ranks[1].running_mean) / 2)
    assert torch.equal(bn.running_mean[4:], untouched)


def test_eval_mode_and_one_slice_are_the_plain_layer():
    torch.manual_seed(3)
    x = torch.randn(4, 6, 3, 3)
    bn = _bn().eval()
    expected = copy.deepcopy(bn)(x)
    with global_batch_layers(bn, DataParallel(), batchnorm_slices=2):
        torch.testing.assert_close(bn(x), expected)
    with global_batch_layers(bn, DataParallel(), batchnorm_slices=1):
        assert "forward" not in vars(bn)  # nothing patched for one process and one slice


def test_slice_counts_the_ranks_cannot_share_are_refused_in_one_line():
    check_slices(1, 2)
    check_slices(4, 2)
    with pytest.raises(ConfigError, match=r"batchnorm_slices=3 with 2 processes.*multiple of 2"):
        check_slices(3, 2)
    with pytest.raises(ConfigError, match="batchnorm_slices"):
        SupernetTrainConfig(batchnorm_slices=0)
    bn = _bn()
    with global_batch_layers(bn, DataParallel(), batchnorm_slices=3), \
            pytest.raises(ValueError, match="4 rows does not split into 3"):
        bn(torch.randn(4, 6, 3, 3))


def test_a_batch_the_slices_do_not_divide_is_refused_before_training():
    from nas.arch.space import load_space
    from nas.supernet.train import new_supernet, train_supernet
    from nas.training.data_config import DataConfig

    data = DataConfig.from_dict({"name": "synthetic", "resolution": 32, "num_classes": 4, "train_samples": 20,
                                 "val_samples": 8, "batch_size": 10, "num_workers": 0, "seed": 0})
    cfg = SupernetTrainConfig(steps=1, batchnorm_slices=4, device="cpu", progress=False, checkpoint_every=None)
    supernet = new_supernet(load_space("mobilenetv3_small"), 4, cfg)
    with pytest.raises(ConfigError, match=r"data.batch_size=10 does not split into train.batchnorm_slices=4"):
        train_supernet(supernet, data, cfg)
