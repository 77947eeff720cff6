"""The search and NetAdapt runs from Python, configured exactly as their commands are.

``run_search(run_dir, overrides=["trials=20"])`` composes the same Hydra configuration as
``nas-search trials=20`` (``nas/conf/search.yaml`` and its groups) and runs it in
``run_dir``; likewise :func:`run_netadapt` for ``nas-netadapt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from nas.netadapt.loop import NetAdaptResult

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


def run_search(run_dir: str | Path, *, overrides: Sequence[str] = ()) -> optuna.Study:
    """Run (or with ``resume=true`` continue) a search in ``run_dir``; returns the study."""
    from nas.cli.search import run

    return run(compose_config("search", overrides), Path(run_dir))


def run_netadapt(run_dir: str | Path, *, overrides: Sequence[str] = ()) -> NetAdaptResult:
    """Run (or with ``resume=true`` continue) a NetAdapt refinement in ``run_dir``."""
    from nas.cli.netadapt import run

    return run(compose_config("netadapt", overrides), Path(run_dir))
