"""``nas-search``: the Hydra app that runs the latency-aware search (the main job).

    nas-search                                   # embedded default: CIFAR-10, quick supernet, this host's table
    nas-search space=mobilenetv3_large trials=50 sampler=nsga2
    nas-search data=synthetic evaluator=proxy    # offline: synthetic images, proxy training
    nas-search resume=true hydra.run.dir=outputs/search/<previous run>

The run folder (``hydra.run.dir``) receives the study journal, ``trials.csv``,
``pareto.csv``, ``pareto.png`` and one bneck YAML per Pareto member under ``pareto/``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nas._io import OutOfSpaceError, write_text_atomic
from nas.arch.spec import NetworkSpec
from nas.errors import NASError
from nas.search.credentials import hide_passwords, redact, reveal, scrub_folder
from nas.search.fingerprint import check_or_store, study_fingerprint
from nas.search.objective import Objective, StudySettings, counted_trials, enqueue_canonical, make_sampler
from nas.search.outputs import TrialReporter, summary_table, write_outputs
from nas.search.runner import (
    WorkerError,
    WorkerJob,
    load_or_create_study,
    recover_dead_workers,
    requeue_failed,
    run_parallel,
)
from nas.arch.space import SearchSpace, space_from_dict
from nas.search.storage import JournalError, StorageSettings, StorageUnreachableError, open_storage

log = logging.getLogger("nas-search")


class SearchError(NASError, RuntimeError):
    """The run cannot start (bad config, uncovered table, ...); the message says why."""


class SearchInterrupted(NASError):
    """Ctrl-C stopped the run after its outputs were written (exit status 130)."""


RUN_TABLE = "latency_table"  # a run's own copy of its table, with the keys it measured
TABLE_CHOICE = "latency_table.txt"  # which table latency.table=auto chose for this run


def table_dir(name_or_path: str) -> Path:
    """The ``latency.table`` folder (a path relative to the launch directory, or a shipped name)."""
    from nas.cost.table_files import resolve_table_dir

    path = Path(hydra.utils.to_absolute_path(name_or_path)) if HydraConfig.initialized() else Path(name_or_path)
    return resolve_table_dir(path if path.is_dir() else name_or_path)


def space_source(cfg: dict[str, Any]) -> str:
    """The file the ``space`` group was read from (for error messages), else its name."""
    name = f"space '{cfg['space'].get('name', '?')}'"
    if not HydraConfig.initialized():
        return name
    runtime = HydraConfig.get().runtime
    choice = runtime.choices.get("space")
    for source in runtime.config_sources:
        if source.schema == "file":
            candidate = Path(source.path) / "space" / f"{choice}.yaml"
        elif source.schema == "pkg":
            import importlib.util

            spec = importlib.util.find_spec(source.path.replace("/", "."))
            if spec is None or not spec.submodule_search_locations:
                continue
            candidate = Path(list(spec.submodule_search_locations)[0]) / "space" / f"{choice}.yaml"
        else:
            continue
        if candidate.is_file():
            return str(candidate)
    return name


def build_space(cfg: dict[str, Any]) -> SearchSpace:
    return space_from_dict(cfg["space"], space_source(cfg))


def load_table(cfg: dict[str, Any]):
    from nas.cost.lut import LatencyTable

    table = LatencyTable.load(table_dir(cfg["latency"]["table"]))
    table.check_compatible(runtime=cfg["latency"]["runtime"], resolution=cfg["latency"]["resolution"])
    return table


def check_table_host(cfg: dict[str, Any], table) -> None:
    """Say once, in one line, when the table was measured on another CPU or runtime version
    (an error with ``latency.strict=true``)."""
    from nas.cost.table_files import HostMismatchWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HostMismatchWarning)
        table.check_host(strict=cfg["latency"]["strict"])
    for warning in caught:
        if issubclass(warning.category, HostMismatchWarning):
            print(f"nas-search: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def build_evaluator(cfg: dict[str, Any], run_dir: Path):
    """The evaluator named by ``evaluator.kind`` (proxy training or the supernet)."""
    from nas.training.data_config import DataConfig

    kind = cfg["evaluator"]["kind"]
    data_cfg = DataConfig.from_dict(cfg["data"])
    if kind == "proxy":
        from nas.training.proxy import ProxyTrainingEvaluator
        from nas.training.train_config import TrainConfig

        train_cfg = TrainConfig.from_dict(cfg["evaluator"]["train"])
        if cfg["evaluator"].get("protocol"):
            from nas.training.protocols import load_protocol

            # A named protocol replaces the data group and the train section (device and
            # display settings stay the evaluator's).
            protocol = load_protocol(cfg["evaluator"]["protocol"], train={
                "device": train_cfg.device, "progress": train_cfg.progress})
            data_cfg, train_cfg = protocol.data, protocol.train
        cache = run_dir / "proxy_cache.jsonl" if cfg["evaluator"].get("cache", True) else None
        return ProxyTrainingEvaluator(data_cfg, train_cfg, cache_path=cache)
    if kind == "supernet":
        from nas.supernet.evaluator import supernet_evaluator_from_config

        return supernet_evaluator_from_config(cfg, data_cfg, run_dir)
    raise SearchError(f"evaluator.kind must be 'proxy' or 'supernet', got {kind!r}")


def settings_of(cfg: dict[str, Any]) -> StudySettings:
    return StudySettings(mode=cfg["mode"], sampler=cfg["sampler"], seed=cfg["seed"],
                         budget_ms=cfg["budget_ms"], target_ms=cfg["target_ms"],
                         reward_exponent=cfg["reward_exponent"])


def build_objective(args: tuple[dict[str, Any], str]) -> Objective:
    """Worker-side factory: rebuild the objective from the plain config (picklable)."""
    cfg, run_dir = args
    import torch

    # Oversubscribed intra-op threads are catastrophic on a small shared CPU (a 2-core
    # machine under load trained 30x slower with 2 threads than with 1), so each worker
    # uses a fixed, configured number.
    torch.set_num_threads(cfg["threads"])
    space = build_space(cfg)
    table = load_table(cfg)
    cost = None
    if cfg["profile_costs"]:
        from nas.cost.profile import profile_spec

        def cost(spec: NetworkSpec) -> tuple[int, int]:
            prof = profile_spec(spec)
            return prof.madds, prof.params

    return Objective(space=space, evaluator=build_evaluator(cfg, Path(run_dir)),
                     latency=table.predict, settings=settings_of(cfg), cost=cost)


def build_sampler(cfg: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler with this worker start's seed (:func:`worker_seed`)."""
    settings = settings_of(cfg)
    return make_sampler(StudySettings(**{**settings.__dict__, "seed": seed}))


