"""The one timing harness: every latency figure in the project comes from :func:`measure`.

Three runtimes, one statistics code (:func:`nas.cost.sampling.run_samples`, shared with the
off-host runner so a board computes its figures the same way):

* ``torch-cpu``: torch eager on CPU under ``torch.inference_mode``, with a fixed intra-op
  thread count (set for the measurement and restored after; one thread is the stable
  setting on a shared machine: two threads under load measured far noisier);
* ``torch-cuda``: the same module on the GPU, each sample bracketed by CUDA events and a
  synchronisation;
* ``onnxruntime``: the module exported with :func:`nas.models.export.export_module` (native
  HardSwish) to a temporary file, timed in an onnxruntime CPU session with fixed
  intra-op threads.

A measurement warms up (``warmup`` calls and ``warmup_time`` seconds), then collects samples
until it has ``repeats`` of them *and* ``min_run_time`` has passed (or ``max_run_time``),
and reports the median and interquartile range of the per-call times. Batch size, dtype
and threads are parameters of :class:`HarnessConfig`; the input resolution is part of the
``input_shape`` passed to :func:`measure`.

Figures that feed a table or a validation are measured in interleaved passes
(:func:`measure_interleaved`): every item once per pass, in a shuffled order, the figure
being the median of the per-pass medians, so a drift of the machine's speed does not bias
the items measured during the slow minutes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from nas.cost import sampling
from nas.cost.harness import (
    BACKEND_RUNTIMES,
    TORCH_RUNTIMES,
    HarnessConfig,
    HarnessError,
    Timing,
    harness_context,
    torch_dtype,
)
from nas.cost.sampling import pinned_cpu, realtime_priority, run_samples
from nas.cost.samplers import example_input, export_for_ort, ort_sampler, torch_sampler


# ---------------------------------------------------------------------------- measuring
def measure(module, input_shape: Sequence[int], cfg: HarnessConfig | None = None) -> Timing:
    """Time ``module`` on a random input of shape ``(cfg.batch, *input_shape)``.

    ``input_shape`` excludes the batch dimension (``(3, 224, 224)`` for a network). For
    onnxruntime and the deployment backends the module is exported to a temporary file first.
    """
    cfg = cfg or HarnessConfig()
    if cfg.runtime in BACKEND_RUNTIMES:
        from nas.cost.backends import BackendConfig, measure as backend_measure

        with harness_context(cfg):
            return backend_measure(cfg.runtime, module, input_shape, BackendConfig.from_harness(cfg),
                                   settings=cfg.sampling(), baseline=False).timing
    with harness_context(cfg):
        if cfg.runtime == "onnxruntime":
            with tempfile.TemporaryDirectory(prefix="nas-ort-") as tmp:
                path = export_for_ort(module, input_shape, cfg, Path(tmp) / "module.onnx")
                stats = run_samples(ort_sampler(path, input_shape, cfg), **cfg.sampling())
        else:
            stats = run_samples(torch_sampler(module, input_shape, cfg), **cfg.sampling())
    return Timing.from_stats(stats)


def measure_onnx(path: str | Path, input_shape: Sequence[int], cfg: HarnessConfig) -> Timing:
    """Time an already exported ONNX file with onnxruntime (``cfg.runtime`` must say so)."""
    if cfg.runtime != "onnxruntime":
        raise HarnessError(f"measure_onnx needs runtime onnxruntime, got {cfg.runtime}")
    with pinned_cpu(cfg.pin_cpu), realtime_priority(cfg.realtime):
        stats = run_samples(ort_sampler(path, input_shape, cfg), **cfg.sampling())
    return Timing.from_stats(stats)


Builder = Callable[[str], "tuple[Any, Sequence[int]]"]


def default_onnx_cache() -> Path:
    """Where exported ONNX files are kept between runs (``$NAS_LUT_CACHE`` or ~/.cache)."""
    root = os.environ.get("NAS_LUT_CACHE") or Path.home() / ".cache" / "nas-lut"
    return Path(root) / "onnx"


class ItemMeasurer:
    """``measure_one(name)`` for :func:`nas.cost.ort_runner.run_passes`.

    ``build(name)`` returns ``(module, input_shape)``; modules are built anew for each
    measurement (with a fixed seed), so a long interleaved run holds one at a time. For
    onnxruntime each item is exported once into ``onnx_dir`` (default
    :func:`default_onnx_cache`), named by item and batch, and the file is reused by later
    passes and later runs; :meth:`prepare` exports everything before timing starts.
    """

    def __init__(self, build: Builder, cfg: HarnessConfig, *, onnx_dir: str | Path | None = None) -> None:
        self.build = build
        self.cfg = cfg
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else default_onnx_cache()
        self.shapes: dict[str, Sequence[int]] = {}
        self.converted = None
        if cfg.runtime in BACKEND_RUNTIMES:
            from nas.cost.backend_items import BackendItems

            # Converted artifacts live beside the ONNX cache (or in the folder given).
            root = self.onnx_dir.parent if onnx_dir is None else self.onnx_dir
            self.converted = BackendItems(build, cfg, cache_dir=root, file_stem=_file_stem)

    def onnx_path(self, name: str) -> Path:
        # Files of the default exporter keep their historical names (existing caches).
        suffix = "" if self.cfg.onnx_exporter == "dynamo" else f"_{self.cfg.onnx_exporter}"
        return self.onnx_dir / f"{_file_stem(name)}_b{self.cfg.batch}{suffix}.onnx"

    def prepare(self, names: Sequence[str], progress: bool = False) -> None:
        """Export the ONNX files of ``names`` (onnxruntime), or convert them for a deployment
        backend (cached); a no-op for torch."""
        if self.converted is not None:
            self.converted.prepare(names, progress=progress)
            return
        if self.cfg.runtime != "onnxruntime":
            return
        todo = list(dict.fromkeys(names))
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="export ONNX", unit="file", leave=False)
        for name in todo:
            self._exported(name)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

    def _exported(self, name: str) -> Path:
        import torch

        path = self.onnx_path(name)
        if not path.is_file() or name not in self.shapes:
            torch.manual_seed(self.cfg.seed)
            module, shape = self.build(name)
            self.shapes[name] = shape
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.stem + f".partial{os.getpid()}.onnx")
                export_for_ort(module, shape, self.cfg, tmp)
                tmp.replace(path)
        return path

    def sampler(self, name: str) -> Callable[[int], float]:
        """A ``sample(number)`` of one item, in a session (or module) of its own."""
        import torch

        if self.converted is not None:
            return self.converted.sampler(name)
        if self.cfg.runtime == "onnxruntime":
            path = self._exported(name)
            return ort_sampler(path, self.shapes[name], self.cfg)
        torch.manual_seed(self.cfg.seed)
        module, shape = self.build(name)
        return torch_sampler(module, shape, self.cfg)

    def __call__(self, name: str) -> dict[str, Any]:
        return run_samples(self.sampler(name), **self.cfg.sampling())


def item_measurer(build: Builder, cfg: HarnessConfig, *, onnx_dir: str | Path | None = None) -> ItemMeasurer:
    """An :class:`ItemMeasurer` (kept as a function for symmetry with :func:`measure`)."""
    return ItemMeasurer(build, cfg, onnx_dir=onnx_dir)


class _Timed:
    """Wraps one op of a network and appends the seconds of each call to ``log``."""

    def __init__(self, op, log: list[float]) -> None:
        self.op = op
        self.log = log

    def __call__(self, x):
        t0 = _perf_counter()
        y = self.op(x)
        self.log.append(_perf_counter() - t0)
        return y


class _CudaTimed:
    """Like :class:`_Timed` with CUDA events; read after the forward's synchronisation."""

    def __init__(self, op, pending: list) -> None:
        import torch

        self.op = op
        self.pending = pending
        self._event = torch.cuda.Event

    def __call__(self, x):
        start, end = self._event(enable_timing=True), self._event(enable_timing=True)
        start.record()
        y = self.op(x)
        end.record()
        self.pending.append((start, end))
        return y


