"""``nas-lut``: build, validate, calibrate and move latency lookup tables.

    nas-lut build --space mobilenetv3_large --space mobilenetv3_small --out latency_tables/cpu
    nas-lut build --backend litert --space mobilenetv3_small --out outputs/tables/litert-small
    nas-lut validate --table latency_tables/cpu --space mobilenetv3_small --n 100 --seed 0
    nas-lut predict --table latency_tables/cpu large
    nas-lut export-ops --space mobilenetv3_small --out ops_small
    python ops_small/ort_runner.py ops_small --threads 1 --out table.csv    (on the device)
    nas-lut import table.csv --out latency_tables/board
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nas.arch.spec import NetworkSpec, SpecError
from nas.arch.space import SpaceError
from nas.cost.harness import BACKEND_RUNTIME, RUNTIMES, HarnessConfig

if TYPE_CHECKING:  # the table module loads torch; the CLI imports it only when a command runs
    from nas.cost.lut import LatencyTable


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value

def _harness(args: argparse.Namespace, base=None):
    from nas.cost.harness import HarnessConfig

    cfg = base or HarnessConfig()
    changes = {}
    for name in ("runtime", "threads", "batch", "dtype", "passes", "repeats", "warmup",
                 "min_run_time", "max_run_time", "pin_cpu", "seed", "pass_statistic",
                 "onnx_exporter"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    for flag in ("realtime", "steady_allocator"):
        if getattr(args, flag, None) is not None:
            changes[flag] = getattr(args, flag)
    return cfg.replace(**changes) if changes else cfg


def _spaces(names: list[str], resolution: int | None):
    import dataclasses

    from nas.arch.space import load_space

    spaces = []
    for name in names:
        space = load_space(name)
        if resolution is not None and resolution != space.base.resolution:
            space = dataclasses.replace(space, base=space.base.replace(resolution=resolution))
        spaces.append(space)
    return spaces


def _runtime(args: argparse.Namespace) -> None:
    """``--backend`` names the runtime (``--runtime`` may say the same, or torch-cuda for
    ``torch``); a deployment backend whose extra is missing stops here, in one line."""
    from nas.cost.harness import BACKEND_RUNTIMES, runtime_for_backend

    if args.backend is not None:
        args.runtime = runtime_for_backend(args.backend, args.runtime)
    args.runtime = args.runtime or "torch-cpu"
    if args.runtime in BACKEND_RUNTIMES:
        from nas.cost.backends import get_backend

        get_backend(args.runtime)


def _check_backend(args: argparse.Namespace, table) -> None:
    """``--backend`` of validate/calibrate: the table must have been measured with it."""
    from nas.cost.harness import backend_of, runtime_for_backend

    if args.backend is not None and backend_of(table.runtime) != args.backend:
        table.check_compatible(runtime=runtime_for_backend(args.backend))


def _build(args: argparse.Namespace) -> None:
    from nas.cost.calibrate import CALIBRATION_SEED, sample_specs
    from nas.cost.lut import build_table

    _runtime(args)
    spaces = _spaces(args.space, args.resolution)
    cfg = _harness(args)
    items: list = list(spaces)
    for path in args.spec or []:
        from nas.arch.codecs import load_spec

        spec = load_spec(path)
        items.append(spec.replace(resolution=args.resolution) if args.resolution else spec)
    if not items:
        raise SpaceError("give at least one --space (or --spec)")
    table = build_table(items, args.out, cfg, method=args.method, progress=not args.no_progress)
    print(f"{args.out}: {len(table)} keys ({table.provenance['runtime']}, "
          f"{table.provenance['threads']} thread(s), batch {table.provenance['batch']}, "
          f"{table.resolution}x{table.resolution}, method {table.provenance['method']})")
    coverage = table.provenance.get("delegate_coverage")
    if coverage:
        print(f"{table.provenance.get('delegate')}: {coverage['fully_delegated']} of "
              f"{coverage['keys']} keys fully delegated; outside it: "
              f"{coverage['undelegated_ops'] or 'nothing'}")
    if args.calibrate:
        specs = [s for space in spaces for s in sample_specs(space, args.calibrate, args.calibration_seed or CALIBRATION_SEED)]
        _calibrate_and_save(table, specs, cfg, args.calibration_rounds, not args.no_progress,
                            f"seed {args.calibration_seed or CALIBRATION_SEED}", args.out)


def _calibrate(args: argparse.Namespace) -> None:
    from nas.cost.calibrate import sample_specs
    from nas.cost.lut import LatencyTable

    table = LatencyTable.load(args.table)
    _check_backend(args, table)
    spaces = _spaces(args.space, None)
    cfg = _harness(args, table.harness_config())
    specs = [s for space in spaces for s in sample_specs(space, args.n, args.seed)]
    _calibrate_and_save(table, specs, cfg, args.rounds, not args.no_progress, f"seed {args.seed}", args.table)


def _calibrate_and_save(table: LatencyTable, specs: list[NetworkSpec], cfg: HarnessConfig,
                        rounds: int, progress: bool, label: str, path: Path) -> None:
    """Fit the table's end-to-end calibration on ``specs``, save the table, print the fit."""
    from nas.cost.calibrate import calibrate

    record = calibrate(table, specs, cfg, rounds=rounds, progress=progress, label=label)
    table.save(path)
    print(f"calibration: ms = {record['a']:.4f} * sum + {record['b']:.4f} "
          f"(fit on {record['n']} networks, fit MAPE {record['fit_mape_pct']:.2f}%)")


