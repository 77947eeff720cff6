"""Off-host kits for the deployment backends (``nas-lut export-ops --backend NAME``).

:func:`export_kit` converts every latency key a space needs, and the backend's empty model
for each key's input and output shapes, with :mod:`nas.cost.backends` (the converters
``nas-lut build --backend`` uses), and writes a manifest and ``kit_runner.py`` (with
``ort_runner.py`` and ``sampling.py``, which it imports). :func:`table_from_kit_csv` turns
the runner's CSV into a table that reads like one built here: runtime named by the backend,
``ms`` net of the empty model, ``raw_ms`` and ``baseline_ms`` kept, ``net_of_empty_model``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nas._io import now_iso
from nas.cost import kit_runner, ort_runner, sampling
from nas.cost.backend_items import (
    EMPTY_PREFIX,
    key_empty_name,
    merge_coverage,
    net_figures,
    parse_empty,
    with_empty_models,
)
from nas.cost.keys import build_op, parse_key
from nas.cost.lut import LatencyTable
from nas.cost.table_files import SCHEMA_VERSION, LatencyTableError

KIT_BACKENDS = tuple(kit_runner.RUNTIME_MODULES)
RUNNER_FILES = (Path(kit_runner.__file__), Path(ort_runner.__file__), Path(sampling.__file__))


def unit_stem(name: str) -> str:
    """A file name for a key or empty model that any file system takes (no ``:`` or ``>``)."""
    if name.startswith(EMPTY_PREFIX):
        inp, out = parse_empty(name)
        return "empty_" + "x".join(map(str, inp)) + "_to_" + "x".join(map(str, out))
    return name


def _convert(backend: Any, name: str, out_dir: Path, cfg: Any) -> tuple[str, dict[str, Any]]:
    """Convert one unit unless already in the kit; returns its file (relative) and details."""
    import torch

    final = out_dir / "units" / (unit_stem(name) + backend.suffix)
    record = final.with_name(final.name + ".json")
    if record.is_file() and final.is_file():  # the record is written last: resume
        return final.relative_to(out_dir).as_posix(), json.loads(record.read_text())
    torch.manual_seed(cfg.seed)
    module, shape = with_empty_models(build_op)(name)
    partial = out_dir / "units" / ".partial"
    artifact = backend.export(module, shape, partial / final.stem, cfg=cfg, unit=name)
    for produced in partial.glob(final.stem + ".*"):  # OpenVINO's .xml has a .bin beside it
        produced.replace(final.with_name(produced.name))
    details = json.loads(json.dumps(artifact.details, default=str))
    record.write_text(json.dumps(details))
    return final.relative_to(out_dir).as_posix(), details


def export_kit(specs_or_space: Any, out_dir: str | Path, backend_name: str, *, batch: int = 1,
               keys: Iterable[str] | None = None, progress: bool = True) -> Path:
    """Convert every key the items need, and their empty models, into a kit; returns the
    manifest's path. Units already converted are kept (an interrupted export resumes)."""
    import torch

    from nas.arch.space import SearchSpace
    from nas.cost.backends import BackendConfig, get_backend
    from nas.cost.keys import keys_for

    if backend_name not in KIT_BACKENDS:
        raise LatencyTableError(f"no off-host kit for backend {backend_name!r}; choose one of: "
                                f"{', '.join(KIT_BACKENDS)}")
    backend = get_backend(backend_name)
    cfg = BackendConfig(batch=batch)
    out_dir = Path(out_dir)
    items = list(specs_or_space) if isinstance(specs_or_space, (list, tuple)) else [specs_or_space]
    wanted = list(dict.fromkeys([*keys_for(items), *(keys or [])])) if items or keys else []
    if not wanted:
        raise LatencyTableError("nothing to export: no space, spec or key given")
    resolutions = sorted({i.base.resolution if isinstance(i, SearchSpace) else i.resolution
                          for i in items if not isinstance(i, str)})
    empties = {key: key_empty_name(key) for key in wanted}
    names = [*wanted, *sorted(set(empties.values()))]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc=f"convert ({backend_name})", unit="unit")
    ops, details = [], {}
    for name in names:
        file, details[name] = _convert(backend, name, out_dir, cfg)
        shape = [batch, *with_empty_models(build_op)(name)[1]]
        if backend.io_layout == "NHWC" and len(shape) == 4:  # the layout the model is fed in
            shape = [shape[0], shape[2], shape[3], shape[1]]
        op: dict[str, Any] = {"key": name, "file": file, "input_shape": shape}
        if name in empties:
            op.update(baseline=empties[name], **parse_key(name).as_row())
        ops.append(op)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    record = backend.provenance(cfg)
    manifest = {
        "manifest_schema": ort_runner.MANIFEST_SCHEMA,
        "kit": kit_runner.KIT_FORMAT,
        "kit_id": hashlib.sha256(json.dumps(ops, sort_keys=True).encode()).hexdigest()[:16],
        "table_schema": SCHEMA_VERSION,
        "created": now_iso(),
        "runtime": backend_name,
        "runtime_package": record["runtime"],
        "runtime_version": record["runtime_version"],
        **{k: record.get(k) for k in ("converter", "converter_version", "delegate",
                                      "precision", "io_layout")},
        "batch": batch, "dtype": "float32",
        "resolution": resolutions[0] if len(resolutions) == 1 else resolutions,
        "spaces": [i.name for i in items if isinstance(i, SearchSpace)],
        "torch_version": torch.__version__,
        "delegate_coverage": merge_coverage(None, {k: details[k] for k in wanted}),
        "ops": ops,
    }
    (out_dir / ort_runner.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    for source in RUNNER_FILES:
        shutil.copyfile(source, out_dir / source.name)
    return out_dir / ort_runner.MANIFEST_NAME


def check_kit(csv_path: Path, runner: dict[str, Any], kit_dir: str | Path) -> None:
    """Refuse a CSV measured with another kit than the one in ``kit_dir``."""
    manifest_path = Path(kit_dir) / ort_runner.MANIFEST_NAME
    try:
        manifest = kit_runner.load_kit(kit_dir)
    except kit_runner.KitError as err:  # the device-side runner's error, as the host's
        raise LatencyTableError(str(err)) from None
    kit = runner.get("kit") or {}
    if kit.get("kit_id") != manifest.get("kit_id"):
        raise LatencyTableError(
            f"{csv_path}: measured with kit {kit.get('kit_id')!r} ({kit.get('runtime')}), not "
            f"{manifest_path}'s kit {manifest.get('kit_id')!r} ({manifest.get('runtime')})")


def table_from_kit_csv(csv_path: Path, runner: dict[str, Any], rows: list[dict[str, str]],
                       base: dict[str, Any]) -> LatencyTable:
    """A table from ``kit_runner.py``'s CSV; ``base`` is the provenance every import shares."""
    kit = runner.get("kit") or {}
    backend = runner.get("runtime")
    by_key = {row["key"]: row for row in rows}
    baselines = {key: row for key, row in by_key.items() if key.startswith(EMPTY_PREFIX)}
    provenance = {
        **base,
        "runtime": backend, "backend": backend,
        "runtime_package": runner.get("runtime_package"),
        "runtime_version": runner.get("runtime_version"),
        **{k: kit.get(k) for k in ("converter", "converter_version", "io_layout", "torch_version")},
        "delegate": runner.get("delegate"), "precision": runner.get("precision"),
        "net_of_empty_model": True,
        "source": "imported from kit_runner.py",
    }
    provenance.pop("execution_provider", None)
    provenance["harness"] = {**base["harness"], "runtime": backend}
    if backend != "onnxruntime":  # the ONNX runner's settings mean nothing to other runtimes
        for setting in ("ort_opt_level", "onnx_exporter"):
            provenance["harness"].pop(setting, None)
    if kit.get("delegate_coverage"):
        provenance["delegate_coverage"] = kit["delegate_coverage"]
    table = LatencyTable(provenance)
    for key, row in by_key.items():
        if key.startswith(EMPTY_PREFIX):
            continue
        empty = baselines.get(key_empty_name(key))
        if empty is None:
            raise LatencyTableError(f"{csv_path}: key {key} has no empty-model row to subtract "
                                    "(a CSV cut short, or not from kit_runner.py)")
        figures = net_figures(row, empty)
        table.set_entry(key, figures.pop("ms"), method="isolated",
                        **{k: v for k, v in figures.items() if k != "key"})
    return table


__all__ = ["KIT_BACKENDS", "check_kit", "export_kit", "table_from_kit_csv", "unit_stem"]
