"""``latency.table=auto``: a latency table that belongs to this host, found or made.

A lookup table is a property of one machine (paper Sec. 4: the platform-aware search
measures latency on the target device). The shipped tables were measured on the project's
machine; on another CPU model or runtime version their figures drift (the docs' latency
page gives the measured drift). So the main job uses a shipped table
only where its provenance matches this host (:func:`nas.cost.host_check.host_mismatch`), and
otherwise measures this host's table for the keys the space needs, once, into the user's
cache (``$NAS_CACHE_DIR/tables/``, keyed by runtime, device, runtime version, harness and
space):

* a short harness (the shipped table's, with :data:`QUICK_PASSES` interleaved passes instead
  of 5-10) keeps a torch Small-space build under a minute; a deployment backend's, which
  converts every key first, takes about eight minutes on two cores;
* an end-to-end calibration on :data:`CALIBRATION_NETWORKS` networks of the space (as
  ``nas-lut build`` does by default) fits ``ms = a * sum + b``: an uncalibrated sum was
  14% off on the project's machine.

A runtime may ship one table per CPU model and space (:data:`SHIPPED_FOR_RUNTIME`;
ExecuTorch, the main job's default, ships Small's and Large's for the project's Intel Xeon
and AMD EPYC hosts): the first measured on this host that holds the space's keys is used.
Where none is, a deployment backend's host table (``latency.backend=litert``,
``executorch``, ``openvino``) is built the same way through the backend (each key converted and
timed as its own model, net of the runtime's empty model; the calibration networks converted
and timed whole), with the shipped table's harness or, for a runtime with none,
:data:`BACKEND_HARNESS`.

A later run of the same space on the same host reuses the cached table (a space whose
definition changed gets the keys it lacks measured, and a new calibration).
Two processes building the same table take turns (a file lock), so neither repeats work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nas._io import default_cache_dir
from nas.cost.harness import TORCH_RUNTIMES, HarnessConfig
from nas.cost.host_check import host_runtime_version, host_device, host_mismatch
from nas.cost.table_files import PROVENANCE_FILE, SHIPPED_TABLES_DIR, LatencyTableError

log = logging.getLogger(__name__)

AUTO = "auto"
#: The shipped tables tried, in order, for each runtime: a table belongs to the CPU model it
#: was measured on, so a runtime may ship one per host, and one per space (none ships for
#: torch-cuda). The first measured on this host that holds every key of the space is used.
SHIPPED_FOR_RUNTIME: dict[str, tuple[str, ...]] = {
    "torch-cpu": ("cpu-torch-1t-b1-224",),
    "onnxruntime": ("cpu-ort-1t-b1-224",),
    # One per space: a calibration fitted on both spaces' networks at once predicted Small's
    # 4.9% too slow; each table is calibrated on its own space's networks.
    "executorch": ("xeon-executorch-small-1t-b1-224", "xeon-executorch-large-1t-b1-224",
                   "epyc-executorch-small-1t-b1-224", "epyc-executorch-large-1t-b1-224"),
}
QUICK_PASSES = 3
CALIBRATION_NETWORKS = 12


@dataclass(frozen=True)
class TableChoice:
    """The table a run uses and, in words, why."""

    path: Path
    reason: str


def name_part(text: str, limit: int = 32) -> str:
    """``text`` as a file-name part: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:limit] or "unknown"


#: The harness of an isolated host table without a shipped one to copy (every deployment
#: backend; onnxruntime where its table is not installed): the shipped
#: isolated (ONNX Runtime) table's sampling, minimum over all samples as its figure (robust on
#: a shared machine), without SCHED_FIFO (a long build should not preempt the host's work).
BACKEND_HARNESS = {"pass_statistic": "min", "repeats": 10, "min_run_time": 0.05,
                   "max_run_time": 2.0, "warmup": 5, "warmup_time": 0.02}


def quick_harness(runtime: str, shipped: Any | None) -> HarnessConfig:
    """The shipped table's harness (same statistic, warm-up, allocator) with fewer passes."""
    if shipped is not None:
        settings = shipped.harness_config().to_dict()
    else:
        settings = dict(BACKEND_HARNESS) if runtime not in TORCH_RUNTIMES else {}
    return HarnessConfig.from_dict({**settings, "runtime": runtime, "passes": QUICK_PASSES})