def choose_table(cfg: dict[str, Any], space: SearchSpace, run_dir: Path) -> None:
    """Resolve ``latency.table=auto`` to this host's table (:mod:`nas.cost.host_table`) and
    say, in one line, which table the run uses and why; a pinned table is named as given.

    The choice is written to the run folder, and a resumed run keeps it: a study's trials
    are all scored with one table even if the cache was rebuilt in between.
    """
    from nas.cost.host_table import AUTO, host_table

    latency = cfg["latency"]
    chosen = run_dir / TABLE_CHOICE
    if latency["table"] == AUTO and cfg["resume"] and chosen.is_file():
        latency["table"] = chosen.read_text(encoding="utf-8").strip()
        print(f"nas-search: latency table {latency['table']} (this run's, resumed)", flush=True)
    elif latency["table"] == AUTO:
        choice = host_table(space, runtime=latency["runtime"], resolution=latency["resolution"])
        latency["table"] = str(choice.path)
        write_text_atomic(chosen, f"{choice.path}\n")
        print(f"nas-search: latency table {choice.path}: {choice.reason}", flush=True)
    else:
        print(f"nas-search: latency table {table_dir(latency['table'])} (latency.table, pinned)",
              flush=True)


def ensure_table_covers(cfg: dict[str, Any], space: SearchSpace, run_dir: Path) -> None:
    """Before the first trial: every key of the space is in the table, or measured now.

    Keys measured here extend a copy of the table in ``run_dir/latency_table`` (never the
    configured table, which may be a shipped one), and the run uses that copy; a resumed
    run finds it and measures nothing twice.
    """
    copy = run_dir / RUN_TABLE
    if cfg["latency"]["measure_missing"] and (copy / "table.csv").is_file():
        cfg["latency"]["table"] = str(copy)
    table = load_table(cfg)
    missing = table.missing_keys(space)
    if not missing:
        return
    if not cfg["latency"]["measure_missing"]:
        shown = "\n  ".join(str(k) for k in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise SearchError(
            f"the latency table lacks {len(missing)} key(s) the space {space.name} needs:\n  "
            f"{shown}{more}\nmeasure them with latency.measure_missing=true (on the target "
            "device) or `nas-lut build`"
        )
    log.info("measuring %d missing latency key(s) on this machine into %s", len(missing), copy)
    table.build(space, progress=True, save_to=copy)
    cfg["latency"]["table"] = str(copy)


# Top-level keys whose type Hydra does not check (the YAML has no schema): (kind, minimum).
_TYPED_KEYS: dict[str, tuple[str, float | None]] = {
    "trials": ("int", 1), "n_workers": ("int", 1), "threads": ("int", 1), "seed": ("int", 0),
    "heartbeat_interval": ("int", 1), "budget_ms": ("number?", None), "target_ms": ("number?", None),
    "reward_exponent": ("number?", None), "resume": ("bool", None), "profile_costs": ("bool", None),
    "storage": ("str?", None), "study_name": ("str", None), "mode": ("str", None),
    "sampler": ("str", None), "latency.table": ("str", None), "latency.runtime": ("str", None),
    "latency.resolution": ("int", 8), "latency.measure_missing": ("bool", None),
    "latency.strict": ("bool", None),
}


def check_config(cfg: dict[str, Any]) -> None:
    """Refuse a mistyped value with a message naming the key (``trials=abc``, ``n_workers=0``)."""
    for key, (kind, minimum) in _TYPED_KEYS.items():
        value: Any = cfg
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise SearchError(f"config key {key} is missing")
            value = value[part]
        optional = kind.endswith("?")
        if optional and value is None:
            continue
        base = kind.rstrip("?")
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool),
              "str": isinstance(value, str) and value != ""}[base]
        if ok and minimum is not None and value < minimum:
            ok = False
        if not ok:
            wanted = {"int": "an integer", "number": "a number", "bool": "true or false",
                      "str": "a non-empty string"}[base]
            bound = f" >= {minimum:g}" if minimum is not None else ""
            null = " or null" if optional else ""
            raise SearchError(f"{key} must be {wanted}{bound}{null}, got {value!r}")


