"""The one interface of a latency backend, its settings, its artifact and its errors.

A backend turns a torch module into its runtime's artifact (:meth:`LatencyBackend.export`)
and returns a ``sample(number) -> seconds`` function (:meth:`LatencyBackend.sampler`) that
:func:`nas.cost.sampling.run_samples` times with the harness's statistics, the same contract
as :func:`nas.cost.samplers.torch_sampler` and :func:`nas.cost.samplers.ort_sampler`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from nas.config import Config, check_choice, check_int
from nas.cost import sampling
from nas.errors import NASError

PRECISIONS = ("fp32",)


class BackendError(NASError, ValueError):
    """A latency backend was asked for something it cannot do (unknown name, bad setting)."""


class BackendUnavailableError(BackendError, ImportError):
    """The runtime of a latency backend is not installed (its pip extra is missing)."""


class ConversionError(BackendError, RuntimeError):
    """A runtime's converter refused a unit; the message names unit, runtime and reason."""


@dataclass(frozen=True, kw_only=True)
class BackendConfig(Config):
    """How a backend runs a unit.

    Attributes:
        threads: intra-op threads of the runtime (its thread pool or delegate).
        batch: batch size prepended to every input shape (artifacts have static shapes).
        precision: inference precision; ``"fp32"`` only (runtimes that would pick a lower
            one by themselves, OpenVINO's bf16 on AVX512-BF16 CPUs, are told so explicitly).
        seed: seed of the random input.
    """

    threads: int = 1
    batch: int = 1
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("BackendConfig", "threads", self.threads, minimum=1)
        check_int("BackendConfig", "batch", self.batch, minimum=1)
        check_choice("BackendConfig", "precision", self.precision, PRECISIONS)
        check_int("BackendConfig", "seed", self.seed, minimum=0)

    def replace(self, **changes: Any) -> BackendConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_harness(cls, harness: Any) -> BackendConfig:
        """Threads, batch and seed of a :class:`nas.cost.harness.HarnessConfig`."""
        if harness.dtype != "float32":
            raise BackendError(f"latency backends time float32 only, the harness says {harness.dtype}")
        return cls(threads=harness.threads, batch=harness.batch, seed=harness.seed)


@dataclass(kw_only=True)
class Artifact:
    """What :meth:`LatencyBackend.export` made of a unit.

    Attributes:
        backend: the backend's name.
        unit: what was converted (for messages and tables).
        path: the file the runtime loads (``None`` for torch eager, which runs ``module``).
        input_shape: input shape without the batch dimension.
        batch: the static batch size the artifact was made for.
        convert_s: seconds the conversion took.
        details: what the conversion revealed (delegation coverage, graph size); merged
            into :meth:`LatencyBackend.provenance` when the artifact is given.
        module: the eager module (torch backend only).
    """

    backend: str
    unit: str
    path: Path | None
    input_shape: tuple[int, ...]
    batch: int
    convert_s: float
    details: dict[str, Any] = field(default_factory=dict)
    module: Any = None


