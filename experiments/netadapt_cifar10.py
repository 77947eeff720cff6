"""NetAdapt versus uniform width scaling on the whole CIFAR-10, from a reference-trained start.

The question (MobileNetV3, Sec. 4.2: NetAdapt as the second search step after the
platform-aware block search): at the same lookup-table latency, does NetAdapt's channel
shrinking keep more accuracy than one uniform width multiplier? The subset benchmark
(``netadapt_benchmark.py``) tied within a 4.5-point resolution; here both arms are judged
on the 5,000-image val split with seeds.

Stages (each cached under ``--work``; rerun the same command after an interruption):

1. latency table: this host's table for the Small space (``latency.table=auto``'s choice,
   :func:`nas.cost.host_table.host_table`), copied into ``--out`` so that the keys NetAdapt
   and the baseline need later are measured on demand into the copy (anchored to its keys);
2. start: canonical Small trained from scratch with the ``reference`` protocol (seed 0);
3. per seed k: NetAdapt (:func:`nas.netadapt.loop.netadapt`) to ``--fraction`` of the start's
   table latency, proposals fine-tuned ``--short-steps`` steps and scored on a 10%
   class-stratified holdout of train (val stays unseen); uniform baseline: the largest
   multiplier of the stem and block widths at or under NetAdapt's latency (bisection),
   the start's largest-L2-norm channels, fine-tuned for as many steps as NetAdapt's picked
   path went through (same short-term settings, seed k);
4. final training, the same for both arms: ``--final-epochs`` on the whole train split with
   the reference protocol's optimiser and data, seed k, scored on val;
5. ``uniform_e2e``: the table under- or over-predicts single networks by several percent, so
   a second uniform arm is matched on *measured* latency: every distinct multiplier from x0.40
   to x0.90 timed end to end in the same interleaved rounds as NetAdapt's network, the largest
   not slower than it, then the same catch-up and final training;
6. end-to-end latency of every network measured afresh together (once per set of networks).

Outputs in ``--out`` (default experiments/results/netadapt_cifar10): runs.csv (one row per
arm and seed), summary.yaml, summary.md, comparison.png, the final bneck YAMLs, each
seed's NetAdapt history.csv. Checkpoints and weights go to ``--work``.

    python -m experiments.netadapt_cifar10 --seeds 0 1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experiments import harness
from nas.seed_stats import CONFIDENCE, difference_interval, verdict
from experiments.netadapt_benchmark import add_netadapt_arguments, measured_now, trained_once
from nas.arch.codecs import from_string, load_spec, save_spec, to_string
from nas.arch.space import load_space
from nas.cost.host_table import host_table
from nas.cost.lut import LatencyTable
from nas.models.builder import build_model
from nas.models.prune import prune_model
from nas.netadapt.config import NetAdaptConfig
from nas.netadapt.finetune import FineTuner
from nas.netadapt.latency import TableLatency
from nas.netadapt.loop import netadapt
from nas.netadapt.selection import scale_width, width_for_latency
from nas.training.protocols import load_protocol
from nas.training.train import train

DEFAULT_OUT = harness.RESULTS / "netadapt_cifar10"
DEFAULT_WORK = harness.OUTPUTS / "netadapt_cifar10"
RUN_COLUMNS = ["arm", "seed", "table_ms", "multiplier", "netadapt_steps", "path_steps", "final_epochs",
               "top1_before_final", "top1", "seconds", "loadavg", "spec"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.study_parser(__doc__)
    p.add_argument("--protocol", default="reference", help="start training and final-training data/optimiser")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    harness.add_common(p, out=DEFAULT_OUT, work=DEFAULT_WORK)
    add_netadapt_arguments(p, short_steps=40)
    p.add_argument("--final-epochs", type=int, default=5)
    p.add_argument("--final-lr", type=float, default=0.02)
    p.add_argument("--latency-passes", type=int, default=7)
    p.add_argument("--table", type=Path, default=None,
                   help="a latency table folder to start from (default: this host's, as latency.table=auto)")
    return p.parse_args(argv)


def host_latency(out: Path, given: Path | None) -> tuple[TableLatency, LatencyTable, str]:
    """This host's Small-space table (or ``given``), copied into ``out`` once (later keys land
    in the copy)."""
    table_dir = out / "latency_table"
    if not table_dir.is_dir():
        if given is not None:
            source, reason = given, "given with --table"
        else:
            choice = host_table(load_space("mobilenetv3_small"), runtime="torch-cpu", resolution=224)
            source, reason = choice.path, choice.reason
        shutil.copytree(source, table_dir, ignore=shutil.ignore_patterns("*.lock"))
        (out / "latency_table_source.txt").write_text(f"{source}\n{reason}\n")
    table = LatencyTable.load(table_dir)
    latency = TableLatency(table, measure_missing=True, save_to=table_dir, mode="anchored",
                           harness=table.harness_config().replace(passes=3))
    return latency, table, (out / "latency_table_source.txt").read_text().strip()


def trained_start(spec, protocol, work: Path) -> tuple[torch.nn.Module, float]:
    """Canonical Small, reference-trained from scratch (seed 0), and its val top-1."""
    cfg = dataclasses.replace(protocol.train, seed=0, checkpoint_dir=str(work / "start"))

    def fit(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        result = train(model, protocol.data, cfg, resume=True)
        return result.model, {"top1": result.top1, "seconds": result.seconds}

    model, facts = trained_once(build_model(spec, num_classes=protocol.data.num_classes), work / "start", fit)
    return model, facts["top1"]


def check_same_start(runs_path: Path, start_weights: Path) -> None:
    """Every seed starts from one trained network. Runs recorded in ``runs_path`` came from the
    start kept in ``start_weights``; without it the start would be trained again, and a second
    training differs (it took another NetAdapt path on a rerun): new seeds would not share the
    recorded seeds' start, and a recorded seed's files would be rewritten from another one."""
    if runs_path.is_file() and len(pd.read_csv(runs_path)) and not start_weights.is_file():
        seeds = sorted(int(s) for s in set(pd.read_csv(runs_path)["seed"]))
        raise SystemExit(f"netadapt_cifar10: {runs_path} holds runs of seeds {seeds} trained from a start "
                         f"network this --work no longer holds ({start_weights}); bring that work folder "
                         "back, or write a fresh set of seeds to another --out and --work")


def copy_of(model: torch.nn.Module, spec, num_classes: int) -> torch.nn.Module:
    twin = build_model(spec, num_classes=num_classes)
    twin.load_state_dict(model.state_dict())
    return twin


def final_training(model, protocol, args, seed: int, where: Path) -> tuple[float, float]:
    """The same last training for both arms: ``--final-epochs`` on the whole train split."""
    cfg = dataclasses.replace(protocol.train, epochs=args.final_epochs, lr=args.final_lr,
                              warmup_epochs=0.2, eval_every=0, seed=seed, checkpoint_dir=str(where))
    result = train(model, protocol.data, cfg, resume=True)
    return result.top1, result.seconds  # resumed runs add up their parts


def append_run(path: Path, row: dict[str, Any]) -> None:
    """One finished arm and seed, with the load average at its end."""
    row = {**row, "loadavg": harness.load_average()}
    frame = pd.DataFrame([row], columns=RUN_COLUMNS)
    frame.to_csv(path, mode="a", header=not path.is_file(), index=False)


def caught_up_uniform(start, scaled, steps: int, tuner: FineTuner, seed: int, work: Path,
                      arm: str = "uniform") -> tuple[torch.nn.Module, float]:
    """The start's largest-L2-norm channels of ``scaled``, fine-tuned for as many steps as
    NetAdapt's picked path went through, with the same short-term settings (cached)."""
    cfg = dataclasses.replace(tuner.short_term, steps=steps, seed=seed)

    def fit(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        top1 = train(model, tuner.select_cfg, cfg, loaders=tuner.select_loaders(seed)).top1
        return model, {"top1": top1, "steps": steps}

    model, facts = trained_once(prune_model(start, scaled), work / f"{arm}-seed{seed}", fit)
    return model, facts["top1"]


def has_run(runs: pd.DataFrame, arm: str, seed: int) -> bool:
    return bool(len(runs)) and bool(((runs["arm"] == arm) & (runs["seed"] == seed)).any())


def run_seed(seed: int, spec, start, latency, protocol, tuner, args,
             runs: pd.DataFrame, runs_path: Path) -> dict[str, Any]:
    """NetAdapt and the uniform baseline from the same start, then the same final training."""
    classes = protocol.data.num_classes
    cfg = NetAdaptConfig(target_fraction=args.fraction, delta_fraction=args.delta,
                         max_proposals=args.proposals, rule="paper", seed=seed)
    result = netadapt(spec, copy_of(start, spec, classes), latency, cfg, tuner,
                      args.work / f"netadapt-seed{seed}", progress=lambda m: print(m, flush=True))
    shutil.copy(result.paths["history"], args.out / f"history-seed{seed}.csv")
    save_spec(result.spec.replace(name=f"mobilenet_v3_small_netadapt_seed{seed}"),
              args.out / f"netadapt_small_seed{seed}.yaml")
    path_steps = result.train_steps
    if not has_run(runs, "netadapt", seed):
        top1, seconds = final_training(result.model, protocol, args, seed, args.work / f"final-netadapt-seed{seed}")
        append_run(runs_path, {"arm": "netadapt", "seed": seed, "table_ms": result.latency_ms,
                               "multiplier": None, "netadapt_steps": result.steps, "path_steps": path_steps,
                               "final_epochs": args.final_epochs, "top1_before_final": result.top1,
                               "top1": top1, "seconds": round(seconds, 1), "spec": to_string(result.spec)})
    multiplier, scaled, ms = width_for_latency(spec, latency, result.latency_ms)
    save_spec(scaled.replace(name=f"mobilenet_v3_small_uniform_x{multiplier:.3f}"), args.out / f"uniform_small_seed{seed}.yaml")
    if not has_run(runs, "uniform", seed):
        model, before = caught_up_uniform(start, scaled, path_steps, tuner, seed, args.work)
        top1, seconds = final_training(model, protocol, args, seed, args.work / f"final-uniform-seed{seed}")
        append_run(runs_path, {"arm": "uniform", "seed": seed, "table_ms": ms, "multiplier": multiplier,
                               "netadapt_steps": None, "path_steps": path_steps, "final_epochs": args.final_epochs,
                               "top1_before_final": before, "top1": top1, "seconds": round(seconds, 1),
                               "spec": to_string(scaled)})
    return {f"netadapt_seed{seed}": result.spec, f"uniform_seed{seed}": scaled}


def e2e_matched_uniform(spec, netadapt_spec, work: Path, passes: int) -> dict[str, Any]:
    """The uniform multiplier matched on measured rather than table latency: every distinct
    ``scale_width`` network from x0.40 to x0.90 timed in the same interleaved rounds as
    NetAdapt's network; the largest whose end-to-end median is not above NetAdapt's (cached)."""
    record = work / f"e2e_match-{hashlib.sha256(to_string(netadapt_spec).encode()).hexdigest()[:10]}.json"
    return json_once(record, lambda: match_uniform(spec, netadapt_spec, passes))


def match_uniform(spec, netadapt_spec, passes: int) -> dict[str, Any]:
    candidates: dict[str, Any] = {}
    for percent in range(40, 91):
        scaled = scale_width(spec, percent / 100)
        candidates.setdefault(to_string(scaled), (percent / 100, scaled))  # smallest multiplier per spec
    named = {f"x{m:.2f}": scaled for m, scaled in candidates.values()}
    figures = measured_now({"netadapt": netadapt_spec, **named}, passes)
    limit = figures["netadapt"]["end_to_end_ms"]
    fitting = [(float(name[1:]), name) for name in named if figures[name]["end_to_end_ms"] <= limit]
    if not fitting:
        raise SystemExit(f"netadapt_cifar10: no uniform multiplier from x0.40 is as fast as NetAdapt's "
                         f"network end to end ({limit:.3f} ms)")
    multiplier, name = max(fitting)
    match = {"multiplier": multiplier, "ms": figures[name]["end_to_end_ms"], "netadapt_ms": limit,
             "spec": to_string(named[name]), "loadavg": harness.load_average(),
             "measured": {n: round(f["end_to_end_ms"], 4) for n, f in figures.items()}}
    return match


def measured_together(finals: dict[str, Any], passes: int, work: Path) -> dict[str, dict[str, float]]:
    """Every final network timed afresh in the same rounds (:func:`measured_now`), once per set
    of networks: a resumed run with the same networks reuses the figures, a seed added later
    has them all measured together again."""
    names = json.dumps({name: to_string(spec) for name, spec in sorted(finals.items())} | {"passes": passes})
    record = work / f"measured_now-{hashlib.sha256(names.encode()).hexdigest()[:10]}.json"
    return json_once(record, lambda: measured_now(finals, passes))


def json_once(record: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s result, kept in ``record`` (JSON): a rerun reads it instead."""
    if record.is_file():
        return json.loads(record.read_text())
    result = compute()
    record.write_text(json.dumps(result, indent=1))
    return result


def run_e2e_arm(seed: int, start, match: dict[str, Any], latency, protocol, tuner, args,
                runs: pd.DataFrame, runs_path: Path) -> None:
    """The uniform arm at NetAdapt's measured latency: same catch-up and final training."""
    if has_run(runs, "uniform_e2e", seed):
        return
    path_steps = int(runs[(runs["arm"] == "netadapt") & (runs["seed"] == seed)]["path_steps"].iloc[0])
    scaled = from_string(match["spec"])
    model, before = caught_up_uniform(start, scaled, path_steps, tuner, seed, args.work, arm="uniform_e2e")
    top1, seconds = final_training(model, protocol, args, seed, args.work / f"final-uniform_e2e-seed{seed}")
    append_run(runs_path, {"arm": "uniform_e2e", "seed": seed, "table_ms": latency(scaled),
                           "multiplier": match["multiplier"], "netadapt_steps": None, "path_steps": path_steps,
                           "final_epochs": args.final_epochs, "top1_before_final": before, "top1": top1,
                           "seconds": round(seconds, 1), "spec": match["spec"]})


def summarise(runs: pd.DataFrame, start: dict[str, Any], args, extra: dict[str, Any]) -> dict[str, Any]:
    arms = {}
    for arm, group in runs.groupby("arm"):
        top1 = [100 * t for t in group["top1"]]
        arms[arm] = {"seeds": [int(s) for s in group["seed"]], "top1": [round(t, 2) for t in top1],
                     "top1_mean": round(statistics.mean(top1), 2),
                     "top1_std": round(statistics.stdev(top1), 2) if len(top1) > 1 else None,
                     "table_ms": [round(float(m), 3) for m in group["table_ms"]]}
    verdicts = {}
    for other in sorted(set(arms) - {"netadapt"}):
        pair = (arms.get("netadapt"), arms[other])
        if pair[0] is None or any(a["top1_std"] is None for a in pair):
            verdicts[other] = "not enough runs"
            continue
        diff = pair[0]["top1_mean"] - pair[1]["top1_mean"]
        interval = difference_interval(pair[0]["top1"], pair[1]["top1"])
        way = "NetAdapt ahead" if diff > 0 else f"{other} ahead"
        span = ("" if interval is None else
                f"; {100 * CONFIDENCE:.0f}% interval on NetAdapt minus {other}: "
                f"{interval[0]:+.2f} to {interval[1]:+.2f}")
        verdicts[other] = (f"{way} by {abs(diff):.2f} points{span}: NetAdapt "
                           f"{verdict(interval, len(pair[0]['top1']), len(pair[1]['top1']))}")
    return {"start": start, "arms": arms, "verdicts": verdicts, **extra,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                         if k not in ("out", "work")}}


def plot(runs: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = {"netadapt": "tab:red", "uniform": "tab:purple", "uniform_e2e": "tab:orange"}
    for arm, group in runs.groupby("arm"):
        ax.scatter(group["table_ms"], 100 * group["top1"], color=colours.get(arm), alpha=0.7,
                   label=f"{arm} (seeds {', '.join(str(s) for s in group['seed'])})")
    start = summary["start"]
    ax.scatter([start["table_ms"]], [start["top1"]], marker="s", color="tab:green", s=60,
               label="start: canonical Small, reference protocol")
    ax.axvline(start["table_ms"] * summary["settings"]["fraction"], ls="--", color="0.4", lw=1, label="target")
    ax.invert_xaxis()
    ax.set_xlabel("lookup-table latency (ms, this host, CPU 1 thread, 224x224)")
    ax.set_ylabel("CIFAR-10 val top-1 (%)")
    ax.set_title("NetAdapt vs uniform width at 75% of canonical Small's latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(runs: pd.DataFrame, summary: dict[str, Any], stages: dict[str, Any]) -> str:
    s = summary["start"]
    lines = ["# NetAdapt vs uniform width scaling on CIFAR-10 (MobileNetV3-Small)", "",
             f"Start: canonical Small, `{summary['settings']['protocol']}` protocol, seed 0: val top-1 "
             f"{s['top1']:.2f}%, table {s['table_ms']:.3f} ms; target {summary['settings']['fraction']:.0%}. "
             f"Latency table: {summary['table_source']}.", "",
             "| arm | seed | table ms | multiplier | NetAdapt steps | path steps | top-1 before final (holdout) "
             "| val top-1 | final s | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in runs.itertuples():
        mult = "-" if pd.isna(row.multiplier) else f"{row.multiplier:.3f}"
        steps = "-" if pd.isna(row.netadapt_steps) else int(row.netadapt_steps)
        lines.append(f"| {row.arm} | {row.seed} | {row.table_ms:.3f} | {mult} | {steps} | {row.path_steps} | "
                     f"{100 * row.top1_before_final:.2f}% | {100 * row.top1:.2f}% | {row.seconds:.0f} | {row.loadavg} |")
    lines += ["", "| arm | val top-1 mean | seed std |", "|---|---|---|"]
    for arm, a in summary["arms"].items():
        lines.append(f"| {arm} | {a['top1_mean']:.2f}% | {a['top1_std']} |")
    lines += [""] + [f"**NetAdapt vs {other}: {verdict}.**" for other, verdict in summary["verdicts"].items()]
    for seed, match in (summary.get("e2e_match") or {}).items():
        lines += ["", f"`uniform_e2e` seed {seed}: the largest multiplier whose end-to-end latency, measured in "
                  f"the same interleaved rounds as NetAdapt's network ({match['netadapt_ms']:.3f} ms), is not "
                  f"above it: x{match['multiplier']:.2f} ({match['ms']:.3f} ms; load {match['loadavg']})."]
    lines += [""]
    now = summary.get("measured_now") or {}
    if now:
        lines += ["Re-measured together (median of passes): " + "; ".join(
            f"{n} {v['end_to_end_ms']:.3f} ms end to end" for n, v in now.items()), ""]
    lines += ["Wall time per stage (s), load average at its start and end:", ""]
    lines += [f"- {n}: {r['seconds']:.0f} s, load {r['loadavg_start']} -> {r['loadavg_end']}" for n, r in stages.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    stages = harness.Stages.for_run(args)
    protocol = load_protocol(args.protocol)
    spec = load_spec("small")
    check_same_start(args.out / "runs.csv", args.work / "start.pth")
    latency, table, table_source = stages.run("latency table", lambda: host_latency(args.out, args.table))
    start, start_top1 = stages.run("start (reference training)", lambda: trained_start(spec, protocol, args.work))
    start_ms = latency(spec)
    short = dataclasses.replace(protocol.train, steps=args.short_steps, lr=args.short_lr, schedule="constant",
                                warmup_epochs=0.0, eval_every=0, progress=False, checkpoint_dir=None)
    tuner = FineTuner(protocol.data, short, None, selection="holdout")
    runs_path = args.out / "runs.csv"
    finals: dict[str, Any] = {"start": spec}
    for seed in args.seeds:
        runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame(columns=RUN_COLUMNS)
        finals |= stages.run(f"seed {seed}", lambda: run_seed(seed, spec, start, latency, protocol,
                                                              tuner, args, runs, runs_path))
    matches: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        netadapt_spec = finals[f"netadapt_seed{seed}"]
        matches[seed] = stages.run(f"uniform matched end to end, seed {seed}", lambda: e2e_matched_uniform(
            spec, netadapt_spec, args.work, args.latency_passes))
        runs = pd.read_csv(runs_path)
        stages.run(f"uniform_e2e seed {seed}", lambda: run_e2e_arm(seed, start, matches[seed], latency, protocol,
                                                                   tuner, args, runs, runs_path))
        finals[f"uniform_e2e_seed{seed}"] = from_string(matches[seed]["spec"])
    now = stages.run("latency measured afresh", lambda: measured_together(finals, args.latency_passes, args.work))
    runs = pd.read_csv(runs_path).sort_values(["arm", "seed"])
    summary = summarise(runs, {"top1": round(100 * start_top1, 2), "table_ms": round(start_ms, 3),
                               "spec": to_string(spec)},
                        args, {"table_source": table_source, "measured_now": now,
                               "table_keys": len(table), "e2e_match": matches})
    harness.write_yaml(args.out / "summary.yaml", summary)
    plot(runs, summary, args.out / "comparison.png")
    (args.out / "summary.md").write_text(markdown(runs, summary, stages.data))
    print(markdown(runs, summary, stages.data))
    return summary


if __name__ == "__main__":
    main()
