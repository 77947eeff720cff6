"""Timing named items (table keys, whole networks, empty models) through a deployment backend.

The harness's runtimes ``litert``, ``executorch`` and ``openvino`` (:mod:`nas.cost.backends`)
time converted artifacts. Converting costs seconds a unit (LiteRT, ExecuTorch) against
milliseconds of timing, so each item is converted once into a cache folder, beside a JSON
record of its :class:`~nas.cost.backends.Artifact`, and every pass, resumed build and later
run times the same file: a build stopped half way converts nothing twice.

Items are named as :class:`nas.cost.timing.ItemMeasurer` names them (a key, a spec string);
:func:`empty_name` names a backend's empty model for a unit's input and output shapes, whose
time a table built through a backend subtracts from each key (the per-call cost of the
runtime's Python API, paid once per network rather than once per op).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from nas.cost.harness import HarnessConfig

log = logging.getLogger(__name__)

EMPTY_PREFIX = "empty:"
#: Where a net figure (unit less its empty model) ends when the unit is no slower than the
#: empty model: a table holds positive milliseconds, and 1 us is below any op's kernel.
NET_FLOOR_MS = 0.001


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def empty_name(input_shape: Sequence[int], output_shape: Sequence[int]) -> str:
    """The item name of the empty model for these shapes (without batch):
    ``empty:16x32x32>24x16x16``."""
    return f"{EMPTY_PREFIX}{_shape_text(input_shape)}>{_shape_text(output_shape)}"


def parse_empty(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output shapes of an :func:`empty_name`."""
    inp, out = name[len(EMPTY_PREFIX):].split(">")
    return (tuple(int(s) for s in inp.split("x")), tuple(int(s) for s in out.split("x")))


def key_empty_name(key: str) -> str:
    """The empty model matching a table key's input and output shapes."""
    import torch

    from nas.cost.keys import build_op

    module, shape = build_op(key)
    with torch.no_grad():
        out = module(torch.zeros((1, *shape))).shape[1:]
    return empty_name(shape, out)


class with_empty_models:  # noqa: N801 - used as a function; a class so workers can unpickle it
    """``build(name)`` that also builds :func:`empty_name` items (the backend's empty model)."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        self.build = build

    def __call__(self, name: str):
        from nas.cost.backends import baseline_module

        if name.startswith(EMPTY_PREFIX):
            inp, out = parse_empty(name)
            return baseline_module(inp, out), inp
        return self.build(name)


class BackendItems:
    """Convert named items once (cached on disk) and time them with the backend's sampler."""

    def __init__(self, build: Callable[[str], Any], cfg: HarnessConfig, *, cache_dir: str | Path,
                 file_stem: Callable[[str], str]) -> None:
        from nas.cost.backends import BackendConfig, get_backend

        self.backend = get_backend(cfg.runtime)
        self.cfg = cfg
        self.backend_cfg = BackendConfig.from_harness(cfg)
        self.build = build
        self.file_stem = file_stem
        self.cache_dir = Path(cache_dir)
        # One folder per runtime version: an artifact converted by another release is stale.
        self.folder = Path(cache_dir) / f"{self.backend.name}-{self.backend.version()}"
        self.artifacts: dict[str, Any] = {}

    def _paths(self, name: str) -> tuple[Path, Path]:
        stem = f"{self.file_stem(name)}_b{self.cfg.batch}_s{self.cfg.seed}"
        return self.folder / stem, self.folder / f"{stem}.artifact.json"

    def artifact(self, name: str):
        """The item's artifact: read from the cache, else converted now (and cached).

        Raises :class:`nas.cost.backends.ConversionError` naming the item, the runtime and
        the converter's reason."""
        cached = self._cached(name)
        if cached is not None:
            return cached
        import torch

        target, record = self._paths(name)

        torch.manual_seed(self.cfg.seed)
        module, shape = self.build(name)
        artifact = self.backend.export(module, shape, target, cfg=self.backend_cfg, unit=name)
        data = {"backend": artifact.backend, "unit": artifact.unit, "path": str(artifact.path),
                "input_shape": list(artifact.input_shape), "batch": artifact.batch,
                "convert_s": artifact.convert_s, "details": artifact.details}
        tmp = record.with_name(record.name + f".partial{os.getpid()}")
        tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
        tmp.replace(record)  # the record last: an artifact without one is converted again
        self.artifacts[name] = artifact
        return artifact

    def _cached(self, name: str):
        """The item's artifact if it was converted before (this run or an earlier one)."""
        from nas.cost.backends import Artifact

        if name in self.artifacts:
            return self.artifacts[name]
        _, record = self._paths(name)
        if not record.is_file():
            return None
        data = json.loads(record.read_text(encoding="utf-8"))
        artifact = Artifact(**{**data, "path": Path(data["path"]), "input_shape": tuple(data["input_shape"])})
        if not artifact.path.exists():
            return None
        self.artifacts[name] = artifact
        return artifact

    def prepare(self, names: Iterable[str], progress: bool = False) -> None:
        """Convert every item not yet in the cache, before any timing starts: in a pool of
        worker processes when there are enough of them (:mod:`nas.cost.parallel_convert`)."""
        from nas.cost.parallel_convert import convert_in_pool, picklable, pool_size

        todo = [n for n in dict.fromkeys(names) if self._cached(n) is None]
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"convert ({self.backend.name})", unit="unit", leave=False)
        workers = pool_size(len(todo))
        make_items = functools.partial(BackendItems, self.build, self.cfg, cache_dir=self.cache_dir,
                                       file_stem=self.file_stem)
        if workers > 1 and not picklable(make_items):
            log.info("converting %d item(s) in this process: its item builder cannot be sent to "
                     "worker processes", len(todo))
            workers = 1
        try:
            if workers > 1:
                convert_in_pool(todo, workers, make_items,
                                done=(lambda _name: bar.update(1)) if bar is not None else None)
            for name in todo:
                self.artifact(name)  # read back from the cache the workers filled
                if bar is not None and workers == 1:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def sampler(self, name: str) -> Callable[[int], float]:
        """A ``sample(number)`` of one item in a session of its own (the backend's sampler)."""
        artifact = self.artifact(name)
        return self.backend.sampler(artifact, artifact.input_shape, self.backend_cfg)

    def __call__(self, name: str) -> dict[str, Any]:
        """:func:`nas.cost.sampling.run_samples` statistics of one item."""
        from nas.cost.sampling import run_samples

        return run_samples(self.sampler(name), **self.cfg.sampling())

    def provenance(self, name: str) -> dict[str, Any]:
        """The backend's provenance with the item's artifact (delegate coverage included)."""
        return self.backend.provenance(self.backend_cfg, self.artifact(name))


