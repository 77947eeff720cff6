"""What `nas-arch convert` writes builds the same network in timm and torchvision: equal
parameters, equal logits with the same weights, and timm's own state_dict keys for the
canonical networks (timm is a dev dependency for this test only)."""

from __future__ import annotations

import pytest
import torch

from nas.arch.codecs import load_spec
from nas.arch.convert import to_torchvision
from nas.arch.spec import SpecError
from nas.cli.arch import main
from nas.models.builder import build_model

timm = pytest.importorskip("timm")
from nas.models.timm_interop import to_timm_state_dict  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomized(spec) -> torch.nn.Module:
    """The spec's network with random weights and BatchNorm statistics (so a dropped or
    misplaced tensor changes the logits)."""
    model = build_model(spec.replace(resolution=64)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.4 + 0.8
                             if tensor.dim() == 1 else
                             torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


def _snippet_model(text: str) -> torch.nn.Module:
    namespace: dict = {}
    exec(compile(text, "<convert output>", "exec"), namespace)  # noqa: S102 - our own output
    return namespace["model"].eval()


@pytest.mark.parametrize("name", ["small", "large", "small_minimal", "large_reduced_tail"])
def test_timm_python_builds_the_same_network(name, capsys):
    assert main(["convert", name, "--to", "timm-python"]) == 0
    theirs = _snippet_model(capsys.readouterr().out)
    ours = _randomized(load_spec(name))
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    theirs.load_state_dict(to_timm_state_dict(ours.state_dict(), theirs.state_dict()))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)


def test_timm_python_keeps_widths_that_are_not_multiples_of_8():
    import dataclasses

    from nas.models.timm_interop import to_timm_python

    small = load_spec("small")
    blocks = list(small.blocks)
    blocks[1] = dataclasses.replace(blocks[1], out=20)
    blocks[2] = dataclasses.replace(blocks[2], out=20, expansion=80)
    spec = small.replace(blocks=tuple(blocks), stem_channels=20)
    theirs = _snippet_model(to_timm_python(spec))
    ours = _randomized(spec)
    theirs.load_state_dict(to_timm_state_dict(ours.state_dict(), theirs.state_dict()))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["small", "large"])
def test_timm_python_uses_timms_block_grouping(name, capsys):
    assert main(["convert", name, "--to", "timm-python"]) == 0
    theirs = _snippet_model(capsys.readouterr().out)
    reference = timm.create_model(f"mobilenetv3_{name}_100", pretrained=False)
    assert list(theirs.state_dict()) == list(reference.state_dict())


def test_timm_weights_of_another_network_are_refused(capsys):
    assert main(["convert", "small", "--to", "timm-python"]) == 0
    theirs = _snippet_model(capsys.readouterr().out).state_dict()
    with pytest.raises(SpecError, match="tensors, the timm model"):
        to_timm_state_dict(build_model(load_spec("large")).state_dict(), theirs)
    wider = load_spec("small").replace(width_mult=1.25)  # same layers, other shapes
    with pytest.raises(SpecError, match="does not fit timm's conv_stem.weight"):
        to_timm_state_dict(build_model(wider).state_dict(), theirs)


@pytest.mark.parametrize("name", ["small", "large"])
def test_torchvision_snippet_runs_as_written(name):
    spec = load_spec(name)
    theirs = _snippet_model(to_torchvision(spec))
    ours = _randomized(spec)
    theirs.load_state_dict(ours.state_dict())  # torchvision's key names
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)
