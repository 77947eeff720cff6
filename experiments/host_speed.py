"""Whose speed moves: the host's, or a compiled session's? (the case for anchored timing)

Two checks, one thread, nothing else should run:

* **The host.** A 256x256 matrix product in torch, its best call in each of ``--rounds``
  rounds of 200 calls (half a second apart). A quiet core gives the same best every round; a
  VM whose core is shared gives rounds at different levels.
* **The session.** ``--sessions`` compiled OpenVINO sessions of canonical MobileNetV3-Small
  (f32, one thread, as the backend compiles them), their calls interleaved one by one so that
  every session meets the same host levels, for ``--rounds`` rounds of 30 calls each. If a
  session had a speed of its own, the sessions' order would repeat from round to round
  (Kendall tau between rounds near 1); near 0 it does not, and the level is the host's.

Writes ``rounds.csv`` (every round's bests) and ``summary.yaml`` to ``--out``::

    python -m experiments.host_speed
"""

from __future__ import annotations

import itertools
import statistics
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from experiments import harness
from nas.arch.codecs import load_spec
from nas.models.builder import build_model

DEFAULT_OUT = harness.RESULTS / "host_speed"


def matmul_bests(rounds: int) -> list[float]:
    """The best of 200 calls of a 256x256 matmul in each round, in milliseconds."""
    a = torch.randn(256, 256)
    bests = []
    for _ in range(rounds):
        calls = []
        for _ in range(200):
            started = time.perf_counter()
            a @ a
            calls.append(time.perf_counter() - started)
        bests.append(min(calls) * 1e3)
        time.sleep(0.5)
    return bests


def openvino_session_bests(sessions: int, rounds: int) -> np.ndarray:
    """``[round, session]`` best call (ms) of interleaved sessions of canonical Small."""
    from nas.cost.backends import get_backend
    from nas.cost.backends.base import BackendConfig

    backend = get_backend("openvino")
    ov = backend.openvino()
    example = torch.zeros(1, 3, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = ov.convert_model(build_model(load_spec("small")).eval(), example_input=example,
                                 input=[tuple(example.shape)])
    config = backend.compile_config(BackendConfig())
    requests = [backend.core().compile_model(model, "CPU", config).create_infer_request()
                for _ in range(sessions)]
    feed = {0: example.numpy()}

    def call(request: Any) -> float:
        started = time.perf_counter()
        request.infer(feed, share_inputs=True, share_outputs=True)
        return time.perf_counter() - started

    for request in requests:  # warm-up
        for _ in range(5):
            call(request)
    bests = np.zeros((rounds, sessions))
    for r in range(rounds):
        calls: list[list[float]] = [[] for _ in requests]
        for _ in range(30):
            for i, request in enumerate(requests):
                calls[i].append(call(request))
        bests[r] = [min(c) * 1e3 for c in calls]
    return bests


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = harness.study_parser(__doc__)
    harness.add_common(parser, out=DEFAULT_OUT, threads=True)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--sessions", type=int, default=8)
    args = parser.parse_args(argv)
    harness.start(args)
    load_start = harness.load_1min()
    matmul = matmul_bests(args.rounds)
    sessions = openvino_session_bests(args.sessions, args.rounds)
    rows = [{"check": "matmul", "round": r, "session": None, "best_ms": v} for r, v in enumerate(matmul)]
    rows += [{"check": "openvino_small", "round": r, "session": s, "best_ms": sessions[r, s]}
             for r in range(args.rounds) for s in range(args.sessions)]
    pd.DataFrame(rows).to_csv(args.out / "rounds.csv", index=False)
    taus = [kendalltau(sessions[i], sessions[j]).statistic
            for i, j in itertools.combinations(range(args.rounds), 2)]
    session_medians = np.median(sessions, axis=0)
    summary = {
        "matmul_round_best_ms": {"min": round(min(matmul), 4), "max": round(max(matmul), 4),
                                 "max_over_min": round(max(matmul) / min(matmul), 3)},
        "openvino_sessions": {"sessions": args.sessions, "rounds": args.rounds,
                              "round_best_max_over_min_median": round(float(statistics.median(
                                  row.max() / row.min() for row in sessions)), 3),
                              "session_order_tau_between_rounds_mean": round(float(np.mean(taus)), 3),
                              "session_median_max_over_min": round(float(session_medians.max()
                                                                         / session_medians.min()), 3)},
        "load_average_1min": [load_start, harness.load_1min()],
        **harness.host_facts(),
    }
    print(harness.write_yaml(args.out / "summary.yaml", summary))
    return summary


if __name__ == "__main__":
    main()