def host_table_dir(harness: HarnessConfig, resolution: int, space_name: str,
                   cache_dir: Path | None = None) -> Path:
    """``<cache>/tables/<runtime>-<device>-<version>-r<res>-<space>-<hash>``: one folder per
    host, harness and space (each table's calibration is fitted on its own space's networks)."""
    device, version = host_device(harness.runtime), host_runtime_version(harness.runtime)
    identity = {"device": device, "version": version, "resolution": resolution,
                "space": space_name, "harness": harness.to_dict()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    name = (f"{harness.runtime}-{name_part(device)}-{name_part(version, 16)}-r{resolution}-"
            f"{name_part(space_name)}-{digest}")
    return Path(cache_dir or default_cache_dir()) / "tables" / name


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``folder`` (a second builder waits, then reuses)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Another process is measuring this table: say so, or the wait looks like a hang.
            log.info("waiting for another process measuring the latency table %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _calibrate_on(table: Any, space: Any, harness: HarnessConfig, progress: bool) -> str:
    from nas.cost.calibrate import CALIBRATION_SEED, calibrate, sample_specs

    specs = sample_specs(space, CALIBRATION_NETWORKS, CALIBRATION_SEED, allow_fewer=True)
    if len(specs) < 3:  # a line through fewer points says nothing
        return f"uncalibrated: the space has only {len(specs)} distinct network(s)"
    record = calibrate(table, specs, harness, progress=progress, label=f"seed {CALIBRATION_SEED}")
    return (f"calibrated on {record['n']} networks of {space.name} "
            f"(fit MAPE {record['fit_mape_pct']:.1f}%)")


def _matching_shipped(space: Any, runtime: str, resolution: int,
                      shipped_dir: Path) -> tuple[Any | None, str | None]:
    """The first shipped table for ``runtime`` measured on this host (``None`` as the reason),
    else the last one looked at (its harness is copied) and why none fits."""
    from nas.cost.lut import LatencyTable

    names = SHIPPED_FOR_RUNTIME.get(runtime, ())
    if not names:
        return None, f"no table ships for runtime {runtime!r}"
    shipped, reasons = None, []
    for name in names:
        if not (shipped_dir / name / PROVENANCE_FILE).is_file():
            reasons.append(f"the shipped table {name} is not installed")
            continue
        shipped = LatencyTable.load(shipped_dir / name)
        differences = host_mismatch(shipped.provenance)
        lacking = shipped.missing_keys(space) if shipped.resolution == resolution else []
        if differences:
            reasons.append(f"the shipped table {name} differs from this host: {'; '.join(differences)}")
        elif shipped.resolution != resolution:
            reasons.append(f"the shipped table {name} is for {shipped.resolution} px")
        elif lacking:
            reasons.append(f"the shipped table {name} lacks {len(lacking)} key(s) of {space.name}")
        else:
            return shipped, None
    return shipped, "; ".join(reasons)


def host_table(space: Any, *, runtime: str, resolution: int, cache_dir: Path | None = None,
               shipped_dir: Path = SHIPPED_TABLES_DIR, progress: bool = True) -> TableChoice:
    """The table ``latency.table=auto`` means for ``space`` on this host (see the module doc).

    Returns the shipped table for ``runtime`` when it was measured on this host's device and
    runtime version; otherwise this host's cached table, first measuring (and calibrating
    for) whatever keys of ``space`` it lacks.
    """
    from nas.cost.lut import LatencyTable, build_table

    shipped, why = _matching_shipped(space, runtime, resolution, shipped_dir)
    if why is None:
        return TableChoice(shipped.path, f"the shipped table {shipped.path.name} was measured on "
                                         "this host's device and runtime version")
    harness = quick_harness(runtime, shipped)
    folder = host_table_dir(harness, resolution, space.name, cache_dir)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LatencyTableError(f"cannot create the latency-table cache {folder.parent} ({err}); "
                                "set NAS_CACHE_DIR to a writable folder or pin a table with "
                                "latency.table=<folder>") from None
    with _locked(folder):
        existing = LatencyTable.load(folder, allow_empty=True) if (folder / PROVENANCE_FILE).is_file() else None
        missing = existing.missing_keys(space) if existing is not None else None
        if existing is not None and not missing and existing.calibration:
            return TableChoice(folder, f"this host's table, cached ({why})")
        count = len(missing) if missing is not None else "the"
        log.info("measuring %s latency key(s) of %s on this host into %s (%d passes), then an "
                 "end-to-end calibration; %s", count, space.name, folder, QUICK_PASSES, why)
        table = build_table(space, folder, harness, resolution=resolution, progress=progress,
                            note="built by latency.table=auto for this host")
        calibration = _calibrate_on(table, space, harness, progress)
        table.save(folder)
    return TableChoice(folder, f"measured on this host now, {calibration} ({why})")


__all__ = ["AUTO", "BACKEND_HARNESS", "CALIBRATION_NETWORKS", "QUICK_PASSES", "SHIPPED_FOR_RUNTIME", "TableChoice",
           "host_table", "host_table_dir", "quick_harness"]
