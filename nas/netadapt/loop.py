"""The NetAdapt loop: proposals, fine-tune, pick, repeat to the target; resumable per proposal."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nas.arch.codecs import save_spec, to_string, to_yaml
from nas.arch.spec import NetworkSpec
from nas.models.builder import MobileNetV3Net, build_model
from nas.models.prune import prune_model
from nas.netadapt.config import NetAdaptConfig, NetAdaptError
from nas.netadapt.finetune import FineTuner
from nas.netadapt.latency import Latency
from nas.netadapt.proposals import Proposal, make_proposals, preselect
from nas.netadapt.run_folder import (
    Checkpoint,
    RunFolder,
    history_row,
    plot_trajectory,
    write_history,
)
from nas.netadapt.selection import pick, pick_score
from nas.training.checkpoint import cpu_state, save_atomic, write_text_atomic

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the loop
@dataclass
class NetAdaptResult:
    """What :func:`netadapt` produced.

    Attributes:
        spec: the adapted network (deployment spec: the start's class count/resolution).
        model: its long-term fine-tuned weights (the data's class count).
        start_ms, latency_ms, target_ms: lookup-table latencies.
        start_top1, top1: validation top-1 of the start and of the final network.
        steps: NetAdapt steps taken.
        history: every row of ``history.csv``.
        paths: output files by name.
        stopped: why the loop ended (``"target"``, ``"no proposals"``, ``"max_steps"``).
        train_steps: optimiser steps the final weights went through after the start
            (short-term on the picked path plus long-term), and ``all_train_steps``
            including every proposal's fine-tune.
    """

    spec: NetworkSpec
    model: MobileNetV3Net
    start_ms: float
    latency_ms: float
    target_ms: float
    start_top1: float
    top1: float
    steps: int
    history: list[dict[str, Any]]
    paths: dict[str, Path] = field(default_factory=dict)
    stopped: str = "target"
    train_steps: int = 0
    all_train_steps: int = 0
    measured_keys: int = 0


def netadapt(spec: NetworkSpec, model: MobileNetV3Net, latency: Latency, cfg: NetAdaptConfig,
             tuner: FineTuner, run_dir: str | Path, *, resume: bool = True,
             progress: Callable[[str], None] | None = None) -> NetAdaptResult:
    """Adapt ``model`` (built from ``spec``) to the latency target; outputs go to ``run_dir``.

    Args:
        spec: the start network as deployed (its resolution and class count key the table).
        model: its trained weights, built with the data's class count.
        latency: milliseconds of a spec (:class:`TableLatency`).
        cfg: the NetAdapt settings.
        tuner: the fine-tuning and scoring.
        run_dir: where checkpoints and outputs go.
        resume: continue from ``run_dir``'s last finished step when there is one
            (otherwise a folder with checkpoints is an error).
        progress: called with a one-line message after each proposal and step.
    """
    report = progress or log.info
    spec = spec.resolved()
    folder = RunFolder(run_dir)
    settings = {"start": to_string(spec), "netadapt": cfg.to_dict(), "tuner": tuner.settings()}
    settings = json.loads(json.dumps(settings, default=str))

    checkpoint = folder.latest()
    # A resumed run keeps the start latency it began with (the table may have grown since).
    start_ms = checkpoint.history[0]["latency_ms"] if checkpoint is not None else latency(spec)
    target_ms = cfg.target_for(start_ms)
    delta_ms = cfg.delta_fraction * start_ms
    if checkpoint is not None and not resume:
        raise NetAdaptError(f"{folder.root} already holds a refinement (steps/); resume it "
                            "(resume=true) or choose another folder")
    if checkpoint is not None and checkpoint.settings != settings:
        diffs = sorted(k for k in set(settings) | set(checkpoint.settings)
                       if settings.get(k) != checkpoint.settings.get(k))
        raise NetAdaptError(f"{folder.root}: the checkpoint was written with other settings "
                            f"({', '.join(diffs)} differ); use the same settings or another folder")
    if checkpoint is None:
        t0 = time.perf_counter()
        model.to(tuner.device)
        start_sel = tuner.selection_top1(model, cfg.seed)
        start_val = tuner.final_top1(model) if tuner.selection == "holdout" else start_sel
        history = [history_row(0, "start", proposal="start", latency_ms=start_ms, top1=start_sel,
                        split="selection", spec=spec, picked=True, seconds=time.perf_counter() - t0)]
        if tuner.selection == "holdout":
            history.append(history_row(0, "start", proposal="start", latency_ms=start_ms, top1=start_val,
                                split="val", spec=spec))
        checkpoint = Checkpoint(step=0, spec=spec, state_dict=cpu_state(model), latency_ms=start_ms,
                        top1=start_sel, history=history, settings=settings)
        folder.save(checkpoint)
        report(f"start: {start_ms:.3f} ms, selection top-1 {start_sel:.4f}; target {target_ms:.3f} ms, "
               f"delta {delta_ms:.3f} ms")
    else:
        report(f"resuming after step {checkpoint.step}: {checkpoint.latency_ms:.3f} ms, top-1 {checkpoint.top1:.4f}")

    step, current, current_ms, current_top1 = checkpoint.step, checkpoint.spec, checkpoint.latency_ms, checkpoint.top1
    history = list(checkpoint.history)
    current_model = build_model(current, num_classes=tuner.num_classes)
    current_model.load_state_dict(checkpoint.state_dict)
    stopped = "target"
    loop_started, steps_this_run = time.perf_counter(), 0
    while current_ms > target_ms:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            stopped = "max_steps"
            break
        step += 1
        seed = cfg.seed + step
        all_proposals = make_proposals(current, latency, delta_ms, cfg, current_ms=current_ms)
        proposals = preselect(all_proposals, current_ms, cfg.max_proposals, cfg.preselect)
        if not proposals:
            stopped = "no proposals"
            report(f"step {step}: no proposal can cut {delta_ms:.3f} ms; stopping at {current_ms:.3f} ms")
            folder.clear_step(step)
            step -= 1
            break
        done = _matching_finished(folder, step, proposals)
        results: list[tuple[float, float]] = []
        rows: list[dict[str, Any]] = []
        for i, prop in enumerate(proposals):
            if i < len(done):
                row = done[i]
            else:
                t0 = time.perf_counter()
                candidate = prune_model(current_model, prop.spec)
                top1 = tuner.short(candidate, seed)
                row = history_row(step, "short_term", proposal=prop.name, kind=prop.kind, blocks=prop.where,
                           before=prop.before, after=prop.after, latency_ms=prop.latency_ms,
                           saved_ms=current_ms - prop.latency_ms, top1=top1, split="selection",
                           delta_top1=top1 - current_top1,
                           score=pick_score(top1, prop.latency_ms, current_top1=current_top1,
                                            current_ms=current_ms, rule=cfg.rule),
                           train_steps=tuner.short_term.steps or 0,
                           seconds=time.perf_counter() - t0, spec=prop.spec)
                folder.save_proposal(step, i, row, candidate)
                report(f"step {step} [{i + 1}/{len(proposals)}] {prop.name}: {prop.latency_ms:.3f} ms, "
                       f"top-1 {top1:.4f} ({row['seconds']:.0f} s)")
            rows.append(row)
            results.append((row["top1"], row["latency_ms"]))
        chosen = pick(results, current_top1=current_top1, current_ms=current_ms, rule=cfg.rule)
        rows[chosen] = {**rows[chosen], "picked": True}
        history.extend(rows)
        prop = proposals[chosen]
        current_model = build_model(prop.spec, num_classes=tuner.num_classes)
        current_model.load_state_dict(folder.proposal_weights(step, chosen))
        current, current_ms, current_top1 = prop.spec, prop.latency_ms, results[chosen][0]
        folder.save(Checkpoint(step=step, spec=current, state_dict=cpu_state(current_model),
                               latency_ms=current_ms, top1=current_top1, history=history,
                               settings=settings))
        write_history(history, folder.root / "history.csv")
        steps_this_run += 1
        # Each step cuts at least delta_ms: an upper bound on the steps still to come.
        left = max(0, math.ceil((current_ms - target_ms) / delta_ms))
        per_step = (time.perf_counter() - loop_started) / steps_this_run
        report(f"step {step}: picked {prop.name} -> {current_ms:.3f} ms (target {target_ms:.3f}), "
               f"top-1 {current_top1:.4f}; {len(all_proposals)} proposal(s), {len(proposals)} evaluated; "
               f"at most {left} step(s) left, ETA <= {left * per_step / 60:.0f} min")

    return _finish(folder, spec, current, current_model, history, tuner, cfg, step=step,
                   start_ms=start_ms, current_ms=current_ms, target_ms=target_ms, stopped=stopped,
                   latency=latency, report=report)


def _matching_finished(folder: RunFolder, step: int,
                       proposals: Sequence[Proposal]) -> list[dict[str, Any]]:
    """The finished proposals of an interrupted ``step``, if they are these proposals."""
    done = folder.finished_proposals(step)
    ok: list[dict[str, Any]] = []
    for row, prop in zip(done, proposals):
        weights = folder.step_dir(step) / f"proposal{len(ok):02d}.pth"
        if row.get("spec") != to_string(prop.spec) or not weights.is_file():
            break
        ok.append(row)
    if len(ok) != len(done):
        # Different proposals than before (e.g. a changed table): start the step afresh.
        folder.clear_step(step)
        return []
    return ok


def _finish(folder: RunFolder, start: NetworkSpec, spec: NetworkSpec, model: MobileNetV3Net,
            history: list[dict[str, Any]], tuner: FineTuner, cfg: NetAdaptConfig, *, step: int,
            start_ms: float, current_ms: float, target_ms: float, stopped: str, latency: Latency,
            report: Callable[[str], None]) -> NetAdaptResult:
    """Long-term fine-tune, final score, outputs."""
    t0 = time.perf_counter()
    history = [r for r in history if r["phase"] != "long_term"]
    before_val = tuner.final_top1(model)
    history.append(history_row(step, "adapted", proposal="after short-term steps", latency_ms=current_ms,
                        top1=before_val, split="val", spec=spec))
    if cfg.long_term_init == "scratch" and tuner.long_term is not None:
        # MobileNetV3 trains the adapted network from scratch (paper Sec. 4.2, NetAdapt).
        torch.manual_seed(tuner.long_term.seed)
        model = build_model(spec, num_classes=tuner.num_classes)
    model, long_steps = tuner.long(model, folder.root / "long_term")
    top1 = tuner.final_top1(model)
    history.append(history_row(step, "long_term", proposal=f"long-term ({cfg.long_term_init})",
                        latency_ms=current_ms, top1=top1, split="val", picked=True,
                        train_steps=long_steps, seconds=time.perf_counter() - t0, spec=spec))
    start_val = next((r["top1"] for r in history if r["phase"] == "start" and r["split"] == "val"),
                     history[0]["top1"])
    short = tuner.short_term.steps or 0
    paths = {
        "history": write_history(history, folder.root / "history.csv"),
        "plot": plot_trajectory(history, folder.root / "trajectory.png", target_ms=target_ms,
                                title=f"NetAdapt ({cfg.rule} rule): {start_ms:.3g} -> {current_ms:.3g} ms"),
        "spec": save_spec(spec.replace(name=(start.name or "network") + "_netadapt"),
                          folder.root / "netadapt.yaml"),
        "weights": folder.root / "netadapt.pth",
    }
    save_atomic(cpu_state(model), paths["weights"])
    evaluated = sum(1 for r in history if r["phase"] == "short_term")
    result = NetAdaptResult(
        spec=spec, model=model, start_ms=start_ms, latency_ms=current_ms, target_ms=target_ms,
        start_top1=start_val, top1=top1, steps=step, history=history, paths=paths, stopped=stopped,
        train_steps=step * short + long_steps, all_train_steps=evaluated * short + long_steps,
        measured_keys=getattr(latency, "measured", 0))
    summary = {k: v for k, v in dataclasses.asdict(result).items()
               if k not in ("spec", "model", "history", "paths")}
    summary.update(spec=to_string(spec), yaml=to_yaml(spec), settings=json.loads(json.dumps(
        {"netadapt": cfg.to_dict(), "tuner": tuner.settings()}, default=str)),
        proposals_evaluated=evaluated, num_classes=tuner.num_classes)
    paths["summary"] = folder.root / "summary.json"
    write_text_atomic(paths["summary"], json.dumps(summary, indent=1, default=str))
    report(f"done ({stopped}): {start_ms:.3f} -> {current_ms:.3f} ms in {step} step(s); "
           f"val top-1 {start_val:.4f} -> {top1:.4f}")
    return result
