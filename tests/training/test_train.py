from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from nas.arch.codecs import from_string, load_spec
from nas.config import ConfigError
from nas.models.bn import recalibrate_bn
from nas.models.builder import BN_MOMENTUM, build_model
from nas.training.data import make_loaders
from nas.training.data_config import DataConfig
from nas.training.train import (
    CheckpointError,
    NonFiniteLossError,
    WeightsError,
    checkpoint_steps,
    load_weights,
    lr_factor,
    train,
)
from nas.training.scoring import evaluate_model
from nas.training.train_config import TrainConfig

# A four-block network: trains in well under a second a step at 32x32 on two cores.
TINY = from_string(
    "stem8_hs|k3_e8_c8_s2_se_re|k3_e32_c16_s2_re|k5_e48_c16_s1_se_hs|k3_e64_c24_s2_hs"
    "|head96_128_hs_efficient|drop0.2|cls10|res32|w1.0_torchvision"
)
DATA = DataConfig(resolution=32, train_samples=160, val_samples=64, batch_size=32, num_classes=10)


def _cfg(**changes) -> TrainConfig:
    base = dict(epochs=1, lr=0.05, progress=False, bn_recalibration_batches=2, device="cpu")
    return TrainConfig(**{**base, **changes})


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


# ---------------------------------------------------------------------------- config
def test_train_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"TrainConfig.optimizer must be one of \['sgd', 'adamw', 'rmsprop'\], got 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match=r"TrainConfig.schedule must be one of \['cosine', 'step', 'constant'\]"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="TrainConfig.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="TrainConfig.lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="TrainConfig.device"):
        TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]; allowed keys: \['epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    assert TrainConfig.from_dict({"epochs": 3, "lr": 1}).epochs == 3


def test_lr_schedules():
    cosine = TrainConfig(lr=1.0, warmup_epochs=1.0)
    assert lr_factor(0, cosine, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, cosine, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, cosine, 10, 100) == pytest.approx(1.0)
    assert lr_factor(99, cosine, 10, 100) < 0.001
    step = TrainConfig(schedule="step", lr_step_epochs=2.0, lr_gamma=0.5)
    assert [lr_factor(s, step, 10, 100) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(77, TrainConfig(schedule="constant"), 10, 100) == 1.0


# ---------------------------------------------------------------------------- training
def test_train_is_repeatable_and_reports():
    loaders = make_loaders(DATA, seed=0)
    a = train(TINY, DATA, _cfg(), loaders=loaders)
    b = train(TINY, DATA, _cfg(), loaders=make_loaders(DATA, seed=0))
    assert a.top1 == b.top1 and a.top5 == b.top5 and a.loss == b.loss
    assert _same_state(a.model, b.model)
    assert 0.0 <= a.top1 <= a.top5 <= 1.0 and math.isfinite(a.loss)
    assert a.steps == 5 and len(a.history) == 1
    assert {"epoch", "step", "lr", "train_loss", "train_top1", "val_top1", "val_top5",
            "val_loss", "seconds"} <= set(a.history[0])
    assert a.images_per_second > 0 and a.seconds > 0
    assert a.settings["train"]["seed"] == 0 and a.settings["data"]["resolution"] == 32
    c = train(TINY, DATA, _cfg(seed=1), loaders=make_loaders(DATA, seed=1))
    assert not _same_state(a.model, c.model)


def test_steps_override_epochs_and_optimizers():
    for optimizer in ("adamw", "rmsprop"):
        result = train(TINY, DATA, _cfg(epochs=5, steps=2, optimizer=optimizer, lr=1e-3,
                                        schedule="step"))
        assert result.steps == 2 and len(result.history) == 1


def test_top5_is_none_below_five_classes():
    data = DataConfig(resolution=32, train_samples=64, val_samples=12, batch_size=16, num_classes=3)
    result = train(TINY, data, _cfg(steps=2))
    assert result.top5 is None and result.history[-1]["val_top5"] is None


def test_non_finite_loss_raises_naming_the_step():
    model = build_model(TINY, num_classes=10)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.classifier.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="non-finite train_loss nan at step 3") as info:
        train(model, DATA, _cfg())
    assert info.value.step == 3 and math.isnan(info.value.loss)


def test_huge_learning_rate_raises_not_nan_accuracy():
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train(TINY, DATA, _cfg(lr=1e10, epochs=2, label_smoothing=0.0))


def test_model_with_wrong_class_count_is_refused():
    with pytest.raises(ValueError, match="100 outputs but the dataset has 10 classes"):
        train(build_model(TINY, num_classes=100), DATA, _cfg())


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("stop_at", [4, 7])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, stop_at):
    # 5 steps an epoch, 8 steps in all; checkpoints at steps 3, 5 (epoch end), 6 and 8.
    settings = dict(steps=8, checkpoint_every=3)
    straight = train(TINY, DATA, _cfg(**settings))

    def interrupt(step: int, loss: float) -> None:
        if step == stop_at:
            raise KeyboardInterrupt

    cfg = _cfg(**settings, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(KeyboardInterrupt):
        train(TINY, DATA, cfg, on_step=interrupt)
    resumed = train(TINY, DATA, cfg, resume=True)
    assert resumed.steps == 8
    assert resumed.top1 == straight.top1 and resumed.loss == straight.loss
    assert _same_state(resumed.model, straight.model)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = _cfg(steps=2, checkpoint_dir=str(tmp_path))
    train(TINY, DATA, cfg)
    with pytest.raises(CheckpointError, match=r"train.lr: checkpoint 0.05 vs now 0.1"):
        train(TINY, DATA, _cfg(steps=2, lr=0.1, checkpoint_dir=str(tmp_path)), resume=True)


def test_checkpoint_steps_reads_the_step_a_run_was_saved_at(tmp_path):
    assert checkpoint_steps(tmp_path) is None  # no run there yet
    interrupted = _cfg(steps=8, checkpoint_every=3, checkpoint_dir=str(tmp_path))

    def stop_at_step_4(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TINY, DATA, interrupted, on_step=stop_at_step_4)
    assert checkpoint_steps(tmp_path) == 3  # the last checkpoint before the interruption
    torch.save({"format": "something else"}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint_steps(tmp_path)


# ---------------------------------------------------------------------------- evaluation, weights
def test_evaluate_model_counts_exactly():
    class Fixed(nn.Module):
        def forward(self, x):
            # Scores 9, 8, ..., 0 for classes 0..9 whatever the input.
            return torch.arange(9.0, -1.0, -1.0).expand(len(x), 10)

    images = torch.zeros(10, 3, 4, 4)
    labels = torch.arange(10)
    loader = torch.utils.data.DataLoader(list(zip(images, labels)), batch_size=4)
    top1, top5, loss = evaluate_model(Fixed(), loader, "cpu")
    assert top1 == pytest.approx(0.1) and top5 == pytest.approx(0.5) and loss > 0


def test_load_torchvision_weights_reinitialises_classifier():
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small().state_dict()
    model = build_model(load_spec("small"), num_classes=10)
    before = model.classifier[3].weight.clone()
    assert load_weights(model, reference) == ["classifier.3.bias", "classifier.3.weight"]
    assert torch.equal(model.features[1].block[0][0].weight, reference["features.1.block.0.0.weight"])
    assert torch.equal(model.classifier[3].weight, before)
    large = torchvision.models.mobilenet_v3_large().state_dict()
    with pytest.raises(WeightsError, match="keys do not match the model"):
        load_weights(model, large)
    shrunk = dict(reference, **{"features.0.0.weight": torch.zeros(8, 3, 3, 3)})
    with pytest.raises(WeightsError, match=r"features.0.0.weight: file \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        load_weights(model, shrunk)


# ---------------------------------------------------------------------------- BN recalibration
def test_recalibration_measures_the_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(3, momentum=0.01), nn.Dropout(0.5))
    net.eval()
    data = [torch.randn(8, 3, 5, 5) * 2.0 + torch.tensor([5.0, -1.0, 0.5])[:, None, None]
            for _ in range(6)]
    used = recalibrate_bn(net, [(x, 0) for x in data], num_batches=4, device="cpu")
    assert used == 4
    stacked = torch.cat(data[:4])
    bn = net[0]
    # momentum=None: the exact average of the four batches' statistics.
    assert torch.allclose(bn.running_mean, stacked.mean((0, 2, 3)), atol=1e-5)
    batch_vars = torch.stack([x.var((0, 2, 3), unbiased=True) for x in data[:4]])
    assert torch.allclose(bn.running_var, batch_vars.mean(0), atol=1e-4)
    assert bn.momentum == 0.01 and not net.training and not bn.training


def test_recalibration_on_a_network():
    model = build_model(TINY, num_classes=10)
    model.train()
    loader = make_loaders(DATA, seed=0).train
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, loader, num_batches=2)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    first_bn = model.features[0][1]
    assert first_bn.momentum == BN_MOMENTUM and model.training
    assert first_bn.num_batches_tracked.item() == 2
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(model, [], num_batches=2)
    assert torch.equal(model.state_dict()["features.0.1.running_mean"], after["features.0.1.running_mean"])


# ---------------------------------------------------------------------------- speed knobs
def test_bf16_autocast_trains_and_fp16_needs_cuda() -> None:
    result = train(TINY, DATA, _cfg(precision="bf16"))
    assert 0.0 <= result.top1 <= 1.0 and math.isfinite(result.loss)
    assert result.settings["train"]["precision"] == "bf16"  # changes results: part of the key
    with pytest.raises(ConfigError, match="precision fp16 .* needs a CUDA device"):
        train(TINY, DATA, _cfg(precision="fp16"))
    with pytest.raises(ConfigError, match="TrainConfig.precision must be one of"):
        _cfg(precision="fp8")


def test_channels_last_changes_speed_not_results() -> None:
    fast, plain = train(TINY, DATA, _cfg()), train(TINY, DATA, _cfg(channels_last=False))
    assert fast.settings == plain.settings  # a speed knob: not part of the result's key
    assert abs(fast.loss - plain.loss) < 1e-3 and abs(fast.top1 - plain.top1) <= 2 / 64
