"""How long ``latency.table=auto`` takes to build this host's table, per runtime, with the
conversion in one process or in a pool.

A deployment backend's host table converts every key of the space into its own model, times
it, then calibrates on 12 whole networks: what a user of ``nas-search latency.backend=...``
waits for once per host. This builds that table from nothing (fresh table and artifact caches
under ``--work``) in a child process, exactly as the main job does
(:func:`nas.cost.host_table.host_table`), once per backend and conversion-pool size
(``NAS_CONVERT_WORKERS``), and records the wall time with the load average::

    python -m experiments.table_build_time                       # executorch and litert, 1 and 2 workers
    python -m experiments.table_build_time --backend onnxruntime --workers 1

Arms run one after another in the order given (a pool of 2 next to a pool of 1 of the same
backend), each recorded the moment it ends (``results.jsonl``; a rerun skips recorded arms).
``summary.md`` / ``summary.yaml`` in ``--out`` hold per backend the minutes per arm, the
seconds per key, and the pool's speed-up over one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments import harness

OUT = harness.RESULTS / "table_build"
WORK = harness.OUTPUTS / "table_build_time"
BACKENDS = ("executorch", "litert")


def _arm_name(backend: str, space: str, workers: int) -> str:
    """``<backend>-<space>-w<workers>``; a space given as a YAML file by its file name."""
    return f"{backend}-{Path(space).stem}-w{workers}"


def build_in_this_process(backend: str, space_name: str) -> dict[str, Any]:
    """The child's work: ``latency.table=auto``'s build for ``backend`` (caches from the
    environment); returns what was built."""
    from nas.arch.space import load_space
    from nas.cost.harness import runtime_for_backend
    from nas.cost.host_table import host_table
    from nas.cost.lut import LatencyTable

    space = load_space(space_name)
    runtime = runtime_for_backend(backend, None)
    choice = host_table(space, runtime=runtime, resolution=space.base.resolution, progress=False)
    table = LatencyTable.load(choice.path)
    return {"keys": len(table), "reason": choice.reason}


def run_arm(backend: str, space: str, workers: int, work: Path) -> dict[str, Any]:
    """Build one arm's table from empty caches in a child process; the row to record."""
    folder = work / _arm_name(backend, space, workers)
    shutil.rmtree(folder, ignore_errors=True)  # from nothing: no converted artifact, no table
    env = {**os.environ, "NAS_CACHE_DIR": str(folder / "cache"), "NAS_LUT_CACHE": str(folder / "artifacts"),
           "NAS_CONVERT_WORKERS": str(workers), "OMP_NUM_THREADS": "1"}
    load_before = harness.load_average()
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "experiments.table_build_time", "--child", backend, space],
                           env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{_arm_name(backend, space, workers)}: the build failed "
                         f"(exit {child.returncode}):\n{child.stderr[-3000:]}")
    built = json.loads(child.stdout.strip().splitlines()[-1])
    return {"backend": backend, "space": space, "workers": workers, "wall_s": round(wall_s, 1),
            "keys": built["keys"], "s_per_key": round(wall_s / built["keys"], 3),
            "load_before": load_before, "load_after": harness.load_average(),
            "finished": harness.now(), **harness.host_facts()}


def summarize(rows: list[dict[str, Any]], out: Path) -> None:
    """Per backend and space: minutes per arm and the pool's speed-up over one process."""
    summary: dict[str, Any] = {}
    lines = ["| backend | space | keys | conversion processes | build (min) | s per key | speed-up over 1 | load before / after |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        one = next((r for r in rows if r["backend"] == row["backend"] and r["space"] == row["space"]
                    and r["workers"] == 1), None)
        speedup = round(one["wall_s"] / row["wall_s"], 2) if one else None
        summary.setdefault(f"{row['backend']}/{row['space']}", {})[f"w{row['workers']}"] = {
            "wall_min": round(row["wall_s"] / 60, 1), "s_per_key": row["s_per_key"], "keys": row["keys"],
            "speedup_over_1": speedup, "load_before": row["load_before"], "load_after": row["load_after"],
            "cpu": row["cpu"]}
        lines.append(f"| {row['backend']} | {row['space']} | {row['keys']} | {row['workers']} | "
                     f"{row['wall_s'] / 60:.1f} | {row['s_per_key']:.2f} | "
                     f"{'' if speedup is None else f'{speedup:.2f}x'} | "
                     f"{row['load_before'][0]:.2f} / {row['load_after'][0]:.2f} |")
    harness.write_yaml(out / "summary.yaml", summary)
    harness.write_lines(out / "summary.md", lines)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(build_in_this_process(argv[1], argv[2])))
        return
    parser = harness.study_parser(__doc__)
    harness.add_common(parser, out=OUT, work=WORK, force=True)
    parser.add_argument("--backend", action="append", choices=("torch", "onnxruntime", "litert", "executorch",
                                                               "openvino"),
                        help="runtime to build a table for (repeatable; default executorch and litert)")
    parser.add_argument("--space", default="mobilenetv3_small", help="search space (default %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="conversion processes per arm (default 1 2)")
    args = parser.parse_args(argv)
    harness.start(args)
    results = args.out / "results.jsonl"
    for backend in args.backend or BACKENDS:
        for workers in args.workers:
            done = [r for r in harness.read_rows([results]) if r["backend"] == backend
                    and r["space"] == args.space and r["workers"] == workers]
            if done and not args.force:
                harness.log(f"{_arm_name(backend, args.space, workers)}: recorded, skipped")
                continue
            harness.log(f"{_arm_name(backend, args.space, workers)}: building from empty caches")
            row = run_arm(backend, args.space, workers, args.work)
            harness.append_row(results, row)
            harness.log(f"{_arm_name(backend, args.space, workers)}: {row['wall_s'] / 60:.1f} min "
                        f"({row['s_per_key']:.2f} s a key)")
    summarize(harness.read_rows([results]), args.out)


if __name__ == "__main__":
    main()
