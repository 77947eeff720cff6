"""NetAdapt benchmark: refine proxy-trained MobileNetV3-Small to 75% of its table latency and
compare with uniform width scaling to the same latency, under the same fine-tuning budget.

Stages (each resumable; rerun the same command after an interruption):

1. latency table: the shipped ``latency_tables/cpu-torch-1t-b1-224`` if it exists, else a
   table built here with :func:`nas.cost.lut.build_table` for canonical Small's keys
   (torch eager, CPU, 1 thread, batch 1, 224x224, in-context method); every key NetAdapt
   or the baseline needs later is measured on demand by the table and saved into it;
2. start: canonical Small proxy-trained from scratch on the CIFAR-10 subset (the training
   split minus a 10% class-stratified holdout that NetAdapt scores proposals on);
3. NetAdapt (:func:`nas.netadapt.loop.netadapt`) to ``--fraction`` of the start's latency:
   short-term fine-tunes of ``--short-steps`` steps, at most ``--proposals`` proposals per
   step (best latency saving per fraction of channels removed), then ``--long-steps``;
4. uniform baseline: the multiplier on the stem and block widths (last conv and head kept,
   as NetAdapt keeps them) whose table latency is at most NetAdapt's result, found by
   bisection; L2-norm channel selection from the same start weights, then fine-tuned for
   as many steps as the NetAdapt result went through (its short-term steps on the picked
   path plus the long-term steps);
5. end-to-end latency of start, NetAdapt and uniform networks measured together
   (interleaved passes) as a check on the table's sums.

Light outputs go to ``--out`` (default experiments/results/netadapt): benchmark.json,
benchmark.md, history.csv, trajectory.png, comparison.png, the two final bneck YAMLs and
the latency table. Checkpoints and weights go to ``--work`` (default
outputs/netadapt_benchmark, ignored by git).

    python -m experiments.netadapt_benchmark                  # the recorded run
    nohup python -m experiments.netadapt_benchmark > outputs/netadapt_benchmark.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from experiments import harness
from nas.arch.codecs import load_spec, save_spec, to_string, to_yaml
from nas.cost.harness import HarnessConfig, harness_context
from nas.cost.lut import LatencyTable, build_table
from nas.cost.timing import measure_in_context
from nas.models.bn import recalibrate_bn
from nas.models.builder import build_model
from nas.models.prune import prune_model
from nas.netadapt.config import NetAdaptConfig
from nas.netadapt.finetune import FineTuner
from nas.netadapt.latency import TableLatency
from nas.netadapt.loop import netadapt
from nas.netadapt.selection import width_for_latency
from nas.training.data_config import DataConfig
from nas.training.train import train
from nas.training.train_config import TrainConfig

SHIPPED_TABLE = harness.REPO / "latency_tables" / "cpu-torch-1t-b1-224"
DEFAULT_ROOT = harness.DATASETS / "cifar10-subset"
DEFAULT_OUT = harness.RESULTS / "netadapt"
DEFAULT_WORK = harness.OUTPUTS / "netadapt_benchmark"


def add_netadapt_arguments(p: argparse.ArgumentParser, *, short_steps: int) -> None:
    """The NetAdapt settings both NetAdapt benchmarks take (threads, target, step, T, proposals)."""
    harness.add_common(p, threads=True)
    p.add_argument("--fraction", type=float, default=0.75, help="target / start table latency")
    p.add_argument("--delta", type=float, default=0.01, help="delta_fraction (paper: 0.01)")
    p.add_argument("--short-steps", type=int, default=short_steps, help="NetAdapt's T")
    p.add_argument("--short-lr", type=float, default=0.01)
    p.add_argument("--proposals", type=int, default=3, help="max proposals per NetAdapt step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.study_parser(__doc__)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the CIFAR-10 subset")
    harness.add_common(p, out=DEFAULT_OUT, work=DEFAULT_WORK)
    p.add_argument("--resolution", type=int, default=32, help="proxy training resolution")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=0.1)
    add_netadapt_arguments(p, short_steps=20)
    p.add_argument("--long-steps", type=int, default=200)
    p.add_argument("--long-lr", type=float, default=0.02)
    p.add_argument("--rule", default="paper", choices=["paper", "netadapt"])
    p.add_argument("--bn-batches", type=int, default=10)
    p.add_argument("--latency-passes", type=int, default=7, help="passes of the final re-measurement")
    p.add_argument("--measure", default="anchored", choices=["anchored", "table"],
                   help="how missing keys are measured (nas.netadapt.latency.TableLatency)")
    p.add_argument("--measure-passes", type=int, default=3, help="passes per on-demand measurement")
    harness.add_common(p, seed=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- bookkeeping
def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


# ---------------------------------------------------------------------------- stages
def latency_table(out: Path) -> tuple[LatencyTable, Path, str]:
    """The shipped table, or one built here for canonical Small (copied into ``out``)."""
    table_dir = out / "latency_table"
    if table_dir.is_dir():
        return LatencyTable.load(table_dir), table_dir, "resumed"
    if SHIPPED_TABLE.is_dir():
        shutil.copytree(SHIPPED_TABLE, table_dir)  # measured keys are added to the copy
        return LatencyTable.load(table_dir), table_dir, f"shipped ({SHIPPED_TABLE.name})"
    table = build_table([load_spec("small")], table_dir, HarnessConfig(), progress=False,
                        note="netadapt benchmark: canonical Small, extended on demand")
    return table, table_dir, "built here for canonical Small, extended on demand"


def trained_once(model: torch.nn.Module, stem: Path,
                 fit: Callable[[torch.nn.Module], tuple[torch.nn.Module, dict[str, Any]]]
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` trained by ``fit`` (which returns the trained module and a record), kept as
    ``stem``.pth and ``stem``.json: a rerun loads them instead of training again."""
    weights, record = stem.with_suffix(".pth"), stem.with_suffix(".json")
    if weights.is_file() and record.is_file():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model, json.loads(record.read_text())
    model, facts = fit(model)
    torch.save(model.state_dict(), weights)
    record.write_text(json.dumps(facts))
    return model, facts