def net_figures(unit: dict[str, Any], empty: dict[str, Any]) -> dict[str, Any]:
    """A key's figures less its empty model's: ``ms`` becomes the net figure (at least
    :data:`NET_FLOOR_MS`, or the unit's own figure where that is smaller, so the net never
    exceeds what was measured); ``raw_ms`` keeps the unit's own and ``baseline_ms`` the empty
    model's (the other columns stay the unit's end-to-end statistics)."""
    raw, base = float(unit["ms"]), float(empty["ms"])
    net = max(raw - base, min(raw, NET_FLOOR_MS))
    return {**unit, "ms": net, "raw_ms": raw, "baseline_ms": base}


def merge_coverage(coverage: dict[str, Any] | None,
                   details: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Add the delegate coverage of newly measured keys (``key -> artifact details``) to a
    table's record: how many keys one delegate partition runs entirely, which operators ran
    outside it (counted in keys) and the first keys that were not fully delegated."""
    details = {k: v for k, v in details.items() if "fully_delegated" in v}
    if not details:  # the runtime has no delegate to fall back from (OpenVINO's CPU plugin)
        return coverage
    out = dict(coverage or {"keys": 0, "fully_delegated": 0, "undelegated_ops": {},
                            "not_fully_delegated": []})
    ops = Counter(out.get("undelegated_ops") or {})
    partial = list(out.get("not_fully_delegated") or [])
    for key, info in details.items():
        out["keys"] = int(out.get("keys", 0)) + 1
        if info["fully_delegated"]:
            out["fully_delegated"] = int(out.get("fully_delegated", 0)) + 1
        else:
            if len(partial) < 50:
                partial.append(key)
            ops.update({op: 1 for op in info.get("undelegated_ops") or {}})
    out["undelegated_ops"] = dict(sorted(ops.items()))
    out["not_fully_delegated"] = partial
    return out


__all__ = ["BackendItems", "EMPTY_PREFIX", "NET_FLOOR_MS", "empty_name",
           "key_empty_name", "merge_coverage", "net_figures", "parse_empty", "with_empty_models"]
