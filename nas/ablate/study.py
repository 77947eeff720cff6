"""Run an ablation study: per variant, params and MAdds, lookup-table latency, end-to-end
latency in interleaved rounds (ratio to the baseline measured in the same run), and proxy
accuracy on CIFAR-10 ``val`` over several seeds.

Every figure is appended to ``<run>/results.jsonl`` the moment it exists; a killed study
started again with the same run folder skips what is there (a training run in progress
resumes from its checkpoint under ``<run>/checkpoints/``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.ablate.results import Results, e2e_key, protocol_key, trained_arch
from nas.ablate.variants import AblationError, Variant, variant_from_dict
from nas.arch.codecs import save_spec, to_string
from nas.arch.spec import NetworkSpec
from nas.config import Config, ConfigError, check_int, config_from_dict
from nas.cost.harness import HarnessConfig
from nas.cost.policy import AUTO, LatencyPolicy
from nas.cost.sampling import loadavg

log = logging.getLogger("nas-ablate")

NO_TABLE = "none"  # ``latency.table: none``: end-to-end figures only


@dataclass(frozen=True)
class LatencySettings(Config):
    """Where latency comes from: the latency policy's table (``auto``: this host's for
    ``space``, as ``nas-search`` chooses it), extended with the variants' missing keys in
    the run folder, and ``rounds`` interleaved end-to-end rounds with the table's harness
    (0: no end-to-end figure). ``table: none`` skips the table: the variants are only timed
    end to end, in the runtime of ``backend`` with its default harness (no table build,
    which takes hours for some runtimes; the paper's ablation latencies are end to end)."""

    table: str = "auto"
    space: str = "mobilenetv3_large"   # the space whose table ``auto`` finds or builds
    backend: str | None = None         # the runtime by backend name (sets ``runtime``)
    runtime: str = "torch-cpu"
    strict: bool = False
    rounds: int = 10

    def __post_init__(self) -> None:
        check_int("latency", "rounds", self.rounds, minimum=0)
        if not self.uses_table and self.rounds == 0:
            raise ConfigError("latency.table=none leaves only the end-to-end figure: "
                              "latency.rounds must be at least 1")
        self.policy()  # table, runtime and strict are checked by the policy

    @property
    def uses_table(self) -> bool:
        return self.table != NO_TABLE

    def policy(self) -> LatencyPolicy:
        """The latency policy of an ablation: variants' missing keys are always measured."""
        return LatencyPolicy(table=self.table if self.uses_table else AUTO, backend=self.backend,
                             runtime=self.runtime, resolution=None, measure_missing=True,
                             strict=self.strict)

    def end_to_end_harness(self, run_dir: Path, progress: bool) -> HarnessConfig:
        """The table's harness, so table and end-to-end figures are comparable; without a
        table, the runtime's default one (:func:`nas.cost.host_table.quick_harness`)."""
        from nas.arch.space import load_space
        from nas.cost.host_table import quick_harness
        from nas.cost.policy import resolve_table

        if not self.uses_table:
            return quick_harness(self.policy().runtime, None)
        return resolve_table(self.policy(), [], run_dir, resume=True, space=load_space(self.space),
                             progress=progress).table.harness_config()


@dataclass(frozen=True)
class AccuracySettings(Config):
    """Proxy accuracy on CIFAR-10 ``val``: a training protocol and seeds (empty: none)."""

    protocol: str = "proxy"
    seeds: tuple[int, ...] = (0, 1)
    threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.seeds, (list, tuple)):
            raise AblationError(f"accuracy.seeds must be a list of seeds (e.g. [0, 1]), got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        for seed in self.seeds:
            check_int("accuracy", "seeds", seed, minimum=0)
        check_int("accuracy", "threads", self.threads, minimum=1)


@dataclass(frozen=True)
class Study:
    """A study: its variants (first one the baseline unless named) and how to measure."""

    name: str
    variants: tuple[Variant, ...]
    baseline: str
    latency: LatencySettings = field(default_factory=LatencySettings)
    accuracy: AccuracySettings = field(default_factory=AccuracySettings)
    notes: str = ""


def study_from_dict(data: dict[str, Any]) -> Study:
    """Read a study config (``nas/conf/ablation/<name>.yaml``); errors name the key."""
    allowed = ("name", "base", "baseline", "variants", "latency", "accuracy", "notes")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise AblationError(f"ablation: unknown key(s) {unknown}; allowed: {list(allowed)}")
    name = str(data.get("name") or "")
    variants_data = data.get("variants")
    if not name or not isinstance(variants_data, dict) or not variants_data:
        raise AblationError("ablation: needs a 'name' and a non-empty 'variants' mapping")
    base = str(data.get("base") or "large")
    variants = tuple(variant_from_dict(str(k), v, base) for k, v in variants_data.items())
    baseline = str(data.get("baseline") or variants[0].name)
    if baseline not in {v.name for v in variants}:
        raise AblationError(f"ablation {name}: baseline {baseline!r} is not one of its variants "
                            f"{[v.name for v in variants]}")
    return Study(name=name, variants=variants, baseline=baseline,
                 latency=config_from_dict(LatencySettings, data.get("latency")),
                 accuracy=config_from_dict(AccuracySettings, data.get("accuracy")),
                 notes=str(data.get("notes") or ""))


# ---------------------------------------------------------------------------- the figures
def measure_costs(specs: dict[str, NetworkSpec], results: Results) -> None:
    from nas.cost.profile import profile_spec

    for name, spec in specs.items():
        arch = to_string(spec)
        if results.get("costs", arch) is None:
            profile = profile_spec(spec)
            results.add({"kind": "costs", "arch": arch, "params": profile.params,
                         "madds": profile.madds})


def table_latency(study: Study, specs: dict[str, NetworkSpec], results: Results, run_dir: Path,
                  progress: bool) -> None:
    """Each variant's lookup-table latency, with the table the latency policy names
    (:mod:`nas.cost.policy`; ``auto``: this host's for ``latency.space``); keys the table
    lacks are measured into its copy in the run folder (the source is never written)."""
    from nas.arch.space import load_space
    from nas.cost.policy import resolve_table

    _check_table_source(study, results)
    todo = {n: s for n, s in specs.items() if results.get("table", to_string(s)) is None}
    if not todo or not study.latency.uses_table:
        return
    resolved = resolve_table(study.latency.policy(), [], run_dir, resume=True,
                             space=load_space(study.latency.space), progress=progress)
    log.info("latency table %s (%s)", resolved.source, resolved.reason)
    for line in resolved.warnings:
        log.warning("%s", line)
    for name, spec in todo.items():
        if spec.resolution != resolved.table.resolution:  # the table keys one deployment input
            results.add({"kind": "table", "arch": to_string(spec), "ms": None,
                         "why": f"table is for {resolved.table.resolution} px"})
            continue
        if resolved.cover(spec, progress=progress):
            log.info("%s: measured the key(s) the table lacked", name)
        results.add({"kind": "table", "arch": to_string(spec), "ms": resolved.table.predict(spec)})


def _check_table_source(study: Study, results: Results) -> None:
    """A run folder's latency figures come from one table and runtime: a study started again
    with others is refused rather than mixing them."""
    settings = study.latency
    source = {"table": settings.table, "runtime": settings.policy().runtime, "space": settings.space}
    recorded = results.get("table_source")
    if recorded is None:
        results.add({"kind": "table_source", **source})
    elif {k: recorded.get(k) for k in source} != source:
        was = {k: recorded.get(k) for k in source}
        raise AblationError(f"this run folder's latency figures were measured with {was}; "
                            f"start a new run folder (hydra.run.dir=...) for {source}")


def end_to_end_latency(study: Study, specs: dict[str, NetworkSpec], results: Results,
                       run_dir: Path, progress: bool) -> None:
    """All variants in the same interleaved rounds (so their ratios share the machine's state)."""
    from nas.cost.calibrate import measure_end_to_end

    rounds = study.latency.rounds
    key = e2e_key(specs, rounds)
    if rounds == 0 or results.get("e2e", key) is not None:
        return
    # The harness of the table the variants were predicted with (the policy's choice is
    # recorded in the run folder, so this is the same table).
    harness = study.latency.end_to_end_harness(run_dir, progress)
    distinct = {to_string(s): s for s in specs.values()}
    figures = measure_end_to_end(list(distinct.values()), harness, rounds=rounds,
                                 progress=progress, desc="end to end")
    results.add({"kind": "e2e", "arch": key, "loadavg": loadavg(),
                 "figures": {arch: fig for arch, fig in zip(distinct, figures)}})


def proxy_accuracy(study: Study, specs: dict[str, NetworkSpec], results: Results, run_dir: Path,
                   progress: bool) -> None:
    """Train every distinct architecture with the protocol, once per seed (resumable)."""
    settings = study.accuracy
    if not settings.seeds:
        return
    import torch

    from nas.training.data import make_loaders
    from nas.training.protocols import load_protocol, with_fields
    from nas.training.train import train

    torch.set_num_threads(settings.threads)
    protocol = load_protocol(settings.protocol, train={"progress": progress})
    key = protocol_key(study.accuracy.protocol)
    archs: dict[str, NetworkSpec] = {}
    for spec in specs.values():  # the first variant of an architecture names its runs
        archs.setdefault(trained_arch(spec, key), spec)
    total = len(archs) * len(settings.seeds)
    done = sum(results.get("top1", a, seed) is not None for a in archs for seed in settings.seeds)
    start = time.monotonic()
    for seed in settings.seeds:
        loaders = None
        for arch, spec in archs.items():
            if results.get("top1", arch, seed) is not None:
                continue
            if loaders is None:
                loaders = make_loaders(protocol.data, seed=seed)
            # Named by architecture and protocol too: a changed variant or protocol never
            # resumes another's checkpoint.
            digest = hashlib.sha256(arch.encode()).hexdigest()[:8]
            folder = run_dir / "checkpoints" / f"{spec.name}-{digest}-seed{seed}"
            cfg = with_fields(protocol, train={"seed": seed, "checkpoint_dir": str(folder)}).train
            result = train(spec, protocol.data, cfg, loaders=loaders, resume=True)
            results.add({"kind": "top1", "arch": arch, "seed": seed, "top1": result.top1,
                         "protocol": settings.protocol, "seconds": result.seconds,
                         "loadavg": loadavg()})
            done += 1
            log.info("accuracy %d/%d: %s seed %d top-1 %.2f%% (%.0f s; %.0f s in all so far)",
                     done, total, spec.name, seed, 100 * result.top1, result.seconds,
                     time.monotonic() - start)


def run_study(study: Study, run_dir: Path, *, progress: bool = True) -> Path:
    """Measure what ``results.jsonl`` lacks, then write the report; returns the CSV's path."""
    from nas.ablate.report import write_report

    specs = {v.name: v.spec() for v in study.variants}
    for name, spec in specs.items():
        save_spec(spec, run_dir / "specs" / f"{name}.yaml")
    results = Results(run_dir)
    measure_costs(specs, results)
    table_latency(study, specs, results, run_dir, progress)
    end_to_end_latency(study, specs, results, run_dir, progress)
    proxy_accuracy(study, specs, results, run_dir, progress)
    return write_report(study, specs, results, run_dir,
                        protocol_key(study.accuracy.protocol) if study.accuracy.seeds else "")


__all__ = ["AccuracySettings", "LatencySettings", "Study", "run_study", "study_from_dict"]
