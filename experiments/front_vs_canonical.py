"""Do the networks the search finds beat canonical MobileNetV3-Small once trained? (the
search benchmark's front, confirmed by training from scratch)

From the search benchmark's fronts (``fronts.csv``: every sampler's and seed's final front,
supernet top-1 against this host's table latency) this picks the networks at and below
canonical Small's table latency: for each fraction in ``--fractions`` (default 1.0, 0.9 and
0.8 of canonical's latency) the network the supernet scores highest among those at or under
it (each network once). It writes

* their bneck YAMLs, ``<out>/found_<percent>.yaml`` (the search's emitted configs);
* an ``nas-ablate`` study, ``<out>/ablation/front_vs_canonical.yaml``: canonical Small as the
  baseline and the found networks as variants, trained from scratch with the reference
  protocol (``--seeds``), with table latency, end-to-end latency in interleaved rounds and
  the seed-noise verdict against canonical (a difference within two seed std is a tie);
* ``<out>/picked.csv``: what was picked and why (supernet top-1, table latency, fraction).

Canonical Small's reference runs already exist in the repeatability benchmark (the same
protocol settings key, the same training code); ``--import-runs`` copies them into the
study's ``results.jsonl`` (marked ``imported_from``) so they are not trained again. Then:

    python -m experiments.front_vs_canonical
    nas-ablate hydra.searchpath=[file://$PWD/experiments/results/search] \\
        ablation=front_vs_canonical hydra.run.dir=experiments/results/search/front_vs_canonical
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments import harness
from nas.ablate.results import Results, protocol_key, trained_arch
from nas.arch.codecs import from_string, load_spec, save_spec, to_string
from nas.arch.spec import NetworkSpec

DEFAULT_FRONTS = harness.RESULTS / "search_benchmark" / "fronts.csv"
DEFAULT_OUT = harness.RESULTS / "search"
DEFAULT_RUNS = harness.RESULTS / "repeatability" / "runs.csv"
STUDY = "front_vs_canonical"


def non_dominated(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on both supernet top-1 (up) and table latency (down)."""
    keep = []
    for _, row in frame.iterrows():
        dominated = ((frame["top1"] >= row["top1"]) & (frame["latency_ms"] <= row["latency_ms"])
                     & ((frame["top1"] > row["top1"]) | (frame["latency_ms"] < row["latency_ms"])))
        keep.append(not dominated.any())
    return frame[keep]


def pick(fronts: pd.DataFrame, canonical_ms: float, fractions: list[float]) -> pd.DataFrame:
    """For each fraction, the best-scored network at or under that share of canonical's
    latency; canonical Small itself (every study's first trial) is never a found network."""
    canonical = to_string(load_spec("small"))
    union = non_dominated(fronts[fronts["spec"] != canonical].drop_duplicates("spec"))
    canonical_ms += 1e-6  # the summary rounds canonical's latency to 4 decimals
    picked: list[dict[str, Any]] = []
    for fraction in fractions:
        under = union[(union["latency_ms"] <= fraction * canonical_ms)
                      & ~union["spec"].isin([p["spec"] for p in picked])]
        if under.empty:
            continue
        best = under.sort_values(["top1", "latency_ms"], ascending=[False, True]).iloc[0]
        picked.append({"name": f"found_{round(100 * fraction)}", "fraction": fraction,
                       "supernet_top1": best["top1"], "latency_ms": best["latency_ms"],
                       "latency_vs_canonical": best["latency_ms"] / canonical_ms,
                       "found_by": f"{best['sampler']} seed {best['seed']} trial {best['number']}",
                       "spec": best["spec"]})
    return pd.DataFrame(picked)


def study_document(names: list[str], out: Path, seeds: list[int], rounds: int) -> dict[str, Any]:
    variants: dict[str, Any] = {"canonical_small": {}}
    for name in names:
        path = (out / f"{name}.yaml").resolve()
        # Relative to the checkout, where nas-ablate runs: the study file is committed.
        variants[name] = {"base": harness.in_checkout(path)}
    return {
        "name": STUDY,
        "notes": "The search benchmark's found networks against canonical Small, "
                 "trained from scratch with the reference protocol (experiments/front_vs_canonical.py)",
        "base": "small",
        "baseline": "canonical_small",
        "variants": variants,
        "latency": {"table": "auto", "space": "mobilenetv3_small", "rounds": rounds},
        "accuracy": {"protocol": "reference", "seeds": seeds},
    }


def import_runs(runs_csv: Path, spec: NetworkSpec, seeds: list[int], run_dir: Path) -> int:
    """Copy the reference protocol's finished runs of ``spec`` into the study's results."""
    key = protocol_key("reference")
    runs = pd.read_csv(runs_csv)
    mine = runs[(runs["protocol"] == "reference") & (runs["settings_key"] == key)
                & (runs["arch"] == to_string(spec)) & runs["seed"].isin(seeds)]
    results = Results(run_dir)
    arch = trained_arch(spec, key)
    added = 0
    for _, row in mine.iterrows():
        if results.get("top1", arch, int(row["seed"])) is None:
            results.add({"kind": "top1", "arch": arch, "seed": int(row["seed"]),
                         "top1": float(row["top1"]), "protocol": "reference",
                         "seconds": float(row["seconds"]),
                         # The benchmark kept the 1-minute figure only: the first of the usual three.
                         "loadavg": [float(row["load_start"])],
                         "imported_from": harness.in_checkout(runs_csv)})
            added += 1
    return added


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fronts", type=Path, default=DEFAULT_FRONTS)
    parser.add_argument("--canonical-ms", type=float, default=None,
                        help="canonical Small's table latency (default: the benchmark's summary)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.9, 0.8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=10, help="end-to-end latency rounds")
    parser.add_argument("--import-runs", type=Path, default=DEFAULT_RUNS,
                        help="the repeatability benchmark's runs.csv (canonical's reference runs)")
    harness.add_common(parser, out=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.fronts.is_file():
        parser.error(f"--fronts {args.fronts}: no such file (run python -m experiments.search_benchmark first)")
    fronts = pd.read_csv(args.fronts)
    canonical_ms = args.canonical_ms
    if canonical_ms is None:
        summary = yaml.safe_load((args.fronts.parent / "summary-pareto.yaml").read_text())
        canonical_ms = float(summary["canonical_latency_ms"])
    picked = pick(fronts, canonical_ms, args.fractions)
    if picked.empty:
        parser.error(f"no front member at or below {max(args.fractions):g} x canonical's "
                     f"{canonical_ms:.3f} ms in {args.fronts}")
    args.out.mkdir(parents=True, exist_ok=True)
    for _, row in picked.iterrows():
        save_spec(from_string(row["spec"]).replace(name=row["name"]), args.out / f"{row['name']}.yaml")
    picked.to_csv(args.out / "picked.csv", index=False)
    study = study_document(list(picked["name"]), args.out, args.seeds, args.rounds)
    (args.out / "ablation").mkdir(exist_ok=True)
    harness.write_yaml(args.out / "ablation" / f"{STUDY}.yaml", study)
    imported = 0
    if args.import_runs is not None and args.import_runs.is_file():
        imported = import_runs(args.import_runs, load_spec("small"), args.seeds, args.out / STUDY)
    print(picked.drop(columns="spec").to_string(index=False))
    print(json.dumps({"canonical_ms": canonical_ms, "imported_canonical_runs": imported,
                      "study": str(args.out / "ablation" / f"{STUDY}.yaml")}))
    return picked


if __name__ == "__main__":
    main()
