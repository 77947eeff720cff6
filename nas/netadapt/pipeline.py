"""A NetAdapt refinement as a library object: the network to start from, the latency model
(the ``latency`` policy of :mod:`nas.cost.policy`), the start weights, the loop.

``nas-netadapt`` composes the configuration with Hydra and prints; :func:`nas.run_netadapt`
and the experiments call :func:`run_netadapt_config` directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nas.arch.spec import NetworkSpec
from nas.cost.policy import RUN_COPY
from nas.errors import NASError

log = logging.getLogger(__name__)


class NetAdaptRunError(NASError, ValueError):
    """The run cannot start as configured; the message says why."""


def _path(value: str) -> Path:
    """A path of the config, relative to the directory the run was started in."""
    return Path(value).expanduser()


# ---------------------------------------------------------------------------- inputs
def best_of_search(run: str | Path) -> NetworkSpec:
    """The most accurate Pareto member of a ``nas-search`` run (ties: the faster one)."""
    import pandas as pd

    from nas.arch.codecs import from_string, load_spec

    run = Path(run)
    csv = run / "pareto.csv"
    if not csv.is_file():
        raise NetAdaptRunError(f"search_run: {csv}: no such file (is {run} a nas-search run folder?)")
    frame = pd.read_csv(csv)
    frame = frame[frame["accuracy"].notna()] if "accuracy" in frame.columns else frame.iloc[0:0]
    if frame.empty:
        raise NetAdaptRunError(f"search_run: {csv} lists no scored Pareto member")
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


def _searched_space(search_run: str | None) -> str:
    """The space a ``nas-search`` run searched (its composed config names it): the space
    whose keys ``latency.table=auto`` builds a table for."""
    import yaml

    composed = _path(search_run) / ".hydra" / "config.yaml" if search_run else None
    if composed is not None and composed.is_file():
        space = (yaml.safe_load(composed.read_text(encoding="utf-8")) or {}).get("space") or {}
        if isinstance(space, dict) and space.get("name"):
            return str(space["name"])
    raise NetAdaptRunError("latency.table=auto builds this host's table for a search space: give "
                           "latency.space=mobilenetv3_small or mobilenetv3_large (or a search_run "
                           "whose .hydra/config.yaml names its space), or pin latency.table=<folder>")


def start_spec(cfg: dict[str, Any]) -> NetworkSpec:
    """The network to adapt: ``arch`` (a YAML or canonical name) or ``search_run``'s best."""
    from nas.arch.codecs import load_spec

    if (cfg["arch"] is None) == (cfg["search_run"] is None):
        raise NetAdaptRunError("give exactly one of arch=<bneck YAML or name> and search_run=<folder>")
    if cfg["search_run"] is not None:
        run = _path(str(cfg["search_run"]))
        warn_on_other_data(run, cfg["data"])
        return best_of_search(run)
    arch = str(cfg["arch"])
    from nas.arch.codecs import CANONICAL_NAMES

    if arch in CANONICAL_NAMES or arch in CANONICAL_NAMES.values():
        return load_spec(arch)
    return load_spec(_path(arch))


def make_latency(cfg: dict[str, Any], spec: NetworkSpec, run_dir: Path, *, resume: bool):
    """The latency model NetAdapt steers by: the table the ``latency`` policy names
    (:mod:`nas.cost.policy`), keys measured on demand into the run's copy of it."""
    from nas.cost.harness import TORCH_RUNTIMES
    from nas.arch.space import load_space
    from nas.cost.policy import AUTO, LatencyPolicy, resolve_table
    from nas.netadapt.latency import TableLatency

    lat = dict(cfg["latency"])
    mode = str(lat.pop("measure", "table"))
    space_name = lat.pop("space", None)
    policy = LatencyPolicy.from_dict({"resolution": None, **lat})
    if mode == "anchored" and policy.runtime not in TORCH_RUNTIMES:
        # Anchoring times keys inside a torch forward pass; a backend's keys are converted
        # and timed alone, as its table was built.
        log.info("latency.measure=anchored needs a torch runtime; %s keys are measured as the "
                 "table measures them (latency.measure=table)", policy.runtime)
        mode = "table"
    # The start network's keys now (a table that lacks them and may not measure stops here);
    # the proposals' keys as NetAdapt meets them, into the same run copy.
    space = None
    if policy.table == AUTO:
        space = load_space(space_name or _searched_space(cfg.get("search_run")))
    resolved = resolve_table(policy, spec, run_dir, resume=resume, space=space)
    log.info("latency table %s: %s", resolved.source, resolved.reason)
    for line in resolved.warnings:
        log.warning("%s", line)
    save_to = run_dir / RUN_COPY if policy.measure_missing else None
    return TableLatency(resolved.table, measure_missing=policy.measure_missing, save_to=save_to, mode=mode)


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
            raise NetAdaptRunError(f"weights: {cfg['weights']} has another class count than the data "
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
def run_netadapt_config(cfg: dict[str, Any], run_dir: Path):
    """Adapt the network ``cfg`` (the ``nas-netadapt`` configuration as a mapping) names;
    returns :class:`nas.netadapt.loop.NetAdaptResult`."""
    import torch

    from nas.netadapt.config import NetAdaptConfig
    from nas.netadapt.finetune import FineTuner
    from nas.netadapt.loop import netadapt
    from nas.training.data_config import DataConfig
    from nas.training.train_config import TrainConfig

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if (cfg["target_ms"] is None) == (cfg["target_fraction"] is None):
        raise NetAdaptRunError("give exactly one of target_ms=<ms> and target_fraction=<0..1>")
    na_cfg = NetAdaptConfig.from_dict({**cfg["netadapt"], "target_ms": cfg["target_ms"],
                                       "target_fraction": cfg["target_fraction"]})
    spec = start_spec(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    latency = make_latency(cfg, spec, run_dir, resume=bool(cfg["resume"]))
    start_ms = latency(spec)
    na_cfg.target_for(start_ms)  # a bad target fails before any training
    data_cfg = DataConfig.from_dict(cfg["data"])
    tuner = FineTuner(data_cfg, TrainConfig.from_dict(cfg["short_term"]),
                      TrainConfig.from_dict(cfg["long_term"]) if cfg["long_term"] else None,
                      selection=cfg["selection"])
    from nas.netadapt.run_folder import RunFolder

    if RunFolder(run_dir).latest() is not None and not cfg["resume"]:
        raise NetAdaptRunError(f"{run_dir} already holds a refinement; pass resume=true to continue it")
    model = start_model(spec, cfg, tuner, run_dir)
    result = netadapt(spec, model, latency, na_cfg, tuner, run_dir, resume=bool(cfg["resume"]))
    return result


__all__ = ["NetAdaptRunError", "best_of_search", "make_latency", "run_netadapt_config", "start_spec"]