class LatencyBackend(ABC):
    """One deployment runtime: convert a module, time it, say what was timed.

    Subclasses set the class attributes and implement :meth:`version`, :meth:`_export`,
    :meth:`sampler` and :meth:`run`. ``get_backend(name)`` returns an instance after checking
    that the runtime's modules can be found.
    """

    name: ClassVar[str]
    extra: ClassVar[str | None] = None        # pip extra of mnv3-nas that installs the runtime
    modules: ClassVar[tuple[str, ...]] = ()   # top-level modules the runtime needs
    converter: ClassVar[str] = ""             # the conversion API, for messages and provenance
    delegate: ClassVar[str] = "none"
    io_layout: ClassVar[str] = "NCHW"
    suffix: ClassVar[str] = ""

    # ------------------------------------------------------------------ availability
    @classmethod
    def missing_module(cls) -> str | None:
        """The first runtime module that cannot be found, or None when all can."""
        for name in cls.modules:
            try:
                if importlib.util.find_spec(name) is None:
                    return name
            except (ImportError, ValueError):
                return name
        return None

    def unavailable(self, module: str) -> BackendUnavailableError:
        hint = f"pip install 'mnv3-nas[{self.extra}]'" if self.extra else "pip install mnv3-nas"
        return BackendUnavailableError(
            f"latency backend '{self.name}' needs the extra: {hint} ({module} is not installed)")

    def require(self, module: str) -> ModuleType:
        """Import ``module``, raising :class:`BackendUnavailableError` naming the extra."""
        try:
            # The package first: a submodule already imported would be found in sys.modules
            # even when its package has since become unimportable.
            importlib.import_module(module.partition(".")[0])
            return importlib.import_module(module)
        except ImportError:
            raise self.unavailable(module) from None

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def version(self) -> str:
        """The runtime's version string."""

    def runtime_info(self) -> dict[str, Any]:
        """Backend-specific provenance fields (converter version, delegate options)."""
        return {}

    def provenance(self, cfg: BackendConfig | None = None, artifact: Artifact | None = None) -> dict[str, Any]:
        """Everything a latency table must record about how a figure was measured.

        Always: backend, runtime, runtime_version, converter, delegate, precision, threads,
        batch, io_layout, device, torch_version. With ``artifact``: its unit, conversion
        seconds and what the conversion revealed (delegation coverage, precisions used).
        """
        import torch

        cfg = cfg or BackendConfig()
        info: dict[str, Any] = {
            "backend": self.name,
            "runtime": self.runtime_name(),
            "runtime_version": self.version(),
            "converter": self.converter,
            "delegate": self.delegate,
            "precision": cfg.precision,
            "threads": cfg.threads,
            "batch": cfg.batch,
            "io_layout": self.io_layout,
            "device": sampling.cpu_model(),
            "torch_version": torch.__version__,
        }
        info.update(self.runtime_info())
        info.update(self.runtime_settings(cfg))
        if artifact is not None:
            info.update({"unit": artifact.unit, "convert_s": round(artifact.convert_s, 3)})
            info.update(artifact.details)
        return info

    def runtime_name(self) -> str:
        return self.name

    def runtime_settings(self, cfg: BackendConfig) -> dict[str, Any]:
        """Settings read back from the runtime itself under ``cfg`` (e.g. the precision used)."""
        return {}

    def export(self, module: Any, input_shape: Sequence[int], path: str | Path, *,
               cfg: BackendConfig | None = None, unit: str | None = None) -> Artifact:
        """Convert ``module`` (eval mode, CPU, float32) for inputs ``(cfg.batch, *input_shape)``.

        ``path`` is the artifact's file (the backend's suffix is added when missing); its
        folder is created. Raises :class:`ConversionError` naming the unit, the runtime and
        the converter's reason.
        """
        cfg = cfg or BackendConfig()
        shape = tuple(int(s) for s in input_shape)
        unit = unit or type(module).__name__
        target = Path(path)
        if self.suffix and target.suffix != self.suffix:
            target = target.with_name(target.name + self.suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        module = module.eval().cpu().float()
        example = example_input(shape, cfg)
        start = time.perf_counter()
        with self.converting(unit):
            artifact = self._export(module, example, target, unit)
        artifact.convert_s = time.perf_counter() - start
        return artifact

    @abstractmethod
    def _export(self, module: Any, example: Any, path: Path, unit: str) -> Artifact:
        """Convert; errors are turned into :class:`ConversionError` by :meth:`export`."""

    @abstractmethod
    def sampler(self, artifact: Artifact, input_shape: Sequence[int],
                cfg: BackendConfig | None = None) -> Callable[[int], float]:
        """``sample(number)``: run the artifact ``number`` times, return the seconds taken."""

    @abstractmethod
    def run(self, artifact: Artifact, x: Any) -> Any:
        """The artifact's first output on ``x`` (NCHW torch tensor) as a numpy array in the
        module's own layout, for checking a conversion against torch."""

    # ------------------------------------------------------------------ shared plumbing
    def check(self, artifact: Artifact, input_shape: Sequence[int], cfg: BackendConfig) -> None:
        """Refuse to time an artifact with another backend, shape or batch than it was made for."""
        if artifact.backend != self.name:
            raise BackendError(f"artifact of unit '{artifact.unit}' was made by backend "
                               f"'{artifact.backend}', not '{self.name}'")
        shape = tuple(int(s) for s in input_shape)
        if shape != artifact.input_shape or cfg.batch != artifact.batch:
            raise BackendError(
                f"unit '{artifact.unit}' was converted for input {(artifact.batch, *artifact.input_shape)}, "
                f"asked to run {(cfg.batch, *shape)}: {self.name} artifacts have static shapes")

    def make_artifact(self, unit: str, path: Path | None, example: Any, **details: Any) -> Artifact:
        """An :class:`Artifact` of this backend for ``example``'s shape (``convert_s`` set by :meth:`export`)."""
        return Artifact(backend=self.name, unit=unit, path=path,
                        input_shape=tuple(int(s) for s in example.shape[1:]),
                        batch=int(example.shape[0]), convert_s=0.0, details=dict(details))

    @contextmanager
    def converting(self, unit: str) -> Iterator[None]:
        """Turn whatever the converter raises into one-line :class:`ConversionError`."""
        try:
            yield
        except (BackendError, MemoryError):
            raise
        except Exception as err:  # converters raise anything; the message names unit and reason
            raise ConversionError(f"{self.name} cannot convert unit '{unit}' ({self.converter}): "
                                  f"{reason_line(err)}") from err


# ---------------------------------------------------------------------------- helpers
def example_input(input_shape: Sequence[int], cfg: BackendConfig):
    """The seeded random float32 input ``(cfg.batch, *input_shape)`` (as the harness's)."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    return torch.randn((cfg.batch, *input_shape), generator=generator)


def example_array(input_shape: Sequence[int], cfg: BackendConfig, *, channels_last: bool = False):
    """:func:`example_input` as a contiguous numpy array (optionally NHWC)."""
    import numpy as np

    x = example_input(input_shape, cfg)
    if channels_last:
        x = x.permute(0, *range(2, x.ndim), 1)
    return np.ascontiguousarray(x.numpy())


# Lines of a converter's message that say nothing about the unit: assertion banners, headers
# of summaries, advice. The reason is the first other line of the innermost cause.
_BOILERPLATE = re.compile(
    r"^(Check '.*' failed at|FrontEnd API failed|Model wasn't fully converted|Summary:|"
    r"Traceback|There are a few things|See the stack trace|For more information)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def reason_line(err: BaseException, limit: int = 300) -> str:
    """The first informative line of the innermost cause of ``err``, with its type."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    for exc in reversed(chain):
        for raw in str(exc).splitlines():
            line = _ANSI.sub("", raw).strip().lstrip("-").strip()
            if line and not _BOILERPLATE.match(line):
                text = f"{type(exc).__name__}: {line}"
                return text if len(text) <= limit else text[: limit - 3] + "..."
    return type(err).__name__


def baseline_module(input_shape: Sequence[int], output_shape: Sequence[int] | None = None):
    """The empty model of a backend: a unit's input and output shapes, next to no work.

    It reads the first element of its input and adds it to a constant of ``output_shape``
    (default: the input's; both without the batch dimension). Timing it gives the per-call
    cost of a runtime's Python API for those shapes (binding, input copy, dispatch, output
    fetch) with a few microseconds of kernel; an identity would be folded away by the
    converters.
    """
    import torch
    from torch import nn

    out = tuple(int(s) for s in (input_shape if output_shape is None else output_shape))

    class EmptyModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(1)
            self.bias = nn.Parameter(torch.rand((1, *out), generator=generator) + 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first = x.flatten(1)[:, :1]
            return first.reshape(x.shape[0], *(1,) * len(out)) + self.bias

    return EmptyModel().eval()
