"""Pilot: does averaging the weights over the end of a run lower a protocol's seed noise?

The reference protocol's per-network seed std is 0.69 top-1 points against a 0.5 target, and
the val set's own sampling noise explains only 0.39 of it (``experiments/results/repeatability``):
the rest is the training trajectory. Weight averaging is the usual cure for trajectory noise
(an exponential moving average of the weights, as timm's ``ModelEmaV3`` and the MobileNetV3
paper's TPU recipe keep one; or an equal average of the last part of training, SWA, Izmailov
et al. 2018). Before the loop grows a field for it, this pilot measures it on one trajectory:
each run trains a spec exactly as its protocol says and carries, beside it, several averaged
copies (``torch.optim.swa_utils.AveragedModel``) updated after every optimiser step; at the end
each copy's BatchNorm statistics are recalibrated on the same batches as the run's own and it
is scored on the same val images. The comparison is paired: the plain weights and every
average come from the same run, so a gain or a lower seed std is the averaging's, not a
different draw's.

Averages (their horizon a fraction of the run's steps, so one definition serves every length):

* ``ema_f05``, ``ema_f15``, ``ema_f30``: exponential, time constant 5%, 15% and 30% of the steps;
* ``swa_last25``: equal average of the weights after every step of the last 25%.

Runs go to ``--runs`` (one JSON-lines file per protocol and seed; a finished run is never
repeated; a run in progress checkpoints, with its averages, every ``--checkpoint-every``
steps into ``--work`` and a killed one resumes there); the summary (``summary.yaml``, ``summary.md``) gives per
variant the pooled seed std, the seed-to-seed Kendall tau, the tau against the reference
protocol's seed mean (``experiments/results/repeatability/networks.csv``) and the mean top-1
gain over the plain weights::

    python -m experiments.weight_averaging_pilot --protocol proxy --seeds 0 &
    python -m experiments.weight_averaging_pilot --protocol proxy --seeds 1 &
    wait; python -m experiments.weight_averaging_pilot --protocol proxy --summary-only

``--epochs`` lengthens a protocol (labelled ``<protocol>-e<epochs>``: its own runs and
summary), e.g. whether the reference's seed noise shrinks at twice its schedule::

    python -m experiments.weight_averaging_pilot --protocol reference --epochs 40 --only smallest
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from experiments import harness
from experiments.repeatability_benchmark import add_run_arguments, finished_runs, run_then_summarise
from experiments.repeatability_stats import mean_of, pooled_std, tau
from experiments.supernet_benchmark import params_of, pick_specs
from nas.arch.codecs import to_string
from nas.arch.space import load_space
from nas.models.bn import recalibrate_bn
from nas.models.builder import build_model
from nas.training.checkpoint import save_atomic
from nas.training.data import make_loaders
from nas.training.loop import epoch_batches
from nas.training.protocols import Protocol, load_protocol, with_fields
from nas.training.scoring import decode_correct, encode_correct, predict
from nas.training.train import checkpoint_steps, train

DEFAULT_ROOT = harness.DATASETS / "cifar10"
DEFAULT_OUT = harness.RESULTS / "weight_averaging"
DEFAULT_WORK = harness.OUTPUTS / "weight_averaging_pilot"
REFERENCE_NETWORKS = harness.RESULTS / "repeatability" / "networks.csv"

EMA_FRACTIONS = {"ema_f05": 0.05, "ema_f15": 0.15, "ema_f30": 0.30}
SWA_LAST = {"swa_last25": 0.25}
VARIANTS = ["plain", *EMA_FRACTIONS, *SWA_LAST]


class ResumableAverages:
    """The averaged copies of one run, updated after each optimiser step and saved beside the
    run's own checkpoint (``train``'s ``last.pt``).

    The loop checkpoints every ``checkpoint_every`` steps and at each epoch end; the averages
    are saved at the same steps, tagged with the step. A resumed run continues only when both
    files hold the same step (a kill between the two writes starts that run over).
    """

    def __init__(self, model: nn.Module, total_steps: int, folder: Path, every: int,
                 steps_per_epoch: int) -> None:
        self.model, self.total_steps = model, total_steps
        self.file = folder / "averages.pt"
        self.every, self.steps_per_epoch = every, steps_per_epoch
        self.copies: dict[str, AveragedModel] = {}
        for name, fraction in EMA_FRACTIONS.items():
            decay = 1.0 - 1.0 / max(1.0, fraction * total_steps)
            self.copies[name] = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.swa_start = {name: int(round((1.0 - f) * total_steps)) for name, f in SWA_LAST.items()}
        for name in SWA_LAST:
            self.copies[name] = AveragedModel(model)  # equal average (the SWA default)

    def resume(self, run_folder: Path) -> bool:
        """Load the saved averages when they match the step of the run's checkpoint in
        ``run_folder``; else False."""
        step = checkpoint_steps(run_folder)
        if step is None or not self.file.is_file():
            return False
        saved = torch.load(self.file, map_location="cpu", weights_only=True)
        if saved["step"] != step:
            return False
        for name, averaged in self.copies.items():
            averaged.load_state_dict(saved["copies"][name])
        return True

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        for name, averaged in self.copies.items():
            if name not in self.swa_start or step > self.swa_start[name]:
                averaged.update_parameters(self.model)
        if step % self.every == 0 or step % self.steps_per_epoch == 0 or step == self.total_steps:
            copies = {name: averaged.state_dict() for name, averaged in self.copies.items()}
            save_atomic({"step": step, "copies": copies}, self.file)


def pilot_protocol(args: argparse.Namespace) -> tuple[str, Protocol]:
    """The protocol trained, and its label: the protocol's name, with ``-e<epochs>`` and
    ``-c<per class>`` when ``--epochs`` or ``--train-per-class`` change it (e.g. the reference
    at a longer schedule, ``reference-e40``)."""
    data: dict[str, Any] = {"root": str(args.root)}
    train_fields: dict[str, Any] = {"device": "cpu", "progress": False}
    label = args.protocol
    if args.epochs is not None:
        train_fields["epochs"] = args.epochs
        label += f"-e{args.epochs}"
    if args.train_per_class is not None:
        data["train_per_class"] = args.train_per_class
        label += f"-c{args.train_per_class}"
    return label, with_fields(load_protocol(args.protocol), data=data, train=train_fields)


def run_all(args: argparse.Namespace) -> None:
    harness.set_threads(args.threads)
    label, protocol = pilot_protocol(args)
    key = protocol.key()
    specs = pick_specs(load_space("mobilenetv3_small"), args.specs, args.pool, args.spec_seed)
    done = {(r["protocol"], r["settings_key"], r["arch"], r["seed"]) for r in finished_runs(args.runs)}
    for seed in args.seeds:
        loaders = make_loaders(protocol.data, seed=seed)
        cfg = with_fields(protocol, train={"seed": seed}).train
        total_steps = cfg.steps or cfg.epochs * len(loaders.train)
        for spec_name, spec in specs.items():
            arch = to_string(spec)
            if (label, key, arch, seed) in done or (args.only and spec_name not in args.only):
                continue
            harness.log(f"{label} {spec_name} seed {seed}: training with {len(VARIANTS) - 1} averages")
            torch.manual_seed(seed)  # the initialisation train() would draw for the spec
            model = build_model(spec, num_classes=loaders.num_classes)
            model.to(memory_format=torch.channels_last)
            folder = args.work / f"{label}-{spec_name}-seed{seed}"
            averages = ResumableAverages(model, total_steps, folder, args.checkpoint_every,
                                         len(loaders.train))
            if folder.exists() and not averages.resume(folder):
                harness.log(f"{label} {spec_name} seed {seed}: checkpoint and averages disagree; "
                            "starting this run over")
                shutil.rmtree(folder)
            run_cfg = dataclasses.replace(cfg, checkpoint_dir=str(folder), checkpoint_every=args.checkpoint_every)
            result = train(model, protocol.data, run_cfg, loaders=loaders, on_step=averages.on_step,
                           resume=True)
            row: dict[str, Any] = {
                "protocol": label, "settings_key": key, "spec": spec_name, "arch": arch,
                "seed": seed, "params": params_of(spec, 10), "seconds": result.seconds,
                **harness.host_facts(), "finished_at": harness.now(),
            }
            last_epoch = (total_steps - 1) // len(loaders.train)
            candidates = {"plain": result.model}
            for name, averaged in averages.copies.items():
                candidates[name] = copy.deepcopy(averaged.module)
                # The same recalibration batches as the run's own final evaluation.
                recalibrate_bn(candidates[name], epoch_batches(loaders.train, last_epoch, 0),
                               cfg.bn_recalibration_batches, "cpu")
            for name, candidate in candidates.items():
                scored = predict(candidate, loaders.val, "cpu")
                row[name], row[f"{name}_loss"] = scored.top1(), scored.loss()
                row[f"{name}_correct"] = encode_correct(scored.correct())
            row["val_images"] = len(scored.target)
            if row["plain"] != result.top1:  # the same weights and images: anything else is a bug
                raise RuntimeError(f"re-scoring gave top-1 {row['plain']} against the run's {result.top1}")
            harness.append_row(args.runs / f"runs-{label}-seed{seed}.jsonl", row,
                               what="the weight-averaging pilot's finished runs")
            harness.log(f"{label} {spec_name} seed {seed}: " + ", ".join(
                f"{v} {row[v]:.4f}" for v in VARIANTS) + f" ({result.seconds:.0f} s)")
            shutil.rmtree(folder, ignore_errors=True)


def flipping_images(runs: pd.DataFrame, variant: str) -> float | None:
    """Median over networks of the val images right under one seed and wrong under another
    (mean over seed pairs): how far apart the seeds' networks are, image by image."""
    per_network = []
    for _, group in runs.groupby("spec"):
        correct = [decode_correct(text, int(n)) for text, n in zip(group[f"{variant}_correct"], group["val_images"])]
        pairs = [int((a != b).sum()) for a, b in itertools.combinations(correct, 2)]
        if pairs:
            per_network.append(sum(pairs) / len(pairs))
    return round(float(pd.Series(per_network).median()), 1) if per_network else None