def check_data_root(cfg: dict[str, Any]) -> None:
    """Refuse a data folder that is not there before a study or run folder is made."""
    data = cfg["data"]
    if cfg["evaluator"].get("protocol") or data.get("name") == "synthetic" or not data.get("root"):
        return  # a protocol brings its own data (checked when it loads); synthetic has none
    root = Path(str(data["root"])).expanduser()
    if not root.is_dir():
        raise SearchError(
            f"data.root {data['root']} ({root.resolve()}): no such directory (data={data.get('name')}; "
            "the default, CIFAR-10, is ../shared/datasets/cifar10 beside the checkout): run from "
            "the checkout, set data.root=<the folder>, or run offline with data=synthetic "
            "evaluator=proxy")


def run(cfg: dict[str, Any], run_dir: Path) -> optuna.Study:
    """Run (or resume) the study described by ``cfg``; outputs land in ``run_dir``."""
    check_config(cfg)
    space = build_space(cfg)
    check_data_root(cfg)
    settings = settings_of(cfg)
    choose_table(cfg, space, run_dir)
    ensure_table_covers(cfg, space, run_dir)
    table = load_table(cfg)
    check_table_host(cfg, table)
    storage_settings = StorageSettings(run_dir=str(run_dir), url=reveal(cfg["storage"]),
                                       heartbeat_interval=cfg["heartbeat_interval"],
                                       grace_period=3 * cfg["heartbeat_interval"])
    storage = open_storage(storage_settings)
    study = load_or_create_study(storage, study_name=cfg["study_name"], directions=settings.directions,
                                 sampler=make_sampler(settings), resume=cfg["resume"])
    # Before anything of this start reaches the study: refuse settings that differ from it.
    check_or_store(study, study_fingerprint(cfg, table, space))
    with warnings.catch_warnings():  # experimental in Optuna, but shown by optuna-dashboard
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["top1", "latency_ms"] if settings.mode == "pareto" else ["reward"])
    protocol = cfg["evaluator"].get("protocol")
    data = f"protocol {protocol}" if protocol else cfg["data"].get("name")
    study.set_user_attr("context", {  # named in the plot's title and kept with the study
        "space": space.name, "data": data, "evaluator": cfg["evaluator"]["kind"],
        "table": Path(str(cfg["latency"]["table"])).name, "budget_ms": cfg["budget_ms"]})
    recover_dead_workers(study, heartbeat=storage_settings.url is not None)
    retried = requeue_failed(study)
    if retried:
        log.info("retrying failed, killed or interrupted trial(s) %s first", retried)
    enqueue_canonical(study, space)
    done = counted_trials(study)
    log.info("study %s: %d of %d trial(s) complete, %d worker(s) here; run folder %s",
             cfg["study_name"], done, cfg["trials"], cfg["n_workers"], run_dir)
    interrupted = False
    try:
        if done < cfg["trials"]:
            job = WorkerJob(storage=storage_settings, study_name=cfg["study_name"],
                            factory=build_objective, factory_args=(cfg, str(run_dir)),
                            budget=cfg["trials"], sampler_factory=build_sampler, sampler_args=cfg,
                            seed=cfg["seed"], created_study=not cfg["resume"],
                            on_trial_end=TrialReporter(run_dir, cfg["trials"]))
            run_parallel(job, cfg["n_workers"])
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing the outputs of the finished trials")
    finally:
        study = optuna.load_study(study_name=cfg["study_name"], storage=storage)
        paths = write_outputs(study, run_dir)
        print(summary_table(study))
        print(f"outputs: {', '.join(str(p) for p in paths.values())}")
    if interrupted:
        raise SearchInterrupted
    return study


