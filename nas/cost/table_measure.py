"""Measuring a latency table's keys with the harness (the build half of the table)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from nas._io import now_iso
from nas.arch.spec import NetworkSpec
from nas.cost import sampling
from nas.cost.backend_items import key_empty_name, merge_coverage, net_figures, with_empty_models
from nas.cost.harness import HarnessConfig
from nas.cost.key_hosts import cover_hosts, synthetic_host
from nas.cost.keys import SpecsOrSpace, build_op, parse_key, spec_key_tuple
from nas.cost.timing import item_measurer
from nas.cost.table_files import (
    LOG_COLUMNS,
    LOG_FILE,
    LatencyTableError,
    as_list,
    read_log,
    spec_id,
)


class TableMeasuring:
    """The measuring half of :class:`~nas.cost.lut.LatencyTable`: build and extend a table
    with the one harness, resumably (each key saved as it is measured)."""

    # ------------------------------------------------------------------ measuring
    def build(self, specs_or_space: SpecsOrSpace, harness: HarnessConfig | None = None, *,
              progress: bool = True, save_to: str | Path | None = None,
              callback: Callable[[int, int, str], None] | None = None) -> list[str]:
        """Measure the keys ``specs_or_space`` needs that the table lacks (resumable)."""
        items = as_list(specs_or_space)
        from nas.arch.space import SearchSpace

        for item in items:
            if isinstance(item, SearchSpace):
                self.check_compatible(resolution=item.base.resolution)
                if item.name not in self._provenance.setdefault("spaces", []):
                    self._provenance["spaces"].append(item.name)
        return self.measure(self.missing_keys(items), harness, progress=progress,
                            save_to=save_to, hosts=items, callback=callback)

    def measure(self, keys: Iterable[str], harness_cfg: HarnessConfig | None = None, *,
                progress: bool = True, save_to: str | Path | None = None,
                hosts: Iterable[Any] | None = None, passes: int | None = None,
                callback: Callable[[int, int, str], None] | None = None) -> list[str]:
        """Measure ``keys`` with ``harness_cfg`` (default: the table's own harness) and add them.

        ``hosts`` (spaces or specs) are the networks to time the keys in under the
        ``context`` method; keys no host covers get a synthetic host. Every unit of work
        is appended to ``save_to/measurements.csv`` as soon as it is done and the table is
        saved to ``save_to`` at the end, so an interrupted call repeated with the same
        arguments measures only what is left. ``callback(done, total, unit)`` runs after
        each unit. Returns the keys added.
        """
        keys = list(dict.fromkeys(keys))
        for key in keys:
            parse_key(key)
        if not keys:
            if save_to is not None:
                self.save(save_to)
            return []
        cfg = harness_cfg or self.harness_config()
        if self._provenance.get("source") != "measured here" and harness_cfg is None:
            raise LatencyTableError(
                "this table was imported from another device; measuring missing keys here "
                "would mix devices -- pass a harness explicitly if that is intended")
        self.check_compatible(runtime=cfg.runtime, threads=cfg.threads, batch=cfg.batch,
                              dtype=cfg.dtype)
        method = self._provenance.get("method", "context")
        passes = passes or cfg.passes
        save_dir = Path(save_to) if save_to is not None else None
        log_path = save_dir / LOG_FILE if save_dir is not None else None
        # Tables measured through a deployment backend time each key's empty model too (in
        # the same interleaved passes) and store the key's figure net of it.
        net = bool(self._provenance.get("net_of_empty_model"))
        empties = {k: key_empty_name(k) for k in keys} if net else {}
        units = self._units(keys + sorted(set(empties.values())), hosts or [], method, passes, cfg.seed)
        measure_one = None
        if method == "isolated":
            measure_one = item_measurer(with_empty_models(build_op) if net else build_op, cfg)
        started = time.perf_counter()
        load_start = sampling.loadavg()
        rows = self._run_units(units, set(keys) | set(empties.values()), cfg, method, log_path,
                               progress, callback, measure_one)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_key.setdefault(row["key"], []).append(row)

        def figures_of(name: str) -> dict[str, Any]:
            if name not in by_key:  # pragma: no cover - every key has a unit
                raise RuntimeError(f"no measurement for {name}")
            return sampling.aggregate([{**r, "pass": i} for i, r in enumerate(by_key[name])],
                                      cfg.pass_statistic)

        added = []
        for key in keys:
            figures = figures_of(key)
            if net:
                figures = net_figures(figures, figures_of(empties[key]))
            figures["method"] = method
            self._set(key, figures)
            added.append(key)
        if measure_one is not None and measure_one.converted is not None:
            details = {k: measure_one.converted.artifact(k).details for k in added}
            coverage = merge_coverage(self._provenance.get("delegate_coverage"), details)
            if coverage is not None:
                self._provenance["delegate_coverage"] = coverage
        self._provenance.setdefault("builds", []).append({
            "date": now_iso(), "keys": len(added), "units": len(units),
            "wall_s": round(time.perf_counter() - started, 1),
            "loadavg_start": load_start, "loadavg_end": sampling.loadavg(),
            "harness": cfg.to_dict(),
        })
        if save_dir is not None:
            self.save(save_dir)
            if log_path is not None and log_path.is_file():
                log_path.unlink()
        return added

    def _units(self, keys: list[str], hosts: Iterable[Any], method: str, passes: int,
               seed: int) -> list[tuple[str, Any]]:
        """The work list: ``(unit id, payload)``; ids are stable so a rerun can skip them."""
        from nas.arch.space import SearchSpace

        if method == "isolated":
            rng = random.Random(seed)
            units = []
            for p in range(passes):
                order = list(keys)
                rng.shuffle(order)
                units.extend((f"iso:{k}:p{p}", k) for k in order)
            return units
        wanted = set(keys)
        covered: set[str] = set()
        units = []
        specs: list[NetworkSpec] = []
        for item in as_list(hosts):
            if isinstance(item, SearchSpace):
                for i, host in enumerate(cover_hosts(item, wanted, passes, seed=seed)):
                    units.append((f"ctx:{item.name}:{i}:{spec_id(host)}", host))
                    covered.update(spec_key_tuple(host))
            elif isinstance(item, NetworkSpec):
                specs.append(item.resolved())
        specs = [s for s in dict.fromkeys(specs) if wanted & set(spec_key_tuple(s))]
        rng = random.Random(seed)
        for p in range(passes):
            order = list(specs)
            rng.shuffle(order)
            units.extend((f"ctx:spec:{spec_id(s)}:p{p}", s) for s in order)
        for s in specs:
            covered.update(spec_key_tuple(s))
        rest = [k for k in keys if k not in covered]
        for p in range(passes):
            units.extend((f"ctx:synthetic:{k}:p{p}", synthetic_host(k)) for k in rest)
        return units

    def _run_units(self, units, wanted: set[str], cfg: HarnessConfig, method: str,
                   log_path: Path | None, progress: bool, callback, measure_one):
        from nas.cost.harness import harness_context
        from nas.cost.timing import measure_in_context

        done_rows = read_log(log_path) if log_path is not None else []
        done_units = {r["unit"] for r in done_rows}
        rows = [r for r in done_rows if r["key"] in wanted]
        todo = [(uid, payload) for uid, payload in units if uid not in done_units]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="unit",
                       desc=f"latency table ({method}, {cfg.runtime})")
        handle = writer = None
        if log_path is not None and todo:
            handle, writer = sampling.open_csv_log(log_path, LOG_COLUMNS)
        if measure_one is not None:
            measure_one.prepare([payload for _, payload in todo], progress=progress)
        try:
            with harness_context(cfg):
                for i, (uid, payload) in enumerate(todo, start=1):
                    stamp = {"loadavg": (sampling.loadavg() or [""])[0], "time": now_iso()}
                    if method == "isolated":
                        results = [(payload, measure_one(payload))]
                    else:
                        _, per_op = measure_in_context(payload, cfg)
                        results = [(k, t.to_dict()) for k, t in per_op]
                    new_rows = [{"unit": uid, "key": k, "median_ms": s["median_ms"],
                                 "min_ms": s["min_ms"],
                                 "iqr_ms": s["iqr_ms"], "mean_ms": s["mean_ms"], "n": s["n"], **stamp}
                                for k, s in results if k in wanted]
                    rows.extend(new_rows)
                    if writer is not None:
                        if not new_rows:  # record the unit as done even if it added nothing
                            new_rows = [{"unit": uid, "key": "", "median_ms": 0, "min_ms": 0, "iqr_ms": 0,
                                         "mean_ms": 0, "n": 0, **stamp}]
                        writer.writerows(new_rows)
                        handle.flush()
                    if bar is not None:
                        bar.update(1)
                    if callback is not None:
                        callback(i, len(todo), uid)
        finally:
            if handle is not None:
                handle.close()
            if bar is not None:
                bar.close()
        return rows
