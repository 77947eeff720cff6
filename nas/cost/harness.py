"""The timing harness's settings (:class:`HarnessConfig`), its result (:class:`Timing`), and
the environment a measurement runs in (threads, pinning, allocator, provenance)."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

from nas.config import Config
from nas.cost import sampling
from nas.cost.sampling import pinned_cpu, realtime_priority
from nas.errors import NASError


TORCH_RUNTIMES = ("torch-cpu", "torch-cuda")
#: Runtimes timed through a deployment backend of :mod:`nas.cost.backends` (the runtime's
#: name is the backend's): each key is converted and timed as its own model.
BACKEND_RUNTIMES = ("litert", "executorch", "openvino")
RUNTIMES = (*TORCH_RUNTIMES, "onnxruntime", *BACKEND_RUNTIMES)
#: ``latency.backend`` / ``--backend`` names and the harness runtime each one means
#: (``torch`` is eager PyTorch, on the CPU unless the runtime says ``torch-cuda``).
BACKEND_RUNTIME = {"torch": "torch-cpu", "onnxruntime": "onnxruntime",
                   **{name: name for name in BACKEND_RUNTIMES}}
DTYPES = ("float32", "float16", "bfloat16")


class HarnessError(NASError, ValueError):
    """A harness setting is invalid or cannot run here (e.g. CUDA without a GPU)."""


def backend_of(runtime: str) -> str:
    """The latency backend a harness runtime belongs to (``torch-cpu`` -> ``torch``)."""
    return "torch" if runtime in TORCH_RUNTIMES else runtime


def runtime_for_backend(backend: str, runtime: str | None = None) -> str:
    """The harness runtime of ``backend``; ``runtime`` (when given) must agree with it.

    ``torch`` keeps a torch runtime (``torch-cpu`` or ``torch-cuda``); any other backend
    has exactly one runtime, so a conflicting ``runtime`` is an error naming both.
    """
    if backend not in BACKEND_RUNTIME:
        raise HarnessError(f"unknown latency backend {backend!r}; choose one of: "
                           f"{', '.join(BACKEND_RUNTIME)}")
    if runtime is None:
        return BACKEND_RUNTIME[backend]
    if backend_of(runtime) != backend:
        raise HarnessError(f"latency backend {backend!r} and runtime {runtime!r} disagree; "
                           f"give one of them (backend {backend!r} is runtime "
                           f"{BACKEND_RUNTIME[backend]!r})")
    return runtime


@dataclass(frozen=True)
class HarnessConfig(Config):
    """How to time: runtime, threads, batch, dtype and the sampling protocol.

    Attributes:
        runtime: ``"torch-cpu"``, ``"torch-cuda"``, ``"onnxruntime"``, or a deployment
            backend of :mod:`nas.cost.backends`: ``"litert"``, ``"executorch"``,
            ``"openvino"`` (:data:`BACKEND_RUNTIMES`; float32 only).
        threads: intra-op threads (torch or onnxruntime); ignored by torch-cuda.
        batch: batch size prepended to every input shape.
        dtype: ``"float32"``; ``"float16"`` on CUDA, ``"bfloat16"`` on torch-cpu/cuda.
        warmup: minimum warm-up calls before sampling.
        warmup_time: minimum warm-up seconds.
        repeats: minimum number of samples.
        min_run_time: minimum seconds of sampling (with ``repeats``, whichever is later).
        max_run_time: stop sampling after this many seconds (at least 3 samples).
        passes: interleaved passes for tables and end-to-end validation.
        pin_cpu: pin the timing thread to this CPU index (``os.sched_setaffinity``), or None.
        realtime: run the timing thread under SCHED_FIFO while measuring (needs root or
            CAP_SYS_NICE; silently normal where refused). On a shared machine this keeps
            other processes from time-slicing a forward pass; off by default.
        pass_statistic: the figure of an interleaved measurement: ``median`` (of the
            per-pass medians), ``q25`` (their lower quartile) or ``min`` (over all samples
            of all passes; the robust choice on a shared machine, see
            :func:`nas.cost.sampling.aggregate`). Tables and the end-to-end figures
            compared with them must use the same one.
        steady_allocator: before torch timings, stop glibc from returning freed memory
            to the OS and from serving large tensors with fresh mmaps (``mallopt``), as in
            a long-running inference process or a runtime with a planned arena. Otherwise
            every large activation is a fresh mapping, and a forward pass takes thousands of
            page faults whose number depends on the allocation history (the network around
            an op): a large source of noise (see the docs' latency page).
            Process-wide and not undone; recorded in the provenance.
        ort_opt_level: onnxruntime graph optimisation level (disable/basic/extended/all).
        onnx_exporter: how ops and networks are exported for onnxruntime: ``dynamo`` or
            ``torchscript`` (:data:`nas.models.export.EXPORTERS`; equivalent graphs, the latter
            much faster to export). Exported files are cached per exporter.
        seed: seed of weights and inputs (timings should not depend on it).
    """

    runtime: str = "torch-cpu"
    threads: int = 1
    batch: int = 1
    dtype: str = "float32"
    warmup: int = sampling.DEFAULT_WARMUP
    warmup_time: float = sampling.DEFAULT_WARMUP_TIME
    repeats: int = sampling.DEFAULT_REPEATS
    min_run_time: float = sampling.DEFAULT_MIN_RUN_TIME
    max_run_time: float = sampling.DEFAULT_MAX_RUN_TIME
    passes: int = 5
    pin_cpu: int | None = None
    realtime: bool = False
    pass_statistic: str = "median"
    steady_allocator: bool = True
    ort_opt_level: str = "all"
    onnx_exporter: str = "dynamo"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise HarnessError(f"runtime must be one of {list(RUNTIMES)}, got {self.runtime!r}")
        if self.dtype not in DTYPES:
            raise HarnessError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.runtime not in TORCH_RUNTIMES and self.dtype != "float32":
            raise HarnessError(f"the {self.runtime} harness times float32 exports only")
        if self.runtime == "torch-cpu" and self.dtype == "float16":
            raise HarnessError("float16 on torch-cpu is not a meaningful latency; use bfloat16")
        for name in ("threads", "batch", "repeats", "passes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HarnessError(f"{name} must be an integer >= 1, got {value!r}")
        if self.warmup < 0 or self.min_run_time < 0 or self.max_run_time <= 0:
            raise HarnessError("warmup, min_run_time must be >= 0 and max_run_time > 0")
        if self.pass_statistic not in sampling.PASS_STATISTICS:
            raise HarnessError(f"pass_statistic must be one of {list(sampling.PASS_STATISTICS)}, "
                               f"got {self.pass_statistic!r}")
        if self.ort_opt_level not in ("disable", "basic", "extended", "all"):
            raise HarnessError(f"ort_opt_level must be disable/basic/extended/all, got {self.ort_opt_level!r}")
        if self.onnx_exporter not in ("dynamo", "torchscript"):
            raise HarnessError(f"onnx_exporter must be dynamo/torchscript, got {self.onnx_exporter!r}")

    def replace(self, **changes: Any) -> HarnessConfig:
        return dataclasses.replace(self, **changes)


    def sampling(self) -> dict[str, Any]:
        """The keyword arguments of :func:`nas.cost.sampling.run_samples`."""
        return {"warmup": self.warmup, "warmup_time": self.warmup_time, "repeats": self.repeats,
                "min_run_time": self.min_run_time, "max_run_time": self.max_run_time}


@dataclass(frozen=True)
class Timing:
    """One measurement: per-call milliseconds over ``n`` samples of ``number`` calls."""

    median_ms: float
    iqr_ms: float
    mean_ms: float
    n: int
    min_ms: float = float("nan")
    number: int = 1

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Timing:
        return cls(median_ms=float(stats["median_ms"]), iqr_ms=float(stats["iqr_ms"]),
                   mean_ms=float(stats["mean_ms"]), n=int(stats["n"]),
                   min_ms=float(stats.get("min_ms", float("nan"))),
                   number=int(stats.get("number", 1)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def figure(self, statistic: str = "median") -> float:
        """The per-measurement number that feeds ``statistic`` (``HarnessConfig.pass_statistic``):
        ``min_ms`` for ``min``, else ``median_ms``."""
        return self.min_ms if statistic == "min" else self.median_ms


# ---------------------------------------------------------------------------- environment
def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


_STEADY_ALLOCATOR: bool | None = None


def steady_allocator() -> bool:
    """Make glibc malloc keep and reuse freed memory (process-wide); True if applied.

    ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` are raised to 1 GiB, so tensors come
    from the heap and freed pages stay mapped: after warm-up a forward pass makes no page
    faults. A no-op (False) where the C library has no ``mallopt`` (not glibc).
    """
    global _STEADY_ALLOCATOR
    if _STEADY_ALLOCATOR is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            _STEADY_ALLOCATOR = bool(libc.mallopt(m_trim_threshold, 1 << 30)
                                     and libc.mallopt(m_mmap_threshold, 1 << 30))
        except (OSError, AttributeError):
            _STEADY_ALLOCATOR = False
    return _STEADY_ALLOCATOR


@contextmanager
def harness_context(cfg: HarnessConfig) -> Iterator[None]:
    """Threads set (and restored), optional CPU pinning, inference mode for torch."""
    import torch

    if cfg.steady_allocator and cfg.runtime in TORCH_RUNTIMES:
        steady_allocator()

    if cfg.runtime == "torch-cuda" and not torch.cuda.is_available():
        raise HarnessError("runtime torch-cuda asked for, but torch sees no CUDA device")
    saved_threads = torch.get_num_threads()
    try:
        if cfg.runtime == "torch-cpu":
            torch.set_num_threads(cfg.threads)
        # No inference mode for exported runtimes: the exporters trace the module themselves.
        grad_mode = torch.inference_mode() if cfg.runtime in TORCH_RUNTIMES else nullcontext()
        with pinned_cpu(cfg.pin_cpu), realtime_priority(cfg.realtime), grad_mode:
            yield
    finally:
        torch.set_num_threads(saved_threads)


def device_name(cfg: HarnessConfig) -> str:
    """The GPU name for torch-cuda, else the CPU model from /proc/cpuinfo."""
    if cfg.runtime == "torch-cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return sampling.cpu_model()