def _validate(args: argparse.Namespace) -> None:
    from nas.cost.lut import LatencyTable
    from nas.cost.validate import validate

    table = LatencyTable.load(args.table)
    _check_backend(args, table)
    (space,) = _spaces([args.space], None)
    cfg = _harness(args, table.harness_config())
    # A user's validation never overwrites the report shipped beside a table: it goes to a
    # run folder unless --update-report asks for the table's own report to be replaced.
    out = args.out or (Path(args.table) if args.update_report else Path("outputs") / "nas-lut" /
                       f"validate-{Path(args.table).name}-{time.strftime('%Y%m%d-%H%M%S')}")
    report = validate(table, space, n=args.n, seed=args.seed, harness=cfg, rounds=args.rounds,
                      out_dir=out, progress=not args.no_progress,
                      recalibrate=args.recalibrate, measure_missing=args.measure_missing,
                      anchor=space.base if args.anchored else None)
    print(report.format())
    for path in report.files:
        print(f"wrote {path}")


def _predict(args: argparse.Namespace) -> None:
    import warnings

    from nas.arch.codecs import load_spec
    from nas.cost.lut import LatencyTable
    from nas.cost.table_files import HostMismatchWarning

    table = LatencyTable.load(args.table)
    # A table measured on another CPU or runtime version predicts for that machine, not
    # this one: say so on one stderr line (or stop, with --strict) before any figure.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HostMismatchWarning)
        table.check_host(strict=args.strict)
    for warning in caught:
        if issubclass(warning.category, HostMismatchWarning):
            print(f"nas-lut: warning: {warning.message}", file=sys.stderr)
        else:  # not ours: pass it on unchanged
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    for arch in args.arch:
        spec = load_spec(arch)
        if args.breakdown:
            for key, ms in table.breakdown(spec):
                print(f"  {key:44s} {ms:8.4f}")
        print(f"{arch}: {table.predict(spec):.3f} ms predicted "
              f"(sum {table.predict(spec, calibrated=False):.3f} ms)")


def _export_ops(args: argparse.Namespace) -> None:
    from nas.cost.offhost import export_ops

    spaces = _spaces(args.space, args.resolution)
    if args.backend is not None:
        from nas.cost.offhost_kits import export_kit

        manifest = export_kit(spaces, args.out, args.backend, batch=args.batch,
                              progress=not args.no_progress)
        units = json.loads(manifest.read_text())["ops"]
        print(f"wrote {len(units)} {args.backend} units (keys and empty models), {manifest} and "
              f"{Path(args.out) / 'kit_runner.py'}")
        print(f"on the device: python kit_runner.py {args.out} --threads 1 --out table.csv")
        return
    manifest = export_ops(spaces, args.out, batch=args.batch, progress=not args.no_progress,
                          exporter=args.exporter)
    ops = json.loads(manifest.read_text())["ops"]
    print(f"wrote {len(ops)} ONNX ops, {manifest}, {Path(args.out) / 'manifest.csv'} and "
          f"{Path(args.out) / 'ort_runner.py'}")
    print(f"on the device: python ort_runner.py {args.out} --threads 1 --out table.csv")


