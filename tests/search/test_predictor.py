"""The accuracy predictor: its encoding, what it learns, its refusals, its files, its data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from nas.arch.codecs import to_string
from nas.arch.space import load_space, space_from_dict
from nas.arch.spec import NetworkSpec
from nas.search.predictor import AccuracyPredictor, Encoding, PredictorError, PredictorModelConfig, genome
from nas.search.predictor_data import append_score, collect_scores, read_scores, Score
from nas.training.evaluator import EvalResult

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE_FILE = Path(__file__).resolve().parents[1] / "data" / "spaces" / "space" / "tiny.yaml"
FAST = PredictorModelConfig(hidden=64, layers=2, epochs=150, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def small():
    return load_space("mobilenetv3_small")


def _networks(space, count: int, seed: int) -> list[NetworkSpec]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        spec = space.sample(rng)
        if to_string(spec) not in seen:
            seen.add(to_string(spec))
            out.append(spec)
    return out


def _known_target(space, specs: list[NetworkSpec]) -> np.ndarray:
    """A known function of the choices: a weight per (parameter, value), deeper stages'
    blocks included, so an encoding that drops or confuses blocks cannot rank it."""
    rng = np.random.default_rng(0)
    weights = {(name, value): float(rng.normal()) for name, choices in genome(space) for value in choices}
    return np.array([0.6 + 0.01 * sum(weights[(n, v)] for n, v in space.params_of(s).items())
                     for s in specs])


def test_the_encoding_is_one_hot_per_used_block_and_tells_networks_apart(small):
    encoding = Encoding(small)
    specs = _networks(small, 400, seed=1)
    x = encoding.encode(specs)
    assert x.shape == (400, encoding.size) and set(np.unique(x)) == {0.0, 1.0}
    for spec, row in zip(specs[:50], x[:50]):
        # one 1 per parameter the network has (its depths and its used blocks' 4 choices)
        assert row.sum() == len(small.params_of(spec))
    assert len({row.tobytes() for row in x}) == 400  # distinct networks, distinct encodings


@pytest.mark.parametrize("space_name", ["mobilenetv3_small", "mobilenetv3_large"])
def test_genomes_encode_as_the_networks_they_decode_to(space_name):
    """The search's vectorised path (genome -> one-hot) equals the network path
    (genome -> spec -> one-hot), unused deeper blocks included."""
    from nas.search.predictor_search import _Params

    space = load_space(space_name)
    encoding = Encoding(space)
    genes = genome(space)
    rng = np.random.default_rng(0)
    genomes = np.stack([rng.integers(0, len(choices), 300) for _, choices in genes], axis=1)
    specs = [space.suggest(_Params({name: choices[i] for (name, choices), i in zip(genes, row)}))
             for row in genomes.tolist()]
    assert np.array_equal(encoding.encode_genomes(genomes), encoding.encode(specs))
    assert any(len(stage.depth_offsets) > 1 for stage in space.stages)  # depths are exercised


def test_it_ranks_held_out_networks_of_a_known_target(small):
    specs = _networks(small, 500, seed=2)
    target = _known_target(small, specs)
    predictor = AccuracyPredictor(small, FAST)
    fit = predictor.fit(specs[:300], target[:300])
    assert fit["samples"] == 300
    predicted = predictor.predict(specs[300:])
    tau = kendalltau(predicted, target[300:]).statistic
    assert tau > 0.85, tau
    assert np.sqrt(np.mean((predicted - target[300:]) ** 2)) < 0.5 * target.std()


def test_shuffled_scores_teach_it_nothing(small):
    """The test above can fail: with the scores shuffled the held-out ranking is chance."""
    specs = _networks(small, 500, seed=2)
    target = _known_target(small, specs)
    shuffled = np.random.default_rng(1).permutation(target[:300])
    predictor = AccuracyPredictor(small, FAST)
    predictor.fit(specs[:300], shuffled)
    assert abs(kendalltau(predictor.predict(specs[300:]), target[300:]).statistic) < 0.25


def test_a_network_outside_the_space_is_refused_naming_the_block_and_value(small):
    predictor = AccuracyPredictor(small, FAST)
    specs = _networks(small, 20, seed=3)
    predictor.fit(specs, np.linspace(0.5, 0.7, 20))
    blocks = list(specs[0].blocks)
    blocks[3] = blocks[3].replace(kernel=9)  # the space's kernels are 3, 5, 7
    with pytest.raises(PredictorError, match=r"s3_b1_kernel = 9 is not a choice"):
        predictor.predict([specs[0].with_blocks(blocks)])
    blocks = list(specs[0].blocks)
    blocks[1] = blocks[1].replace(expansion=80)
    with pytest.raises(PredictorError, match=r"s2_b1_expansion = 80"):
        predictor.predict([specs[0].with_blocks(blocks)])
    with pytest.raises(PredictorError, match="fitted on space 'mobilenetv3_small'.*not on space 'tiny'"):
        predictor.check_space(load_space(SPACE_FILE))
    predictor.check_space(load_space("mobilenetv3_small"))  # the same space, loaded again: fine


def test_a_space_with_another_choice_is_another_space(small):
    from nas.search.predictor import space_document, space_hash

    document = {"name": small.name, "base": "small", "resolution": 224, "num_classes": 1000,
                "choices": {"kernel": [3, 5], "se": [False, True], "activation": ["RE", "HS"]},
                "stages": [{"out": s.out, "stride": s.stride, "blocks": s.blocks,
                            "expansion": list(s.expansions), "depth": list(s.depth_offsets)}
                           for s in small.stages]}
    narrower = space_from_dict(document)
    assert space_document(narrower)["name"] == small.name and space_hash(narrower) != space_hash(small)
    with pytest.raises(PredictorError, match="choices hash"):
        AccuracyPredictor(small).check_space(narrower)


def test_an_unfitted_predictor_refuses_to_predict(small):
    with pytest.raises(PredictorError, match="not fitted"):
        AccuracyPredictor(small).predict([small.canonical()])


def test_save_and_load_give_identical_predictions(small, tmp_path: Path):
    specs = _networks(small, 60, seed=4)
    predictor = AccuracyPredictor(small, FAST)
    predictor.fit(specs[:40], _known_target(small, specs[:40]))
    weights, meta = predictor.save(tmp_path / "p" / "predictor.pt")
    assert weights.stat().st_size < 1_000_000 and meta.suffix == ".json"
    loaded = AccuracyPredictor.load(meta)
    assert np.array_equal(loaded.predict(specs[40:]), predictor.predict(specs[40:]))
    assert loaded.space == small and loaded.fitted == predictor.fitted
    loaded.check_space(small)
    meta.write_text(meta.read_text().replace('"kernels": [\n   3,', '"kernels": [\n   9,'))
    with pytest.raises(PredictorError, match="does not match its recorded hash"):
        AccuracyPredictor.load(weights)
    weights.unlink()
    with pytest.raises(PredictorError, match="missing"):
        AccuracyPredictor.load(meta)


# ---------------------------------------------------------------------------- the data
class _Counting:
    """An evaluator whose top-1 is a known function of the network; counts its calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def evaluate(self, spec: NetworkSpec) -> EvalResult:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(to_string(spec))
        return EvalResult(top1=sum(b.kernel for b in spec.blocks) / 100)