def pretrain(spec, tuner: FineTuner, args, work: Path) -> torch.nn.Module:
    cfg = TrainConfig(epochs=args.pretrain_epochs, lr=args.pretrain_lr, warmup_epochs=0.5,
                      seed=args.seed, progress=False, bn_recalibration_batches=args.bn_batches,
                      checkpoint_dir=str(work / "pretrain"))

    def fit(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        result = train(model, tuner.select_cfg, cfg, resume=True)
        return result.model, {"top1": result.top1, "seconds": result.seconds}

    return trained_once(build_model(spec, num_classes=tuner.num_classes), work / "start", fit)[0]


def uniform_baseline(spec, start: torch.nn.Module, latency, target_ms: float, steps: int,
                     tuner: FineTuner, args, work: Path) -> dict[str, Any]:
    mult, scaled, ms = width_for_latency(spec, latency, target_ms)
    model = prune_model(start, scaled)
    probe = prune_model(start, scaled)  # what channel selection alone keeps (BN re-estimated)
    recalibrate_bn(probe, tuner.select_loaders(args.seed).train, args.bn_batches)
    before = tuner.final_top1(probe)
    cfg = TrainConfig(steps=steps, lr=args.long_lr, seed=args.seed, progress=False,
                      bn_recalibration_batches=args.bn_batches, checkpoint_dir=str(work / "uniform"))
    model = train(model, tuner.select_cfg, cfg, resume=True).model
    torch.save(model.state_dict(), work / "uniform.pth")
    return {"multiplier": mult, "spec": scaled, "latency_ms": ms, "top1_before_finetune": before,
            "top1": tuner.final_top1(model), "train_steps": steps}


def measured_now(specs: dict[str, Any], passes: int) -> dict[str, dict[str, float]]:
    """Each network timed afresh, in turns (pass by pass), with the table's harness and
    in-context method: the sum of its op medians (what a table sums) and the end-to-end
    median of the same forward passes (which, on a shared machine, also holds every
    preemption that hits a forward pass)."""
    cfg = HarnessConfig()
    sums: dict[str, list[float]] = {name: [] for name in specs}
    e2e: dict[str, list[float]] = {name: [] for name in specs}
    with harness_context(cfg):
        for _ in range(passes):
            for name, spec in specs.items():
                whole, ops = measure_in_context(spec, cfg)
                sums[name].append(sum(t.median_ms for _, t in ops))
                e2e[name].append(whole.median_ms)
    return {name: {"sum_of_ops_ms": statistics.median(sums[name]),
                   "end_to_end_ms": statistics.median(e2e[name])} for name in specs}


# ---------------------------------------------------------------------------- report
def comparison_plot(history: list[dict[str, Any]], report: dict[str, Any], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    picked = [r for r in history if r["phase"] == "short_term" and r["picked"]]
    start = report["start"]
    ax.plot([start["latency_ms"], *[r["latency_ms"] for r in picked]],
            [100 * report["start"]["holdout_top1"], *[100 * r["top1"] for r in picked]],
            "o-", ms=3, color="tab:blue", alpha=0.6, label="NetAdapt path (holdout, short-term)")
    ax.scatter([start["latency_ms"]], [100 * start["top1"]], marker="s", s=60, color="tab:green",
               zorder=5, label="start: Small, proxy-trained (val)")
    na, un = report["netadapt"], report["uniform"]
    ax.errorbar([na["latency_ms"]], [100 * na["top1"]], yerr=[100 * na["top1_se"]], fmt="*", ms=14,
                color="tab:red", zorder=6, label="NetAdapt + long-term (val)")
    ax.errorbar([un["latency_ms"]], [100 * un["top1"]], yerr=[100 * un["top1_se"]], fmt="D", ms=8,
                color="tab:purple", zorder=6, label=f"uniform x{un['multiplier']:.3f} (val)")
    ax.axvline(report["target_ms"], ls="--", color="0.4", lw=1, label="target")
    ax.invert_xaxis()
    ax.set_xlabel("lookup-table latency (ms, CPU 1 thread, 224x224)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("MobileNetV3-Small at 75% latency: NetAdapt vs uniform width")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    s, na, un = report["start"], report["netadapt"], report["uniform"]
    now = report.get("measured_now", {})

    def e(name: str) -> str:
        if name not in now:
            return "- | -"
        return f"{now[name]['sum_of_ops_ms']:.3f} | {now[name]['end_to_end_ms']:.3f}"

    diff = na["top1"] - un["top1"]
    se = math.sqrt(na["top1_se"] ** 2 + un["top1_se"] ** 2)
    lines = [
        "# NetAdapt vs uniform width scaling (MobileNetV3-Small, CIFAR-10 subset)",
        "",
        f"Target: {report['fraction']:.0%} of the start's table latency "
        f"({report['start']['latency_ms']:.3f} -> {report['target_ms']:.3f} ms). "
        f"Validation: {report['val_images']} images (the subset's val split, unseen by every "
        "fine-tune and by the proposal selection).",
        "",
        "| network | table ms | re-measured: sum of ops ms | re-measured: end-to-end ms | val top-1 "
        "| fine-tune steps after start |",
        "|---|---|---|---|---|---|",
        f"| start (Small, proxy-trained) | {s['latency_ms']:.3f} | {e('start')} | {100 * s['top1']:.2f}% | - |",
        f"| NetAdapt ({na['steps']} steps, {na['rule']} rule) | {na['latency_ms']:.3f} | {e('netadapt')} | "
        f"{100 * na['top1']:.2f}% +- {100 * na['top1_se']:.2f} | {na['train_steps']} |",
        f"| uniform width x{un['multiplier']:.3f} | {un['latency_ms']:.3f} | {e('uniform')} | "
        f"{100 * un['top1']:.2f}% +- {100 * un['top1_se']:.2f} | {un['train_steps']} |",
        "",
        f"NetAdapt - uniform: {100 * diff:+.2f} points (+- {100 * se:.2f}, one binomial standard "
        f"error of the difference; {abs(diff) / se if se else 0:.1f} SE).",
        "",
        f"NetAdapt before its long-term fine-tune: {100 * na['top1_adapted']:.2f}% val; uniform "
        f"right after channel selection (BN re-estimated, no fine-tune): {100 * un['top1_before_finetune']:.2f}%.",
        f"NetAdapt evaluated {na['proposals_evaluated']} proposals "
        f"({na['all_train_steps']} fine-tune steps in all, of which {na['train_steps']} "
        "shaped the final weights); the table measured "
        f"{na['measured_keys']} new key(s) on demand.",
        "",
        f"Settings: {json.dumps(report['settings'])}",
        "",
        "Wall time per stage (s) and load average (1/5/15 min, 2 cores shared with other "
        "jobs) at its start and end:",
        "",
    ]
    for name, rec in report["stages"].items():
        lines.append(f"- {name}: {rec['seconds']:.0f} s, load {rec['loadavg_start']} -> {rec['loadavg_end']}")
    lines += ["", f"NetAdapt final:\n\n```yaml\n{report['netadapt']['yaml']}```",
              f"\nUniform:\n\n```yaml\n{report['uniform']['yaml']}```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    stages = harness.Stages.for_run(args)
    spec = load_spec("small")

    table, table_dir, table_source = stages.run("latency table", lambda: latency_table(args.out))
    # Anchored on-demand measurement: see nas.netadapt.latency.TableLatency (drift on shared cores).
    latency = TableLatency(table, measure_missing=True, save_to=table_dir, mode=args.measure,
                           harness=table.harness_config().replace(passes=args.measure_passes))
    data = DataConfig(name="imagefolder", root=str(args.root), resolution=args.resolution,
                      batch_size=args.batch_size, num_workers=0, seed=0)
    short = TrainConfig(steps=args.short_steps, lr=args.short_lr, seed=args.seed, progress=False,
                        bn_recalibration_batches=args.bn_batches)
    long = TrainConfig(steps=args.long_steps, lr=args.long_lr, seed=args.seed, progress=False,
                       bn_recalibration_batches=args.bn_batches)
    tuner = FineTuner(data, short, long, selection="holdout")
    start = stages.run("pretrain start", lambda: pretrain(spec, tuner, args, args.work))

    cfg = NetAdaptConfig(target_fraction=args.fraction, delta_fraction=args.delta,
                         max_proposals=args.proposals, rule=args.rule, seed=args.seed)
    start_copy = build_model(spec, num_classes=tuner.num_classes)
    start_copy.load_state_dict(start.state_dict())
    result = stages.run("netadapt", lambda: netadapt(
        spec, start_copy, latency, cfg, tuner, args.work / "run",
        progress=lambda m: print(m, flush=True)))
    uniform = stages.run("uniform baseline", lambda: uniform_baseline(
        spec, start, latency, result.latency_ms, result.train_steps, tuner, args, args.work))
    e2e = stages.run("latency measured afresh", lambda: measured_now(
        {"start": spec, "netadapt": result.spec, "uniform": uniform["spec"]}, args.latency_passes))

    n_val = len(tuner.final_loaders().val.dataset)
    history = result.history
    holdout_start = next(r["top1"] for r in history if r["phase"] == "start" and r["split"] == "selection")
    adapted = next(r["top1"] for r in history if r["phase"] == "adapted")
    report = {
        "fraction": args.fraction,
        "target_ms": result.target_ms,
        "val_images": n_val,
        "latency_table": {"source": table_source, "keys": len(table), "dir": harness.in_checkout(table_dir),
                          "provenance": {k: table.provenance.get(k) for k in
                                         ("runtime", "runtime_version", "device", "threads", "batch",
                                          "resolution", "method")}},
        "start": {"latency_ms": result.start_ms, "top1": result.start_top1, "holdout_top1": holdout_start,
                  "top1_se": binomial_se(result.start_top1, n_val), "spec": to_string(spec)},
        "netadapt": {"latency_ms": result.latency_ms, "top1": result.top1,
                     "top1_se": binomial_se(result.top1, n_val), "top1_adapted": adapted,
                     "steps": result.steps, "rule": args.rule, "stopped": result.stopped,
                     "train_steps": result.train_steps, "all_train_steps": result.all_train_steps,
                     "proposals_evaluated": sum(1 for r in history if r["phase"] == "short_term"),
                     "measured_keys": result.measured_keys, "spec": to_string(result.spec),
                     "yaml": to_yaml(result.spec)},
        "uniform": {**{k: v for k, v in uniform.items() if k != "spec"},
                    "top1_se": binomial_se(uniform["top1"], n_val), "spec": to_string(uniform["spec"]),
                    "yaml": to_yaml(uniform["spec"])},
        "measured_now": e2e,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("out", "work", "root")},
        "stages": stages.data,
        "host": harness.machine(),
    }
    for name in ("history.csv", "trajectory.png"):
        shutil.copy(result.paths["history"].parent / name, args.out / name)
    save_spec(result.spec.replace(name="mobilenet_v3_small_netadapt"), args.out / "netadapt_small.yaml")
    save_spec(uniform["spec"].replace(name=f"mobilenet_v3_small_uniform_x{uniform['multiplier']:.3f}"),
              args.out / "uniform_small.yaml")
    comparison_plot(history, report, args.out / "comparison.png")
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "benchmark.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
