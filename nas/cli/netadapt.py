"""``nas-netadapt``: refine a trained network to a latency target with NetAdapt (Hydra app).

    nas-netadapt arch=path/to/bneck.yaml weights=start.pth target_ms=5.0
    nas-netadapt arch=small target_fraction=0.75 data=cifar10_subset     # proxy-trains first
    nas-netadapt search_run=outputs/search/<run> target_fraction=0.75  # most accurate member
    nas-netadapt resume=true hydra.run.dir=outputs/netadapt/<previous run>

The run folder (``hydra.run.dir``) receives ``history.csv`` (every proposal evaluated, and
which was picked), ``trajectory.png``, the final ``netadapt.yaml`` and ``netadapt.pth``,
``summary.json``, and a checkpoint per step under ``steps/`` (what ``resume=true`` continues
from). Bad input ends with one line ``nas-netadapt: error: ...`` and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nas.arch.spec import NetworkSpec
from nas.errors import NASError

log = logging.getLogger("nas-netadapt")

SAVE_MEASURED = ("run", "table", "none")


class NetAdaptCliError(NASError, ValueError):
    """The run cannot start as configured; the message says why."""


def _path(value: str) -> Path:
    return Path(hydra.utils.to_absolute_path(value)) if HydraConfig.initialized() else Path(value)


# ---------------------------------------------------------------------------- inputs
def best_of_search(run: str | Path) -> NetworkSpec:
    """The most accurate Pareto member of a ``nas-search`` run (ties: the faster one)."""
    import pandas as pd

    from nas.arch.codecs import from_string, load_spec

    run = Path(run)
    csv = run / "pareto.csv"
    if not csv.is_file():
        raise NetAdaptCliError(f"search_run: {csv}: no such file (is {run} a nas-search run folder?)")
    frame = pd.read_csv(csv)
    frame = frame[frame["accuracy"].notna()] if "accuracy" in frame.columns else frame.iloc[0:0]
    if frame.empty:
        raise NetAdaptCliError(f"search_run: {csv} lists no scored Pareto member")
    best = frame.sort_values(["accuracy", "latency_ms"], ascending=[False, True]).iloc[0]
    yaml_path = run / "pareto" / f"trial{int(best['number']):04d}.yaml"
    if yaml_path.is_file():
        return load_spec(yaml_path)
    return from_string(str(best["spec"]))


def warn_on_other_data(run: Path, data: dict[str, Any]) -> None:
    """Say so when the search run scored its networks on other data than NetAdapt will use
    (the search's composed config, ``<run>/.hydra/config.yaml``, names it)."""
    import yaml

    composed = run / ".hydra" / "config.yaml"
    if not composed.is_file():
        return
    searched = (yaml.safe_load(composed.read_text(encoding="utf-8")) or {}).get("data") or {}
    differ = [f"{key} {searched.get(key)!r} there, {data.get(key)!r} here"
              for key in ("name", "root", "resolution", "num_classes") if searched.get(key) != data.get(key)]
    if differ:
        log.warning("search_run %s searched on other data (%s); pass data=... to adapt on the "
                    "search's data", run, "; ".join(differ))


def start_spec(cfg: dict[str, Any]) -> NetworkSpec:
    """The network to adapt: ``arch`` (a YAML or canonical name) or ``search_run``'s best."""
    from nas.arch.codecs import load_spec

    if (cfg["arch"] is None) == (cfg["search_run"] is None):
        raise NetAdaptCliError("give exactly one of arch=<bneck YAML or name> and search_run=<folder>")
    if cfg["search_run"] is not None:
        run = _path(str(cfg["search_run"]))
        warn_on_other_data(run, cfg["data"])
        return best_of_search(run)
    arch = str(cfg["arch"])
    from nas.arch.codecs import CANONICAL_NAMES

    if arch in CANONICAL_NAMES or arch in CANONICAL_NAMES.values():
        return load_spec(arch)
    return load_spec(_path(arch))


def table_dir(name_or_path: str) -> Path:
    """The ``latency.table`` folder (a path relative to the launch directory, or a shipped name)."""
    from nas.cost.table_files import resolve_table_dir

    path = _path(name_or_path)
    return resolve_table_dir(path if path.is_dir() else name_or_path)


def make_latency(cfg: dict[str, Any], run_dir: Path):
    """The table (a run-folder copy when ``save_measured=run`` and one exists) as a latency model."""
    from nas.cost.lut import LatencyTable
    from nas.netadapt.latency import TableLatency

    lat = cfg["latency"]
    if lat["save_measured"] not in SAVE_MEASURED:
        raise NetAdaptCliError(f"latency.save_measured must be one of {list(SAVE_MEASURED)}, "
                               f"got {lat['save_measured']!r}")
    copy = run_dir / "latency_table"
    source = table_dir(str(lat["table"]))
    # The run's copy holds what earlier attempts measured: resuming predicts the same.
    table = LatencyTable.load(copy if lat["save_measured"] == "run" and copy.is_dir() else source)
    table.check_compatible(runtime=lat["runtime"])
    save_to = {"run": copy, "table": source, "none": None}[lat["save_measured"]]
    return TableLatency(table, measure_missing=bool(lat["measure_missing"]), save_to=save_to,
                        mode=str(lat["measure"]))


def start_model(spec: NetworkSpec, cfg: dict[str, Any], tuner, run_dir: Path):
    """The start network's weights: ``weights=`` or a proxy training (resumable)."""
    import torch

    from nas.models.builder import build_model
    from nas.training.train import load_weights, train
    from nas.training.train_config import TrainConfig

    num_classes = tuner.num_classes
    model = build_model(spec, num_classes=num_classes)
    if cfg["weights"] is not None:
        reinitialised = load_weights(model, _path(str(cfg["weights"])))
        if reinitialised:
            raise NetAdaptCliError(f"weights: {cfg['weights']} has another class count than the data "
                                   f"({num_classes}); its classifier would be random")
        return model
    saved = run_dir / "start.pth"
    if saved.is_file():
        model.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
        return model
    pre = TrainConfig.from_dict({**cfg["pretrain"], "checkpoint_dir": str(run_dir / "pretrain")})
    log.info("no weights given: proxy-training the start network (%s)", pre.settings())
    # On the selection data: the holdout must stay unseen by the start too.
    model = train(spec, tuner.select_cfg, pre, resume=True).model
    torch.save(model.state_dict(), saved)
    return model


# ---------------------------------------------------------------------------- run
def run(cfg: dict[str, Any], run_dir: Path):
    """Adapt the configured network; returns :class:`nas.netadapt.loop.NetAdaptResult`."""
    import torch

    from nas.netadapt.config import NetAdaptConfig
    from nas.netadapt.finetune import FineTuner
    from nas.netadapt.loop import netadapt
    from nas.training.data_config import DataConfig
    from nas.training.train_config import TrainConfig

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if (cfg["target_ms"] is None) == (cfg["target_fraction"] is None):
        raise NetAdaptCliError("give exactly one of target_ms=<ms> and target_fraction=<0..1>")
    na_cfg = NetAdaptConfig.from_dict({**cfg["netadapt"], "target_ms": cfg["target_ms"],
                                       "target_fraction": cfg["target_fraction"]})
    spec = start_spec(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    latency = make_latency(cfg, run_dir)
    start_ms = latency(spec)
    na_cfg.target_for(start_ms)  # a bad target fails before any training
    data_cfg = DataConfig.from_dict(cfg["data"])
    tuner = FineTuner(data_cfg, TrainConfig.from_dict(cfg["short_term"]),
                      TrainConfig.from_dict(cfg["long_term"]) if cfg["long_term"] else None,
                      selection=cfg["selection"])
    from nas.netadapt.run_folder import RunFolder

    if RunFolder(run_dir).latest() is not None and not cfg["resume"]:
        raise NetAdaptCliError(f"{run_dir} already holds a refinement; pass resume=true to continue it")
    model = start_model(spec, cfg, tuner, run_dir)
    result = netadapt(spec, model, latency, na_cfg, tuner, run_dir, resume=bool(cfg["resume"]))
    print(f"NetAdapt ({na_cfg.rule} rule): {result.start_ms:.3f} -> {result.latency_ms:.3f} ms "
          f"(target {result.target_ms:.3f}) in {result.steps} step(s), stopped: {result.stopped}")
    print(f"val top-1: start {result.start_top1:.4f}, final {result.top1:.4f}; "
          f"{result.measured_keys} latency key(s) measured")
    print(f"outputs: {', '.join(str(p) for p in result.paths.values())}")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="netadapt")
def _hydra_main(cfg: DictConfig) -> None:
    from nas.training.train import CheckpointError, NonFiniteLossError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    try:
        run(plain, run_dir)
    except (ValueError, FileNotFoundError, KeyError, CheckpointError, NonFiniteLossError) as err:
        # Bad input ends with one line and exit status 2, not a traceback (KeyError: a
        # latency key the table lacks with measure_missing=false).
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"nas-netadapt: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    """Console entry point."""
    from nas.cli.hydra_app import run_hydra_app

    run_hydra_app("nas-netadapt", _hydra_main)


if __name__ == "__main__":
    main()