def test_scores_are_written_as_they_come_and_a_killed_collection_resumes(tmp_path: Path):
    space = load_space(SPACE_FILE)
    path = tmp_path / "scores.csv"
    first = _Counting(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        collect_scores(space, first, 6, path, seed=5, canonical_first=True)
    assert len(read_scores(path)) == 3  # each score on disk before the next one is taken
    second = _Counting()
    scores = collect_scores(space, second, 6, path, seed=5, canonical_first=True)
    assert len(second.calls) == 3 and not set(second.calls) & set(first.calls)
    assert [s.spec for s in scores[:3]] == first.calls
    assert scores[0].spec == to_string(space.canonical())
    assert len({s.spec for s in scores}) == 6
    assert all(s.top1 == sum(b.kernel for b in s.network().blocks) / 100 for s in scores)
    # Asked for fewer: the first ones, nothing scored.
    third = _Counting()
    assert collect_scores(space, third, 4, path, seed=5) == scores[:4] and third.calls == []


def test_a_torn_last_row_is_skipped_and_not_glued_to_the_next(tmp_path: Path):
    space = load_space(SPACE_FILE)
    path = tmp_path / "scores.csv"
    collect_scores(space, _Counting(), 2, path, seed=0)
    with open(path, "a") as handle:
        handle.write(to_string(space.canonical())[:30])  # a kill mid-row
    assert len(read_scores(path)) == 2
    append_score(path, Score(to_string(space.canonical()), 0.5, 1.0))
    rows = read_scores(path)
    assert len(rows) == 3 and rows[-1] == Score(to_string(space.canonical()), 0.5, 1.0)
