"""A refinement's run folder: per-step checkpoints, the history CSV and its plot."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nas._io import append_line, write_atomic
from nas.arch.codecs import from_yaml, save_spec, to_string
from nas.arch.spec import NetworkSpec
from nas.training.checkpoint import cpu_state, save_atomic, write_text_atomic


STATE_FILE = "state.json"
HISTORY_COLUMNS = [
    "step", "phase", "proposal", "kind", "blocks", "channels_before", "channels_after",
    "latency_ms", "saved_ms", "top1", "split", "delta_top1", "score", "picked",
    "train_steps", "seconds", "spec",
]

# ---------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """The state after a finished step: enough to continue exactly."""

    step: int
    spec: NetworkSpec
    state_dict: dict[str, torch.Tensor]
    latency_ms: float
    top1: float
    history: list[dict[str, Any]]
    settings: dict[str, Any]


class RunFolder:
    """The files of one refinement::

        steps/step0000/  spec.yaml, weights.pth, state.json (the start)
        steps/stepNNNN/  the same after step N; while a step runs, proposals.jsonl and
                         proposalKK.pth hold its finished proposals
        long_term/       nas.training.train's checkpoint of the long-term fine-tune
        history.csv, trajectory.png, netadapt.yaml, netadapt.pth, summary.json
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def step_dir(self, step: int) -> Path:
        return self.root / "steps" / f"step{step:04d}"

    def save(self, checkpoint: Checkpoint) -> None:
        d = self.step_dir(checkpoint.step)
        save_spec(checkpoint.spec, d / "spec.yaml")
        save_atomic(checkpoint.state_dict, d / "weights.pth")
        state = {"step": checkpoint.step, "latency_ms": checkpoint.latency_ms,
                 "top1": checkpoint.top1, "history": checkpoint.history,
                 "settings": checkpoint.settings}
        # state.json last: its presence marks the step as finished.
        write_text_atomic(d / STATE_FILE, json.dumps(state, indent=1, default=str))
        for extra in list(d.glob("proposal*")):  # the step's scratch files
            extra.unlink()
        # Resuming needs the latest weights only; keep the start's too, drop the rest.
        previous = self.step_dir(checkpoint.step - 1) / "weights.pth"
        if checkpoint.step >= 2 and previous.is_file():
            previous.unlink()

    def latest(self) -> Checkpoint | None:
        steps = sorted(self.root.glob(f"steps/step*/{STATE_FILE}"))
        if not steps:
            return None
        d = steps[-1].parent
        state = json.loads((d / STATE_FILE).read_text(encoding="utf-8"))
        spec = from_yaml((d / "spec.yaml").read_text(), str(d / "spec.yaml"))
        weights = torch.load(d / "weights.pth", map_location="cpu", weights_only=True)
        return Checkpoint(step=state["step"], spec=spec, state_dict=weights,
                          latency_ms=state["latency_ms"], top1=state["top1"],
                          history=state["history"], settings=state["settings"])

    # ------------------------------------------------------------------ a running step
    def finished_proposals(self, step: int) -> list[dict[str, Any]]:
        path = self.step_dir(step) / "proposals.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by the interruption
        return rows

    def save_proposal(self, step: int, index: int, row: dict[str, Any], model: nn.Module) -> None:
        d = self.step_dir(step)
        save_atomic(cpu_state(model), d / f"proposal{index:02d}.pth")
        append_line(d / "proposals.jsonl", json.dumps(row, default=str),
                    what="NetAdapt's proposal records")

    def proposal_weights(self, step: int, index: int) -> dict[str, torch.Tensor]:
        return torch.load(self.step_dir(step) / f"proposal{index:02d}.pth", map_location="cpu",
                          weights_only=True)

    def clear_step(self, step: int) -> None:
        d = self.step_dir(step)
        if d.is_dir() and not (d / STATE_FILE).is_file():
            shutil.rmtree(d)


# ---------------------------------------------------------------------------- history
def history_row(step: int, phase: str, *, proposal: str = "", kind: str = "", blocks: str = "",
         before: int | None = None, after: int | None = None, latency_ms: float,
         saved_ms: float = 0.0, top1: float, split: str, delta_top1: float | None = None,
         score: float | None = None, picked: bool = False, train_steps: int = 0,
         seconds: float = 0.0, spec: NetworkSpec) -> dict[str, Any]:
    return {"step": step, "phase": phase, "proposal": proposal, "kind": kind, "blocks": blocks,
            "channels_before": before, "channels_after": after, "latency_ms": latency_ms,
            "saved_ms": saved_ms, "top1": top1, "split": split, "delta_top1": delta_top1,
            "score": score, "picked": picked, "train_steps": train_steps,
            "seconds": round(seconds, 2), "spec": to_string(spec)}


def write_history(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """The history as CSV (one row per evaluated proposal, start and long-term rows)."""
    import pandas as pd

    frame = pd.DataFrame(list(history), columns=HISTORY_COLUMNS)
    write_text_atomic(path, frame.to_csv(index=False))
    return path


def plot_trajectory(history: Sequence[dict[str, Any]], path: Path, *, target_ms: float,
                    title: str = "NetAdapt") -> Path:
    """Accuracy against latency: every proposal, the picked trajectory, the final network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(history)
    proposals = [r for r in rows if r["phase"] == "short_term"]
    path_rows = [r for r in rows if (r["phase"] == "start" and r["split"] == "selection")
                 or (r["phase"] == "short_term" and r["picked"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if proposals:
        ax.scatter([r["latency_ms"] for r in proposals], [100 * r["top1"] for r in proposals],
                   s=12, color="0.65", label="proposals (short-term)")
    if path_rows:
        ax.plot([r["latency_ms"] for r in path_rows], [100 * r["top1"] for r in path_rows], "o-",
                color="tab:blue", ms=4, label="picked")
    for phase, marker, colour, label in (("start", "s", "tab:green", "start (val)"),
                                         ("long_term", "*", "tab:red", "final, long-term (val)")):
        pts = [r for r in rows if r["phase"] == phase and r["split"] == "val"]
        if pts:
            ax.scatter([r["latency_ms"] for r in pts], [100 * r["top1"] for r in pts], marker=marker,
                       s=160 if marker == "*" else 50, color=colour, zorder=5, label=label)
    ax.axvline(target_ms, ls="--", color="0.4", lw=1, label=f"target {target_ms:.3g} ms")
    ax.set_xlabel("lookup-table latency (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.invert_xaxis()  # time runs left to right as latency falls
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), what="NetAdapt's plot")
    finally:
        plt.close(fig)
    return path
