"""What a search leaves in its run folder: trials.csv, pareto.csv, pareto.png, bneck YAMLs.

Written after every trial (:class:`TrialReporter`) and at the end, each file atomically and
in an order that keeps ``pareto.csv``'s rows backed by their YAMLs in ``pareto/``, so a killed
run leaves whole files and no dangling row (:func:`write_outputs`).
"""

from __future__ import annotations

import fcntl
import json
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from nas._io import write_atomic, write_text_atomic, writing
from nas.arch.codecs import from_string, to_yaml
from nas.search.objective import counted_trials, fail_reason, pareto_trials, retried_number
from nas.search.report import val_report, with_val_column

TRIAL_COLUMNS = [
    "number", "state", "accuracy", "latency_ms", "madds", "params", "reward", "top5",
    "predicted_accuracy", "duration_s", "canonical", "duplicate_of", "retry_of", "spec", "fail_reason",
]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: outcome, costs, spec string, state, duration and the parameters."""
    rows = []
    study_attrs = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        duration = t.duration.total_seconds() if t.duration is not None else None
        row = {
            "number": t.number,
            "state": t.state.name,
            "accuracy": attrs.get("accuracy"),
            "latency_ms": attrs.get("latency_ms"),
            "madds": attrs.get("madds"),
            "params": attrs.get("params"),
            "reward": attrs.get("reward"),
            "top5": attrs.get("top5"),
            # evaluator=predictor: the predictor's figure for a network the supernet re-scored
            "predicted_accuracy": attrs.get("predicted_top1"),
            "duration_s": duration,
            "canonical": bool(attrs.get("canonical", False)),
            "duplicate_of": attrs.get("duplicate_of"),
            "retry_of": attrs.get("retry_of", retried_number(t)),
            "spec": attrs.get("spec"),
            "fail_reason": fail_reason(t, study_attrs),
        }
        row.update({f"param_{k}": v for k, v in sorted(t.params.items())})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    return frame


@contextmanager
def _folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir``'s outputs (released when the process dies)."""
    path = run_dir / ".outputs.lock"
    with writing(path, "the run folder's lock file"):
        handle = open(path, "w")
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_outputs(study: optuna.Study, run_dir: Path) -> dict[str, Path]:
    """Write every output of a search into ``run_dir``; returns the paths by name.

    Workers on one machine share the folder, so the writes hold a lock; and they go in an
    order that keeps every row of ``pareto.csv`` backed by its YAML at every moment: the
    front's YAMLs first, then ``pareto.csv``, then the YAMLs no longer on the front are
    removed. A run killed in between leaves at worst such a stale YAML, removed by the next
    write (after every trial and at the end of a run, a resumed one too).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"trials": run_dir / "trials.csv", "pareto": run_dir / "pareto.csv",
             "plot": run_dir / "pareto.png", "configs": run_dir / "pareto"}
    with _folder_lock(run_dir):
        frame = trials_frame(study)
        write_text_atomic(paths["trials"], frame.to_csv(index=False), what="the trial table")
        front = pareto_trials(study)
        front_numbers = {t.number for t in front}
        paths["configs"].mkdir(exist_ok=True)
        wanted = {}
        for trial in front:
            name = f"trial{trial.number:04d}"
            wanted[f"{name}.yaml"] = from_string(trial.user_attrs["spec"]).replace(
                name=f"{study.study_name}_{name}")
        for file_name, spec in wanted.items():
            write_text_atomic(paths["configs"] / file_name, to_yaml(spec),
                              what="a Pareto network's bneck config")
        pareto = with_val_column(frame[frame["number"].isin(front_numbers)], study).sort_values("latency_ms")
        write_text_atomic(paths["pareto"], pareto.to_csv(index=False), what="the Pareto front")
        for path in paths["configs"].glob("trial*.yaml"):
            if path.name not in wanted:  # no longer on the front
                path.unlink(missing_ok=True)
        context = study.user_attrs.get("context", {})
        title = study.study_name + "".join(f" | {k} {v}" for k, v in context.items()
                                           if k != "budget_ms" and v is not None)
        plot_front(frame, front_numbers, paths["plot"], title=title,
                   budget_ms=context.get("budget_ms"), evaluator=context.get("evaluator", "proxy"))
    return paths


class TrialReporter:
    """After every trial: rewrite the outputs and print one progress line.

    Picklable, so worker processes run it too (their outputs replace each other atomically).
    """

    def __init__(self, run_dir: Path, budget: int) -> None:
        self.run_dir = Path(run_dir)
        self.budget = budget
        self.started = time.monotonic()
        # The ETA counts from the first finished trial: the first one also carries one-off
        # set-up (a supernet trained, batches decoded) that later trials do not repeat.
        self.first: tuple[float, int] | None = None

    def _eta(self, done: int) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
            return ""
        since, done_then = self.first
        if done <= done_then or done >= self.budget:
            return ""
        return f", ETA {(now - since) / (done - done_then) * (self.budget - done):.0f} s"

    def __call__(self, study: optuna.Study, last: FrozenTrial) -> None:
        """``last`` is the trial this worker just finished (not the study's latest: with
        several workers that may be another worker's)."""
        write_outputs(study, self.run_dir)
        attrs = last.user_attrs
        done = counted_trials(study)
        elapsed = time.monotonic() - self.started
        if last.state == TrialState.COMPLETE:
            what = (f"top-1 {100 * attrs.get('accuracy', float('nan')):.2f}%, "
                    f"{attrs.get('latency_ms', float('nan')):.3f} ms")
            if "duplicate_of" in attrs:
                what += f" (repeat of trial {attrs['duplicate_of']}: not counted)"
        else:
            what = f"{last.state.name}: {fail_reason(last, study.user_attrs) or ''}"[:160]
        print(f"trial {last.number} [{done}/{self.budget}] {what} | {attrs.get('spec', '')} | "
              f"{elapsed:.0f} s{self._eta(done)}", flush=True)


def plot_front(frame: pd.DataFrame, front: set[int], path: Path, *, title: str,
               budget_ms: float | None = None, evaluator: str = "proxy") -> None:
    """All complete trials, the front (labelled with trial numbers), the canonical seed and
    the latency budget, accuracy against latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    done = frame[frame["state"] == TrialState.COMPLETE.name] if not frame.empty else frame
    if not done.empty:
        ax.scatter(done["latency_ms"], 100 * done["accuracy"], s=14, color="0.6", label="trials")
        best = done[done["number"].isin(front)].sort_values("latency_ms")
        ax.plot(best["latency_ms"], 100 * best["accuracy"], "o-", color="tab:blue", label="Pareto front")
        for _, row in best.iterrows():
            ax.annotate(str(int(row["number"])), (row["latency_ms"], 100 * row["accuracy"]),
                        xytext=(3, 3), textcoords="offset points", fontsize=7, color="tab:blue")
        predicted = done[done["predicted_accuracy"].notna()] if "predicted_accuracy" in done else done[:0]
        if not predicted.empty:  # evaluator=predictor: what the predictor expected of them
            ax.scatter(predicted["latency_ms"], 100 * predicted["predicted_accuracy"].astype(float),
                       marker="x", s=18, color="tab:orange", label="predicted (re-scored)")
        seed = done[done["canonical"]]
        if not seed.empty:
            ax.scatter(seed["latency_ms"], 100 * seed["accuracy"], marker="*", s=220,
                       color="tab:red", zorder=5, label="canonical seed")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="tab:red", linestyle="--", linewidth=1,
                   label=f"latency budget {budget_ms:g} ms")
    ax.set_xlabel("lookup-table latency (ms)")
    # evaluator=predictor: every point is a supernet score (the predictor's are the crosses).
    ax.set_ylabel(f"{'supernet' if evaluator == 'predictor' else evaluator} top-1 (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"),
                     what="the plot of the Pareto front")
    finally:
        plt.close(fig)


def summary_table(study: optuna.Study) -> str:
    """The printed summary: counts by state and the front, fastest first."""
    frame = trials_frame(study)
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    lines = [f"study {study.study_name}: {len(frame)} trials " + json.dumps(counts)]
    front = pareto_trials(study)
    if not front:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if "latency_ms" in t.user_attrs]
        if not complete:
            lines.append("no complete trial yet")
        else:
            fastest = min(complete, key=lambda t: t.user_attrs["latency_ms"])
            over = max(fastest.constraints.values(), default=float("nan"))
            lines.append(f"no feasible trial: none of the {len(complete)} complete trials meets the "
                         f"latency budget; the fastest, trial {fastest.number} at "
                         f"{fastest.user_attrs['latency_ms']:.3f} ms, is {over:.3f} ms over it")
        return "\n".join(lines)
    shown = with_val_column(frame[frame["number"].isin({t.number for t in front})], study)
    shown = shown.sort_values("latency_ms")
    split = study.user_attrs.get("context", {}).get("selection", "val")
    lines.append(f"Pareto front (fastest first; top-1 %: on {split}, the selection split; "
                 "val %: on val, the report split):")
    lines.append(f"{'trial':>5}  {'top-1 %':>7}  {'val %':>6}  {'latency ms':>10}  {'MAdds M':>8}  "
                 f"{'params M':>8}  canonical")
    for _, row in shown.iterrows():
        val = f"{100 * row['val_accuracy']:6.2f}" if pd.notna(row["val_accuracy"]) else f"{'-':>6}"
        madds = f"{row['madds'] / 1e6:8.1f}" if pd.notna(row["madds"]) else f"{'-':>8}"
        params = f"{row['params'] / 1e6:8.2f}" if pd.notna(row["params"]) else f"{'-':>8}"
        lines.append(f"{row['number']:>5}  {100 * row['accuracy']:7.2f}  {val}  {row['latency_ms']:10.3f}  "
                     f"{madds}  {params}  {'yes' if row['canonical'] else ''}")
    note = val_report(study).get("note")
    if note:
        lines.append(f"val %: {note}")
    seed = frame[frame["canonical"] & (frame["state"] == "COMPLETE")]
    if not seed.empty:
        s = seed.iloc[0]
        lines.append(f"canonical seed: trial {s['number']}, top-1 {100 * s['accuracy']:.2f}%, "
                     f"{s['latency_ms']:.3f} ms")
    return "\n".join(lines)

