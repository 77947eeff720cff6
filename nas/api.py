"""The search and NetAdapt runs from Python.

``run_search(run_dir, trials=20, sampler="random")`` runs the search configured by
``nas/conf/search.yaml`` with those settings changed; a :class:`~nas.search.config.SearchConfig`
can be passed whole instead, and Hydra-style ``overrides`` (``["space=mobilenetv3_large",
"data=synthetic"]``, the same strings as on the ``nas-search`` command line) choose config
groups. Likewise :func:`run_netadapt` for ``nas-netadapt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from nas.netadapt.loop import NetAdaptResult
    from nas.search.config import SearchConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved configuration a command would run with these command-line overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return plain


def _with_settings(plain: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``plain`` with top-level ``settings``; a mapping is merged into that section."""
    for name, value in settings.items():
        if isinstance(value, dict) and isinstance(plain.get(name), dict):
            value = {**plain[name], **value}
        elif hasattr(value, "to_dict") and isinstance(plain.get(name), dict):
            value = value.to_dict()  # a config object (e.g. a LatencyPolicy) for a section
        plain[name] = value
    return plain


def search_config(*, overrides: Sequence[str] = (), **settings: Any) -> SearchConfig:
    """The search's configuration: the defaults, ``overrides``, then ``settings`` (top-level
    fields of :class:`~nas.search.config.SearchConfig`; a mapping or config object for
    ``latency``, ``data`` or ``evaluator`` is merged into that section)."""
    from nas.search.config import SearchConfig

    return SearchConfig.from_dict(_with_settings(compose_config("search", overrides), settings))


def run_search(run_dir: str | Path, config: SearchConfig | None = None, *,
               overrides: Sequence[str] = (), **settings: Any) -> optuna.Study:
    """Run (or with ``resume=True`` continue) a search in ``run_dir``; returns the study."""
    from nas.search.pipeline import SearchRun

    if config is None:
        config = search_config(overrides=overrides, **settings)
    elif overrides or settings:
        raise TypeError("run_search: pass a config, or overrides and settings, not both")
    return SearchRun(config, Path(run_dir)).run()


def run_netadapt(run_dir: str | Path, *, overrides: Sequence[str] = (), **settings: Any) -> NetAdaptResult:
    """Run (or with ``resume=True`` continue) a NetAdapt refinement in ``run_dir``: the
    defaults of ``nas/conf/netadapt.yaml``, ``overrides``, then ``settings`` (``arch="small"``,
    ``target_fraction=0.8``, ``latency=LatencyPolicy(...)`` or a mapping per section)."""
    from nas.netadapt.pipeline import run_netadapt_config

    return run_netadapt_config(_with_settings(compose_config("netadapt", overrides), settings),
                               Path(run_dir))