def _import(args: argparse.Namespace) -> None:
    from nas.cost.offhost import import_runner_csv

    table = import_runner_csv(args.runner_csv, args.out, kit_dir=args.kit)
    print(f"{args.out}: {len(table)} keys from {table.provenance['device']} "
          f"({table.provenance['runtime']} {table.provenance['runtime_version']}, "
          f"{table.provenance['threads']} thread(s))")


def _add_harness_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    g = p.add_argument_group("harness" + ("" if defaults else " (default: the table's)"))
    g.add_argument("--threads", type=positive_int, default=1 if defaults else None)
    g.add_argument("--batch", type=positive_int, default=1 if defaults else None)
    g.add_argument("--passes", type=positive_int, default=None,
                   help="interleaved passes / host networks per key (default 5)")
    g.add_argument("--repeats", type=positive_int, default=None, help="minimum samples per measurement")
    g.add_argument("--warmup", type=int, default=None, help="minimum warm-up calls")
    g.add_argument("--min-run-time", type=float, default=None, help="minimum seconds per measurement")
    g.add_argument("--max-run-time", type=float, default=None)
    g.add_argument("--pass-statistic", choices=["median", "q25", "min"], default=None,
                   help="figure of interleaved passes: median of pass medians (default), their "
                        "lower quartile, or min over all samples (robust on a shared machine)")
    g.add_argument("--pin-cpu", type=int, default=None, help="pin the timing thread to this CPU")
    g.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="time under SCHED_FIFO (needs root; steadies timings on a shared machine)")
    g.add_argument("--onnx-exporter", choices=["dynamo", "torchscript"], default=None,
                   help="how networks/ops are exported for onnxruntime (default dynamo; "
                        "torchscript writes equivalent graphs, much faster)")
    g.add_argument("--steady-allocator", action=argparse.BooleanOptionalAction, default=None,
                   help="keep glibc from returning memory to the OS between forward passes "
                        "(default on: no page faults in steady state)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-lut", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="measure the keys of spaces/specs a table lacks (resumable)")
    build.add_argument("--space", action="append", default=[], help="space name or YAML (repeatable)")
    build.add_argument("--spec", action="append", help="also cover this network (name or bneck YAML)")
    build.add_argument("--out", required=True, type=Path, help="table folder (created or extended)")
    build.add_argument("--backend", choices=list(BACKEND_RUNTIME), default=None,
                       help="the runtime to measure in, by backend (docs/latency-backends.md); "
                            "default torch (eager PyTorch)")
    build.add_argument("--runtime", choices=list(RUNTIMES), default=None,
                       help="the harness runtime (default torch-cpu; torch-cuda for eager on the GPU)")
    build.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    build.add_argument("--resolution", type=int, default=None, help="input resolution (default: the space's)")
    build.add_argument("--method", choices=["context", "isolated"], default=None,
                       help="time ops inside whole networks (torch default) or alone (ORT)")
    fit = build.add_mutually_exclusive_group()
    fit.add_argument("--calibrate", type=positive_int, default=12, metavar="N",
                     help="then fit ms = a*sum + b on N end-to-end networks per space (default "
                          "12: an uncalibrated sum was 14%% off on this project's machine)")
    fit.add_argument("--no-calibrate", dest="calibrate", action="store_const", const=0,
                     help="keep the raw sum of op timings (no end-to-end fit)")
    build.add_argument("--calibration-seed", type=int, default=None, help="default 1000")
    build.add_argument("--calibration-rounds", type=int, default=None)
    build.add_argument("--seed", type=int, default=None, help="seed of weights, inputs and hosts")
    build.add_argument("--no-progress", action="store_true")
    _add_harness_options(build, defaults=True)
    build.set_defaults(func=_build)

    validate = sub.add_parser("validate", help="predicted vs measured end to end on N random specs")
    validate.add_argument("--table", required=True, type=Path)
    validate.add_argument("--space", required=True)
    validate.add_argument("--n", type=positive_int, default=100)
    validate.add_argument("--seed", type=int, default=0)
    validate.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds (default: passes)")
    where = validate.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None,
                       help="report folder (default: outputs/nas-lut/validate-<table>-<time>)")
    where.add_argument("--update-report", action="store_true",
                       help="replace the report kept in the table's folder (maintainers)")
    validate.add_argument("--recalibrate", type=int, default=0, metavar="N",
                          help="also report a calibration fitted now on N other specs")
    validate.add_argument("--measure-missing", action="store_true")
    validate.add_argument("--anchored", action="store_true",
                          help="time each network in calls alternating with the space's canonical network "
                               "and measure it by its ratio to it (a host whose speed moves)")
    validate.add_argument("--no-progress", action="store_true")
    validate.add_argument("--backend", choices=list(BACKEND_RUNTIME), default=None,
                       help="the table must have been measured with this backend")
    _add_harness_options(validate, defaults=False)
    validate.set_defaults(func=_validate)

    cal = sub.add_parser("calibrate", help="fit ms = a*sum + b on end-to-end measurements")
    cal.add_argument("--table", required=True, type=Path)
    cal.add_argument("--space", action="append", required=True)
    cal.add_argument("--n", type=positive_int, default=10, help="networks per space")
    cal.add_argument("--seed", type=int, default=1000, help="keep it apart from validation seeds")
    cal.add_argument("--rounds", type=positive_int, default=None)
    cal.add_argument("--no-progress", action="store_true")
    cal.add_argument("--backend", choices=list(BACKEND_RUNTIME), default=None,
                       help="the table must have been measured with this backend")
    _add_harness_options(cal, defaults=False)
    cal.set_defaults(func=_calibrate)

    pred = sub.add_parser("predict", help="predict the latency of networks")
    pred.add_argument("--table", required=True, type=Path)
    pred.add_argument("arch", nargs="+", help="canonical name or bneck YAML")
    pred.add_argument("--breakdown", action="store_true")
    pred.add_argument("--strict", action="store_true",
                      help="fail (exit 2) if the table was measured on another CPU/GPU or "
                           "runtime version than this host's (default: warn)")
    pred.set_defaults(func=_predict)

    export = sub.add_parser("export-ops", help="export every needed op as ONNX plus a manifest")
    export.add_argument("--space", action="append", required=True)
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--batch", type=positive_int, default=1)
    export.add_argument("--resolution", type=int, default=None)
    export.add_argument("--exporter", choices=["dynamo", "torchscript"], default="torchscript",
                        help="torch.onnx exporter (default torchscript: graphs tested equivalent "
                             "to dynamo's, much faster per op)")
    export.add_argument("--backend", choices=["litert", "executorch", "openvino", "onnxruntime"],
                        default=None,
                        help="convert for this runtime with its empty models and kit_runner.py "
                             "(default: the ONNX kit run by ort_runner.py)")
    export.add_argument("--no-progress", action="store_true")
    export.set_defaults(func=_export_ops)

    imp = sub.add_parser("import", help="turn an ort_runner.py or kit_runner.py CSV into a table")
    imp.add_argument("runner_csv", type=Path)
    imp.add_argument("--out", required=True, type=Path)
    imp.add_argument("--kit", type=Path, default=None,
                     help="the kit folder the CSV must have been measured with")
    imp.set_defaults(func=_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nas.cost.backends import BackendError
    from nas.cost.harness import HarnessError
    from nas.cost.table_files import LatencyTableError, MissingKeysError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (LatencyTableError, MissingKeysError, SpaceError, SpecError, HarnessError,
            BackendError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
