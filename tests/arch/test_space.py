from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
import yaml

from nas.arch.codecs import load_spec
from nas.arch.space import SPACES_DIR, SpaceError, load_space, space_from_dict

SPACES = ["mobilenetv3_large", "mobilenetv3_small"]


@pytest.mark.parametrize("name, canonical", [("mobilenetv3_large", "large"), ("mobilenetv3_small", "small")])
def test_canonical_network_is_a_point_of_its_space(name, canonical):
    space = load_space(name)
    spec = load_spec(canonical)
    params = space.params_of(spec)
    assert space.suggest(optuna.trial.FixedTrial(params)) == spec
    assert params["s3_b1_kernel"] == spec.blocks[3].kernel  # stable hierarchical names
    assert "s3_depth" in params and params["s3_depth"] == 0


@pytest.mark.parametrize("name", SPACES)
def test_params_of_inverts_suggest(name):
    space = load_space(name)
    rng = random.Random(1)
    seen_depths = set()
    for _ in range(200):
        spec = space.sample(rng)
        params = space.params_of(spec)
        assert space.suggest(optuna.trial.FixedTrial(params)) == spec
        seen_depths.add(len(spec.blocks))
    assert len(seen_depths) > 3  # depth choices are exercised


def test_suggest_with_a_real_study_and_enqueue():
    space = load_space("mobilenetv3_small")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(space.params_of(space.canonical()))
    specs = []
    study.optimize(lambda t: specs.append(space.suggest(t)) or 0.0, n_trials=5)
    assert specs[0] == load_spec("small")
    assert len(set(specs)) == 5


def test_block_choices_cover_every_sampled_block():
    space = load_space("mobilenetv3_large")
    options = {(c, r, b) for c, r, blocks in space.block_choices() for b in blocks}
    rng = random.Random(0)
    for _ in range(50):
        for ctx in space.sample(rng).contexts():
            assert (ctx.in_channels, ctx.in_resolution, ctx.block) in options


def test_spec_outside_the_space_is_named():
    space = load_space("mobilenetv3_small")
    spec = load_spec("small")
    odd = spec.with_blocks([spec.blocks[0].replace(kernel=9), *spec.blocks[1:]])
    with pytest.raises(SpaceError, match=r"s1_b1_kernel = 9 is not a choice"):
        space.params_of(odd)
    with pytest.raises(SpaceError, match="stage s2"):
        space.params_of(spec.with_blocks(spec.blocks[:2] + spec.blocks[3:]))


def _data(name: str = "mobilenetv3_small") -> dict:
    return yaml.safe_load((SPACES_DIR / f"{name}.yaml").read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(colour="red"), r"unknown key\(s\) \['colour'\]"),
        (lambda d: d.pop("stages"), r"missing key\(s\) \['stages'\]"),
        (lambda d: d["stages"][1].update(stride=3), r"stage s2.stride must be 1 or 2"),
        (lambda d: d["stages"][1].update(width=2), r"stage s2: unknown key\(s\) \['width'\]"),
        (lambda d: d["choices"].update(kernel=[3, 4]), r"kernel 4 must be odd"),
        (lambda d: d["choices"].update(activation=["RE", "GELU"]), r"choices.activation"),
        (lambda d: d["stages"][2].update(expansion=[100, 200]), r"base network is not a point"),
        (lambda d: d["stages"][3].update(out=40), r"stage s4.out: 40 equals the previous"),
        (lambda d: d["stages"][0].update(depth=[-1, 0]), r"stage s1.depth: offset -1 leaves no block"),
        (lambda d: d.update(base="medium"), r"base: .*not a canonical name"),
    ],
)
def test_bad_space_fails_on_load(edit, message):
    data = _data()
    edit(data)
    with pytest.raises(SpaceError, match=message):
        space_from_dict(data, "my_space.yaml")


def test_load_space_errors(tmp_path: Path):
    with pytest.raises(SpaceError, match="shipped spaces"):
        load_space("mobilenetv3_medium")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match=r"bad.yaml: not valid YAML at line"):
        load_space(bad)
