"""The accuracy predictor's training data: random networks of a space, scored by the supernet.

:func:`collect_scores` draws networks of the space uniformly at random from a seeded stream
(Once-for-All fits its predictor on randomly sampled sub-networks, Sec. 3.4), scores each with
an evaluator (the supernet's: :class:`nas.supernet.evaluator.SupernetEvaluator`, activate the
sub-network, recalibrate BatchNorm, top-1 on the selection split) and appends it to a CSV the
moment it exists. Started again on the same file it skips the networks already scored, so a
killed collection resumes; a network appears once.

The CSV's columns: ``spec`` (the one-line network string), ``top1``, ``seconds`` (what the
score took).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from nas._io import append_line
from nas.arch.codecs import from_string, to_string
from nas.arch.space import SearchSpace
from nas.arch.spec import NetworkSpec
from nas.search.predictor import PredictorError
from nas.training.evaluator import Evaluator

log = logging.getLogger(__name__)

COLUMNS = ("spec", "top1", "seconds")
# Consecutive draws that found only networks already drawn before the space counts as used up.
_MAX_REPEATS = 10_000


class Score(NamedTuple):
    """One scored network."""

    spec: str
    top1: float
    seconds: float

    def network(self) -> NetworkSpec:
        return from_string(self.spec)


def read_scores(path: str | Path) -> list[Score]:
    """The scores of ``path`` in file order, each network once ([] when there is no file).

    A row that does not parse (the last line of a killed writer) is skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[Score] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                score = Score(str(row["spec"]), float(row["top1"]), float(row["seconds"]))
                from_string(score.spec)
                if not math.isfinite(score.top1):
                    raise ValueError("non-finite top-1")
            except (KeyError, TypeError, ValueError) as err:
                log.warning("%s line %d: unreadable score row skipped (%s)", path, number, err)
                continue
            if score.spec not in seen:
                seen.add(score.spec)
                rows.append(score)
    return rows


def append_score(path: str | Path, score: Score) -> None:
    """Append one row (the header first, for a new file); never glued to a torn last line."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not path.is_file() or path.stat().st_size == 0:
        writer.writerow(COLUMNS)
    writer.writerow([score.spec, repr(score.top1), repr(score.seconds)])
    text = buffer.getvalue()
    if path.is_file() and path.stat().st_size and not _ends_with_newline(path):
        text = "\n" + text  # a kill cut the last row short: it stays one unreadable line
    append_line(path, text, what="the predictor's supernet scores")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def random_networks(space: SearchSpace, seed: int, *, canonical_first: bool = False) -> Iterator[NetworkSpec]:
    """Distinct networks of ``space``, uniformly at random from ``seed`` (the same sequence for
    the same seed); with ``canonical_first`` the space's canonical network comes first."""
    rng = random.Random(seed)
    drawn: set[str] = set()
    if canonical_first:
        drawn.add(to_string(space.canonical()))
        yield space.canonical()
    repeats = 0
    while True:
        spec = space.sample(rng)
        key = to_string(spec)
        if key in drawn:
            repeats += 1
            if repeats >= _MAX_REPEATS:
                raise PredictorError(f"space {space.name}: {_MAX_REPEATS} draws in a row found only "
                                     f"the {len(drawn)} networks drawn before; ask for fewer")
            continue
        repeats = 0
        drawn.add(key)
        yield spec


def collect_scores(space: SearchSpace, evaluator: Evaluator, count: int, path: str | Path, *,
                   seed: int = 0, canonical_first: bool = False,
                   on_score: Callable[[Score, int], None] | None = None) -> list[Score]:
    """Score ``count`` random networks of ``space`` with ``evaluator`` into the CSV ``path``.

    Networks already in ``path`` are not scored again (a killed collection resumes; a file
    with more rows than ``count`` gives its first ``count``). Each new score is appended before
    the next network is scored.

    Args:
        space: the space the networks come from.
        evaluator: what scores a network (its ``top1``); the supernet's, in the search.
        count: the scores wanted.
        path: the CSV (created with its folder).
        seed: the sampling seed.
        canonical_first: make the space's canonical network the first one.
        on_score: called with each new score and the number of scores so far.

    Returns the first ``count`` scores of the file, in file order.
    """
    if count < 1:
        raise PredictorError(f"the predictor needs at least 1 score, got count={count}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = read_scores(path)
    have = {score.spec for score in scores}
    stream = random_networks(space, seed, canonical_first=canonical_first)
    while len(scores) < count:
        spec = next(stream)
        key = to_string(spec)
        if key in have:
            continue
        started = time.perf_counter()
        top1 = float(evaluator.evaluate(spec).top1)
        if not math.isfinite(top1):
            raise PredictorError(f"the evaluator gave a non-finite top-1 ({top1}) for {key}")
        score = Score(key, top1, round(time.perf_counter() - started, 4))  # as the CSV keeps it
        append_score(path, score)
        scores.append(score)
        have.add(key)
        if on_score is not None:
            on_score(score, len(scores))
    return scores[:count]


__all__ = ["COLUMNS", "Score", "append_score", "collect_scores", "random_networks", "read_scores"]
