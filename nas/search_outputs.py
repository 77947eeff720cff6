"""What a search leaves in its run folder: trials.csv, pareto.csv, pareto.png, bneck YAMLs."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from nas.formats import from_string, save_spec
from nas.search import pareto_trials

TRIAL_COLUMNS = [
    "number", "state", "accuracy", "latency_ms", "madds", "params", "reward", "top5",
    "duration_s", "canonical", "spec", "fail_reason",
]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: outcome, costs, spec string, state, duration and the parameters."""
    rows = []
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
            "duration_s": duration,
            "canonical": bool(attrs.get("canonical", False)),
            "spec": attrs.get("spec"),
            "fail_reason": attrs.get("fail_reason"),
        }
        row.update({f"param_{k}": v for k, v in sorted(t.params.items())})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    return frame


def write_outputs(study: optuna.Study, run_dir: Path) -> dict[str, Path]:
    """Write every output of a search into ``run_dir``; returns the paths by name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study)
    paths = {"trials": run_dir / "trials.csv", "pareto": run_dir / "pareto.csv",
             "plot": run_dir / "pareto.png", "configs": run_dir / "pareto"}
    frame.to_csv(paths["trials"], index=False)
    front = pareto_trials(study)
    front_numbers = {t.number for t in front}
    pareto = frame[frame["number"].isin(front_numbers)].sort_values("latency_ms")
    pareto.to_csv(paths["pareto"], index=False)
    paths["configs"].mkdir(exist_ok=True)
    for trial in front:
        spec = from_string(trial.user_attrs["spec"])
        name = f"trial{trial.number:04d}"
        save_spec(spec.replace(name=f"{study.study_name}_{name}"), paths["configs"] / f"{name}.yaml")
    plot_front(frame, front_numbers, paths["plot"], title=study.study_name)
    return paths


def plot_front(frame: pd.DataFrame, front: set[int], path: Path, *, title: str) -> None:
    """All complete trials, the front, and the canonical seed, accuracy against latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    done = frame[frame["state"] == TrialState.COMPLETE.name] if not frame.empty else frame
    if not done.empty:
        ax.scatter(done["latency_ms"], 100 * done["accuracy"], s=14, color="0.6", label="trials")
        best = done[done["number"].isin(front)].sort_values("latency_ms")
        ax.plot(best["latency_ms"], 100 * best["accuracy"], "o-", color="tab:blue", label="Pareto front")
        seed = done[done["canonical"]]
        if not seed.empty:
            ax.scatter(seed["latency_ms"], 100 * seed["accuracy"], marker="*", s=220,
                       color="tab:red", zorder=5, label="canonical seed")
    ax.set_xlabel("lookup-table latency (ms)")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(study: optuna.Study) -> str:
    """The printed summary: counts by state and the front, fastest first."""
    frame = trials_frame(study)
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    lines = [f"study {study.study_name}: {len(frame)} trials " + json.dumps(counts)]
    front = pareto_trials(study)
    if not front:
        lines.append("no complete trial yet")
        return "\n".join(lines)
    shown = frame[frame["number"].isin({t.number for t in front})].sort_values("latency_ms")
    lines.append("Pareto front (fastest first):")
    lines.append(f"{'trial':>5}  {'top-1 %':>7}  {'latency ms':>10}  {'MAdds M':>8}  {'params M':>8}  canonical")
    for _, row in shown.iterrows():
        madds = f"{row['madds'] / 1e6:8.1f}" if pd.notna(row["madds"]) else f"{'-':>8}"
        params = f"{row['params'] / 1e6:8.2f}" if pd.notna(row["params"]) else f"{'-':>8}"
        lines.append(f"{row['number']:>5}  {100 * row['accuracy']:7.2f}  {row['latency_ms']:10.3f}  "
                     f"{madds}  {params}  {'yes' if row['canonical'] else ''}")
    seed = frame[frame["canonical"] & (frame["state"] == "COMPLETE")]
    if not seed.empty:
        s = seed.iloc[0]
        lines.append(f"canonical seed: trial {s['number']}, top-1 {100 * s['accuracy']:.2f}%, "
                     f"{s['latency_ms']:.3f} ms")
    return "\n".join(lines)


def front_specs(study: optuna.Study) -> list[tuple[FrozenTrial, object]]:
    """(trial, spec) for each member of the front."""
    return [(t, from_string(t.user_attrs["spec"])) for t in pareto_trials(study)]
