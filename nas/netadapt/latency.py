"""The latency NetAdapt steers by: the lookup table, optionally anchored per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from nas._io import now_iso
from nas.arch.spec import NetworkSpec
from nas.config import check_choice
from nas.netadapt.config import NetAdaptError


# ---------------------------------------------------------------------------- latency
class Latency(Protocol):
    """Milliseconds of a spec (a lookup table, possibly measuring what it lacks)."""

    def __call__(self, spec: NetworkSpec) -> float: ...


MEASURE_MODES = ("table", "anchored")


class TableLatency:
    """A :class:`~nas.cost.lut.LatencyTable` as NetAdapt's latency model.

    Missing keys raise :class:`~nas.cost.table_files.MissingKeysError`, or, with
    ``measure_missing``, are measured on demand with ``harness`` (default: the table's
    own) in the network that needs them, and saved to ``save_to`` at once, so a resumed
    run predicts what the interrupted one predicted. Two ways to measure:

    * ``mode="table"``: the table's own measurement (:meth:`~nas.cost.lut.LatencyTable.measure`,
      timed in the network that needs the keys);
    * ``mode="anchored"``: the same in-context timing
      (:func:`nas.cost.timing.measure_in_context`, ``harness.passes`` passes), but each new
      key is scaled by the median ratio *table figure / figure measured now* of the keys of
      the same network the table already holds. A proposal's saving is the difference
      between a key measured now and one measured earlier; on a machine whose speed drifts
      (shared cores: 30% between runs minutes apart was seen on these machines) that difference is
      mostly drift, and NetAdapt's "largest count that meets the cut" degenerates into
      picking a lucky measurement. Anchoring to keys timed in the same forward passes
      cancels the common-mode drift.
    """

    def __init__(self, table: Any, *, measure_missing: bool = False, harness: Any = None,
                 save_to: str | Path | None = None, mode: str = "table") -> None:
        check_choice("latency", "measure", mode, MEASURE_MODES, error=NetAdaptError)
        self.table = table
        self.measure_missing = measure_missing
        self.harness = harness
        self.save_to = Path(save_to) if save_to is not None else None
        self.mode = mode
        self.measured = 0

    def __call__(self, spec: NetworkSpec) -> float:
        before = len(self.table)
        missing = self.table.missing_keys(spec) if self.measure_missing else []
        if missing and self.mode == "anchored":
            self._measure_anchored(spec, missing)
        elif missing:
            self.table.measure(missing, self.harness, progress=False, save_to=self.save_to,
                               hosts=[spec])
        ms = self.table.predict(spec)
        self.measured += len(self.table) - before
        return float(ms)

    def _measure_anchored(self, spec: NetworkSpec, missing: list[str]) -> None:
        import statistics

        from nas.cost.harness import harness_context
        from nas.cost.sampling import aggregate, loadavg
        from nas.cost.table_files import LatencyTableError
        from nas.cost.timing import measure_in_context

        if self.harness is None and self.table.provenance.get("source") != "measured here":
            raise LatencyTableError("this table was imported from another device; measuring "
                                    "missing keys here would mix devices -- pass a harness")
        cfg = self.harness or self.table.harness_config()
        # Per-pass rows combined exactly as a table build combines them (``cfg.pass_statistic``:
        # the shipped tables use the minimum), so new keys and the anchors agree in kind.
        per_pass: dict[str, list[dict[str, float]]] = {}
        with harness_context(cfg):
            for _ in range(cfg.passes):
                _, ops = measure_in_context(spec.resolved(), cfg)
                for key, timing in ops:
                    per_pass.setdefault(key, []).append(
                        {"median_ms": timing.median_ms, "min_ms": timing.min_ms,
                         "iqr_ms": timing.iqr_ms, "mean_ms": timing.mean_ms, "n": timing.n})
        figures = {k: aggregate(rows, cfg.pass_statistic) for k, rows in per_pass.items()}
        now = {k: f["ms"] for k, f in figures.items()}
        known = [k for k in now if k in self.table and now[k] > 0]
        ratio = statistics.median(self.table.ms(k) / now[k] for k in known) if known else 1.0
        load = (loadavg() or [""])[0]
        stamp = now_iso()
        for key in missing:
            f = figures[key]
            self.table.set_entry(key, f["ms"] * ratio, iqr_ms=f["iqr_ms"] * ratio,
                                 mean_ms=f["mean_ms"] * ratio, n=f["n"], passes=cfg.passes,
                                 pass_spread_ms=f["pass_spread_ms"] * ratio,
                                 loadavg=load, measured_at=stamp, method="context-anchored")
        self.table.provenance.setdefault("builds", []).append({
            "date": stamp, "keys": len(missing), "method": "context-anchored (nas.netadapt.latency)",
            "anchor_ratio": round(ratio, 4), "anchor_keys": len(known), "loadavg": load,
            "passes": cfg.passes, "threads": cfg.threads})
        if self.save_to is not None:
            self.table.save(self.save_to)