def summarise(args: argparse.Namespace) -> dict[str, Any]:
    label, protocol = pilot_protocol(args)
    key = protocol.key()
    rows = [r for r in finished_runs(args.runs) if r["protocol"] == label and r["settings_key"] == key]
    if not rows:
        raise SystemExit(f"weight_averaging_pilot: no finished {label} runs (settings {key}) in {args.runs}")
    runs = pd.DataFrame(rows).drop_duplicates(["arch", "seed"], keep="last")
    networks = pd.read_csv(REFERENCE_NETWORKS)
    reference = networks[networks.protocol == "reference"].set_index("spec")["top1_mean"]
    summary: dict[str, Any] = {
        "protocol": label, "settings": protocol.settings(), "runs": len(runs),
        "seeds": sorted(int(s) for s in runs.seed.unique()),
        "specs": int(runs.spec.nunique()), **harness.host_facts(),
        "reference": harness.in_checkout(REFERENCE_NETWORKS), "variants": {},
    }
    for variant in VARIANTS:
        table = runs.pivot_table(index="spec", columns="seed", values=variant)
        pairs = {f"{a}-{b}": tau(table[a], table[b])
                 for a, b in itertools.combinations(table.columns, 2)}
        per_seed = [tau(table[s], reference) for s in table.columns]
        summary["variants"][variant] = {
            "seed_std_points_pooled": pooled_std(runs.rename(columns={variant: "top1"})),
            "seed_to_seed_tau_mean": mean_of(list(pairs.values())),
            "tau_vs_reference_mean_per_seed_mean": mean_of(per_seed),
            "tau_seed_mean_vs_reference_mean": (round(t, 3) if (t := tau(table.mean(axis=1), reference))
                                                is not None else None),
            "val_images_flipping_between_seeds_median": flipping_images(runs, variant),
            "top1_mean": round(float(runs[variant].mean()) * 100, 2),
            "gain_over_plain_points": round(float((runs[variant] - runs["plain"]).mean()) * 100, 2),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    runs.sort_values(["spec", "seed"]).drop(columns=[f"{v}_correct" for v in VARIANTS]).to_csv(
        args.out / f"runs-{label}.csv", index=False)
    harness.write_yaml(args.out / f"summary-{label}.yaml", summary)
    lines = [f"# Weight averaging on the `{label}` protocol ({len(runs)} runs, seeds "
             f"{summary['seeds']}, {summary['specs']} specs)", "",
             "| weights | pooled seed std (pts, 90% interval) | seed-to-seed tau | tau vs reference "
             "mean (per seed, mean) | tau of the seed mean vs reference mean | val images flipping "
             "between seeds (median) | top-1 mean | gain (pts) |",
             "|---|---|---|---|---|---|---|---|"]
    for variant, e in summary["variants"].items():
        p = e["seed_std_points_pooled"] or {}
        lines.append(f"| {variant} | {p.get('std')} ({p.get('interval_90')}) | {e['seed_to_seed_tau_mean']} | "
                     f"{e['tau_vs_reference_mean_per_seed_mean']} | {e['tau_seed_mean_vs_reference_mean']} | "
                     f"{e['val_images_flipping_between_seeds_median']} | {e['top1_mean']} | "
                     f"{e['gain_over_plain_points']} |")
    harness.write_lines(args.out / f"summary-{label}.md", lines)
    harness.log(f"summary written to {args.out}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.study_parser(__doc__)
    parser.add_argument("--protocol", default="proxy", help="a nas/conf/protocol name")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the CIFAR-10 folder")
    harness.add_common(parser, out=DEFAULT_OUT, work=DEFAULT_WORK,
                       help={"work": "checkpoints of runs in progress"})
    parser.add_argument("--runs", type=Path, default=DEFAULT_OUT / "runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_then_summarise(parse_args(argv), run_all, summarise)


if __name__ == "__main__":
    raise SystemExit(main())
