"""Latency tables for devices without torch: export the ops, time them there, import.

Round trip::

    nas-lut export-ops --space mobilenetv3_small --out ops_small/      # here
    # copy ops_small/ (ONNX files, manifest.json, manifest.csv, ort_runner.py, sampling.py) to the board
    python ort_runner.py ops_small/ --threads 1 --out table.csv        # on the board
    nas-lut import table.csv --out latency_tables/board-ort-1t/        # here again

:func:`export_ops` writes one standalone ONNX file per latency key (stem, every bneck
key, last conv, pool, head) with :func:`nas.models.export.export_module`, a manifest mapping key
-> file and input shape (JSON for the runner, CSV for people), and a copy of
``ort_runner.py``. :func:`import_runner_csv` turns the runner's CSV into a
:class:`~nas.cost.lut.LatencyTable` whose provenance comes from the runner (device, CPU
model, onnxruntime version, threads, harness settings) with method ``isolated``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from nas._io import now_iso
from nas.cost import kit_runner, ort_runner, sampling
from nas.cost.keys import build_op, keys_for, parse_key
from nas.cost.lut import LatencyTable
from nas.cost.offhost_kits import check_kit, table_from_kit_csv
from nas.cost.table_files import SCHEMA_VERSION, LatencyTableError

RUNNER_SOURCE = Path(ort_runner.__file__)
SAMPLING_SOURCE = Path(sampling.__file__)


def export_ops(
    specs_or_space: Any,
    out_dir: str | Path,
    *,
    batch: int = 1,
    progress: bool = True,
    keys: Iterable[str] | None = None,
    exporter: str = "torchscript",
) -> Path:
    """Export every key the items need as ONNX into ``out_dir``; returns the manifest path.

    Files already exported are kept (an interrupted export resumes). ``keys`` adds or
    restricts to explicit keys. ``exporter`` picks :func:`nas.models.export.export_module`'s
    exporter (default ``torchscript``: graphs tested equivalent to dynamo's, much faster).
    """
    import torch

    from nas.cost.harness import HarnessConfig
    from nas.cost.samplers import export_for_ort
    from nas.arch.space import SearchSpace

    out_dir = Path(out_dir)
    items = [specs_or_space] if not isinstance(specs_or_space, (list, tuple)) else list(specs_or_space)
    wanted = keys_for(items) if items else []
    if keys is not None:
        wanted = list(dict.fromkeys([*wanted, *keys]))
    if not wanted:
        raise LatencyTableError("nothing to export: no space, spec or key given")
    resolutions = sorted({i.base.resolution if isinstance(i, SearchSpace) else i.resolution
                          for i in items if not isinstance(i, str)})
    (out_dir / "ops").mkdir(parents=True, exist_ok=True)
    cfg = HarnessConfig(runtime="onnxruntime", batch=batch, onnx_exporter=exporter)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(wanted), desc="export ops", unit="op")
    ops = []
    try:
        for key in wanted:
            path = out_dir / "ops" / f"{key}.onnx"
            module, shape = build_op(key)
            if not path.is_file():
                torch.manual_seed(0)
                tmp = path.with_name(path.stem + ".partial.onnx")
                export_for_ort(module, shape, cfg, tmp)
                tmp.replace(path)
            ops.append({"key": key, "file": f"ops/{key}.onnx", "input_name": "input",
                        "input_shape": [batch, *shape], **parse_key(key).as_row()})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    manifest = {
        "manifest_schema": ort_runner.MANIFEST_SCHEMA,
        "table_schema": SCHEMA_VERSION,
        "created": now_iso(),
        "batch": batch,
        "dtype": "float32",
        "resolution": resolutions[0] if len(resolutions) == 1 else resolutions,
        "spaces": [i.name for i in items if isinstance(i, SearchSpace)],
        "torch_version": torch.__version__,
        "exporter": f"nas.models.export.export_module (torch.onnx {exporter}, native HardSwish)",
        "onnx_exporter": exporter,
        "ops": ops,
    }
    (out_dir / ort_runner.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["key", "file", "input_shape"], extrasaction="ignore")
        writer.writeheader()
        for op in ops:
            writer.writerow({**op, "input_shape": "x".join(str(s) for s in op["input_shape"])})
    shutil.copyfile(RUNNER_SOURCE, out_dir / "ort_runner.py")
    shutil.copyfile(SAMPLING_SOURCE, out_dir / "sampling.py")  # the statistics it imports
    return out_dir / ort_runner.MANIFEST_NAME


def import_runner_csv(csv_path: str | Path, out_dir: str | Path | None = None, *,
                      kit_dir: str | Path | None = None) -> LatencyTable:
    """A table from the CSV of ``ort_runner.py`` or ``kit_runner.py`` (provenance from the
    runner); saved to ``out_dir``. With ``kit_dir`` the CSV must come from that kit."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise LatencyTableError(f"{csv_path}: no such file")
    try:
        runner, rows = ort_runner.read_result_csv(csv_path)
    except UnicodeDecodeError as err:
        raise LatencyTableError(f"{csv_path}: not a text file (undecodable byte at offset "
                                f"{err.start}); expected the CSV that ort_runner.py writes") from None
    except (ValueError, json.JSONDecodeError) as err:
        message = str(err)
        raise LatencyTableError(message if str(csv_path) in message else f"{csv_path}: {message}") from None
    formats = (ort_runner.RUNNER_FORMAT, kit_runner.RUNNER_FORMAT)
    if runner.get("format") not in formats:
        raise LatencyTableError(f"{csv_path}: written by runner format {runner.get('format')!r}, "
                                f"this code imports {' or '.join(formats)}")
    from_kit = runner["format"] == kit_runner.RUNNER_FORMAT
    if kit_dir is not None:
        if not from_kit:
            raise LatencyTableError(f"{csv_path}: written by ort_runner.py for an ONNX kit, "
                                    f"not by kit_runner.py for the kit in {kit_dir}")
        check_kit(csv_path, runner, kit_dir)
    resolution = runner.get("resolution")
    if not isinstance(resolution, int):
        raise LatencyTableError(f"{csv_path}: the runner records resolution {resolution!r}; a "
                                "table holds one input resolution (export one resolution)")
    device = runner.get("device", {})
    harness = dict(runner.get("harness", {}))
    harness.update({"runtime": "onnxruntime", "threads": runner.get("threads"),
                    "batch": runner.get("batch"), "dtype": runner.get("dtype", "float32"),
                    "ort_opt_level": runner.get("graph_optimization_level", "all"),
                    # End-to-end checks of this table export networks the way its ops were.
                    "onnx_exporter": runner.get("onnx_exporter") or "dynamo"})
    provenance = {
        "schema_version": SCHEMA_VERSION,
        "runtime": "onnxruntime",
        "runtime_version": runner.get("runtime_version"),
        "execution_provider": runner.get("execution_provider"),
        "device": device.get("cpu_model", "unknown"),
        "host": device,
        "threads": runner.get("threads"),
        "batch": runner.get("batch"),
        "dtype": runner.get("dtype", "float32"),
        "resolution": resolution,
        "harness": harness,
        "method": "isolated",
        "statistic": sampling.STATISTIC_TEXT.get(harness.get("pass_statistic", "median"),
                                                 str(harness.get("statistic"))),
        "source": "imported from ort_runner.py",
        "imported": now_iso(),
        "runner": runner,
        "created": runner.get("date"),
        "spaces": list(runner.get("spaces") or []),
    }
    if from_kit:
        table = table_from_kit_csv(csv_path, runner, rows, provenance)
        if out_dir is not None:
            table.save(out_dir)
        return table
    table = LatencyTable(provenance)
    for row in rows:
        figures = {k: row.get(k) for k in ("median_ms", "q25_ms", "min_ms", "iqr_ms",
                                            "mean_ms", "n", "passes", "pass_spread_ms",
                                            "loadavg", "measured_at")}
        table.set_entry(row["key"], float(row["ms"]), method="isolated", **figures)
    if out_dir is not None:
        table.save(out_dir)
    return table


__all__ = ["export_ops", "import_runner_csv"]