def _perf_counter() -> float:
    import time

    return time.perf_counter()


def network_ops(model) -> list[Any]:
    """The ops of a :class:`nas.models.builder.MobileNetV3Net` in the order of :func:`keys_for_spec`."""
    return [*model.features, model.avgpool, model.classifier]


def measure_in_context(spec, cfg: HarnessConfig | None = None, *, model=None) -> tuple[Timing, list[tuple[str, Timing]]]:
    """Time ``spec``'s network and, inside the same forward passes, each of its ops.

    Every op (stem, bnecks, last conv, pool, classifier) is timed where it runs: its input
    was just written by the op before it and its weights were pushed out of the caches by
    the rest of the network, as in an end-to-end run. Summing isolated timings misses
    exactly this (they under-predict, most for the large classifier, whose weights stay
    cached in isolation). Returns the end-to-end
    timing (including the ~1 us per op of the wrappers) and ``(key, timing)`` per op in
    network order, repeats kept. torch runtimes only.
    """
    import torch
    from torch import nn

    from nas.cost.keys import keys_for_spec
    from nas.models.builder import build_model

    cfg = cfg or HarnessConfig()
    if cfg.runtime not in TORCH_RUNTIMES:
        raise HarnessError(f"in-context op timing needs a torch runtime; {cfg.runtime} tables "
                           "time exported ops (method 'isolated')")
    spec = spec.resolved()
    keys = keys_for_spec(spec)
    torch.manual_seed(cfg.seed)
    model = build_model(spec) if model is None else model
    device = "cuda" if cfg.runtime == "torch-cuda" else "cpu"
    model = model.eval().to(device=device, dtype=torch_dtype(cfg.dtype))
    ops = network_ops(model)
    if len(ops) != len(keys):  # pragma: no cover - guards a change of nas.models.builder's layout
        raise HarnessError(f"network has {len(ops)} ops but {len(keys)} latency keys")
    logs: list[list[float]] = [[] for _ in ops]
    pending: list[list] = [[] for _ in ops]
    wrappers = [(_CudaTimed(op, pending[i]) if device == "cuda" else _Timed(op, logs[i]))
                for i, op in enumerate(ops)]

    class _Wrapped(nn.Module):
        # A plain forward over the wrapped ops, the same as MobileNetV3Net.forward.
        def forward(self, x):
            for w in wrappers[:-2]:
                x = w(x)
            x = wrappers[-2](x)
            x = torch.flatten(x, 1)
            return wrappers[-1](x)

    wrapped = _Wrapped()
    x = example_input((3, spec.resolution, spec.resolution), cfg, device)

    def collect_cuda() -> None:
        for i, events in enumerate(pending):
            logs[i].extend(start.elapsed_time(end) / 1e3 for start, end in events)
            events.clear()

    def sample(number: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                wrapped(x)
            end.record()
            end.synchronize()
            collect_cuda()
            return start.elapsed_time(end) / 1e3
        t0 = _perf_counter()
        for _ in range(number):
            wrapped(x)
        return _perf_counter() - t0

    def reset() -> None:
        for log in logs:
            log.clear()
        for events in pending:
            events.clear()

    with harness_context(cfg):
        stats = run_samples(sample, after_warmup=reset, **cfg.sampling())
    per_op = [(key, Timing.from_stats(sampling.summarize(log))) for key, log in zip(keys, logs)]
    return Timing.from_stats(stats), per_op


def _file_stem(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    if len(safe) <= 80:
        return safe
    return safe[:40] + "-" + hashlib.sha1(name.encode()).hexdigest()[:16]


def measure_interleaved(
    names: Sequence[str],
    build: Builder,
    cfg: HarnessConfig,
    *,
    passes: int | None = None,
    log_path: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "timing",
    callback: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Measure each named item once per pass over ``passes`` shuffled passes.

    Returns ``(figures, per_pass)``: for each name the aggregate (``ms``: the
    ``cfg.pass_statistic`` of the per-pass medians; also their median, lower quartile and
    min, the median IQR, pass spread, mean load average) and its per-pass rows. Units in
    ``log_path`` from an interrupted run are reused (resume).
    """
    passes = passes or cfg.passes
    names = list(dict.fromkeys(names))
    bar = None
    if progress and names:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * passes, desc=desc, unit="op", leave=False)
    measure_one = item_measurer(build, cfg, onnx_dir=onnx_dir)
    measure_one.prepare(names, progress=progress)
    try:
        with harness_context(cfg):
            per_pass, _ = sampling.run_passes(
                names, measure_one, passes=passes,
                log_path=Path(log_path) if log_path is not None else None, seed=cfg.seed,
                callback=callback, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    figures = {name: sampling.aggregate(rows, cfg.pass_statistic)
               for name, rows in per_pass.items() if rows}
    return figures, per_pass