@hydra.main(version_base="1.3", config_path="../conf", config_name="search")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # A password that came from a config file rather than the command line (which main()
    # has cleaned) was written by Hydra before this point: take it out again.
    scrub_folder(run_dir / ".hydra")
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    try:
        run(plain, run_dir)
    except SearchInterrupted:
        raise SystemExit(130) from None  # the shell's code for Ctrl-C; outputs are written
    except (WorkerError, JournalError, StorageUnreachableError, OutOfSpaceError) as err:
        print(f"nas-search: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except (SearchError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        # Configuration problems end with one line and exit code 2, not a traceback.
        print(f"nas-search: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        if not type(err).__module__.startswith("sqlalchemy"):
            raise
        # The study database went away mid-run (opening it is checked in open_storage).
        reason = str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__]
        print(f"nas-search: error: the study database failed mid-run: {redact(reason[0])}; finished "
              "trials are kept: resume with resume=true when it is back", file=sys.stderr)
        raise SystemExit(1) from None


def main() -> None:
    """Console entry point."""
    from nas.cli.hydra_app import run_hydra_app

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Hydra writes the command line into the run folder and its logs: no password reaches it.
    sys.argv = hide_passwords(sys.argv)
    run_hydra_app("nas-search", _hydra_main)


if __name__ == "__main__":
    main()
