"""Which latency table a run uses: one policy for the search, NetAdapt and the ablations.

A run answers four questions about its latency table, once, before its first network:

* **which table**: ``table="auto"`` is this host's (:func:`nas.cost.host_table.host_table`:
  the shipped table where it was measured on this host, else one measured here once into
  the user's cache); a folder or a shipped table's name is pinned. A resumed run keeps the
  table it chose (``latency_table.txt`` in its run folder), even if the cache changed since.
* **extendable or not**: with ``measure_missing`` the keys the run needs and the table
  lacks are measured into the run's own copy (``<run>/latency_table``), never into the
  source (which may be a shipped table); the run then uses that copy, and a resume finds it
  and measures nothing twice. Without it, missing keys stop the run, named.
* **measured elsewhere**: a table whose provenance names another CPU or runtime version is a
  warning (one line), or an error with ``strict``.
* **which runtime**: the table must have been measured in ``runtime`` (or the runtime of
  ``backend``: ``latency.backend=litert``) at ``resolution``; a table of another backend is
  an error naming both.

:func:`resolve_table` applies the policy and returns the table, loaded once, with the
reason for the choice; callers predict with it and never measure behind the table's back.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Union

from nas._io import write_text_atomic
from nas.config import Config, ConfigError, check_choice, check_int
from nas.cost.harness import BACKEND_RUNTIME, BACKEND_RUNTIMES, RUNTIMES, HarnessError, runtime_for_backend
from nas.cost.table_files import MissingKeysError, resolve_table_dir

if TYPE_CHECKING:  # pragma: no cover
    from nas.arch.space import SearchSpace
    from nas.arch.spec import NetworkSpec
    from nas.cost.lut import LatencyTable

log = logging.getLogger(__name__)

AUTO = "auto"
RUN_COPY = "latency_table"  # a run's own copy of its table, with the keys it measured
CHOICE_FILE = "latency_table.txt"  # which table ``auto`` chose for a run

Needs = Union["SearchSpace", "NetworkSpec", Iterable[Union["SearchSpace", "NetworkSpec"]]]


@dataclass(frozen=True)
class LatencyPolicy(Config):
    """Which table, extendable or not, strict or not, which runtime (module docstring).

    Attributes:
        table: ``auto`` (this host's) or a table folder / shipped table name (pinned);
            a relative path is read from ``base_dir`` when :func:`resolve_table` gets one.
        backend: the runtime the latency is for, by its backend name (``torch``,
            ``onnxruntime``, ``litert``, ``executorch``, ``openvino``; see
            :mod:`nas.cost.backends`); sets ``runtime``. ``None``: ``runtime`` says it.
        runtime: the harness runtime the table must have been measured in (``torch-cpu``,
            ``torch-cuda``, ``onnxruntime``, or a deployment backend's name); derived from
            ``backend`` when that is given (the default ``torch-cpu`` then yields to it).
        resolution: the deployment input side the table must key (``None``: any).
        measure_missing: measure keys the table lacks into the run's copy.
        strict: a table measured on another CPU or runtime version is an error.
    """

    table: str = AUTO
    backend: str | None = None
    runtime: str = "torch-cpu"
    resolution: int | None = 224
    measure_missing: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.table, (str, Path)) or not str(self.table):
            raise ConfigError(f"latency.table must be 'auto' or a table folder, got {self.table!r}")
        object.__setattr__(self, "table", str(self.table))
        check_choice("latency", "runtime", self.runtime, RUNTIMES)
        if self.backend is not None:
            check_choice("latency", "backend", self.backend, tuple(BACKEND_RUNTIME))
            # ``runtime`` defaults to torch-cpu: read that as unset when a backend is named.
            given = None if self.runtime == "torch-cpu" and self.backend != "torch" else self.runtime
            try:
                runtime = runtime_for_backend(self.backend, given)
            except HarnessError as err:
                raise ConfigError(f"latency: {err}") from None
            object.__setattr__(self, "runtime", runtime)
        check_int("latency", "resolution", self.resolution, minimum=8, optional=True)
        for name in ("measure_missing", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"latency.{name} must be true or false, got {getattr(self, name)!r}")


@dataclass
class ResolvedTable:
    """The table a run uses, where it came from and why, and what was said about it."""

    table: LatencyTable
    source: Path
    reason: str
    policy: LatencyPolicy
    run_dir: Path | None
    measured: int = 0  # keys measured into the run's copy
    warnings: list[str] = field(default_factory=list)

    def cover(self, needs: Needs, *, progress: bool = True) -> int:
        """Make the table hold every key of ``needs``: measured into the run's copy when the
        policy allows it (the run then uses the copy), else :class:`MissingKeysError` naming
        them. Returns how many keys were measured."""
        missing = self.table.missing_keys(needs)
        if not missing:
            return 0
        if not self.policy.measure_missing:
            raise MissingKeysError(missing, f"the table {self.source} lacks them; measure them "
                                   "with latency.measure_missing=true (on the target device) or "
                                   "`nas-lut build`")
        if self.run_dir is None:
            raise ConfigError("latency.measure_missing needs a run folder for the table's copy")
        copy = self.run_dir / RUN_COPY
        log.info("measuring %d missing latency key(s) on this machine into %s", len(missing), copy)
        added = len(self.table.build(needs, progress=progress, save_to=copy))
        if self.source != copy:
            self.reason = f"this run's copy of {self.source}, {len(missing)} key(s) measured now"
            self.source = copy
        self.measured += added
        return added


def _pinned_dir(table: str, base_dir: Path | None) -> Path:
    candidate = Path(table)
    if base_dir is not None and not candidate.is_absolute():
        candidate = base_dir / candidate
    return resolve_table_dir(candidate if candidate.is_dir() else table)


def choose_source(policy: LatencyPolicy, space: SearchSpace | None, run_dir: Path | None, *,
                  resume: bool, base_dir: Path | None = None, progress: bool = True) -> tuple[Path, str]:
    """The table folder the policy names, and why (``auto`` is resolved and recorded)."""
    from nas.cost.host_table import host_table

    if policy.table != AUTO:
        return _pinned_dir(policy.table, base_dir), "latency.table, pinned"
    chosen = run_dir / CHOICE_FILE if run_dir is not None else None
    if resume and chosen is not None and chosen.is_file():
        return Path(chosen.read_text(encoding="utf-8").strip()), "this run's, resumed"
    if space is None:
        raise ConfigError("latency.table=auto needs the search space whose keys the table holds")
    resolution = policy.resolution if policy.resolution is not None else space.base.resolution
    choice = host_table(space, runtime=policy.runtime, resolution=resolution, progress=progress)
    if chosen is not None:
        write_text_atomic(chosen, f"{choice.path}\n", what="the run's choice of latency table")
    return choice.path, choice.reason


def resolve_table(policy: LatencyPolicy, needs: Needs, run_dir: Path | None, *, resume: bool = False,
                  space: SearchSpace | None = None, base_dir: Path | None = None,
                  progress: bool = True) -> ResolvedTable:
    """Apply ``policy`` for a run that needs the keys of ``needs`` (a space, specs, or both).

    Loads the table once; checks its runtime and resolution; measures what it lacks into
    ``run_dir/latency_table`` (``measure_missing``) or raises :class:`MissingKeysError`
    naming the keys; compares its provenance with this host (a warning in
    ``ResolvedTable.warnings``, an error with ``strict``). ``space`` is what ``auto`` builds
    a table for (default: ``needs`` when it is a space).
    """
    from nas.arch.space import SearchSpace
    from nas.cost.lut import LatencyTable
    from nas.cost.table_files import HostMismatchWarning

    if policy.runtime in BACKEND_RUNTIMES:
        from nas.cost.backends import get_backend

        get_backend(policy.runtime)  # a missing extra stops here, in one line naming it
    if space is None and isinstance(needs, SearchSpace):
        space = needs
    copy = run_dir / RUN_COPY if run_dir is not None else None
    if policy.measure_missing and copy is not None and (copy / "table.csv").is_file():
        source, reason = copy, "this run's copy, with the keys it measured"
    else:
        source, reason = choose_source(policy, space, run_dir, resume=resume, base_dir=base_dir,
                                       progress=progress)
    table = LatencyTable.load(source)
    table.check_compatible(runtime=policy.runtime, resolution=policy.resolution)
    resolved = ResolvedTable(table=table, source=source, reason=reason, policy=policy, run_dir=run_dir)
    resolved.cover(needs, progress=progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HostMismatchWarning)
        table.check_host(strict=policy.strict)
    resolved.warnings = [str(w.message) for w in caught if issubclass(w.category, HostMismatchWarning)]
    return resolved


def policy_from_dict(data: dict[str, Any] | None) -> LatencyPolicy:
    """The policy of a config's ``latency`` section."""
    return LatencyPolicy.from_dict(data)


__all__ = ["AUTO", "CHOICE_FILE", "LatencyPolicy", "RUN_COPY", "ResolvedTable", "choose_source",
           "policy_from_dict", "resolve_table"]
