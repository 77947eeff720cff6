"""``nas-search``: the Hydra app that runs the latency-aware search (the main job).

    nas-search                                   # embedded default: CIFAR-10, quick supernet, this host's table
    nas-search space=mobilenetv3_large trials=50 sampler=nsga2
    nas-search data=synthetic evaluator=proxy    # offline: synthetic images, proxy training
    nas-search resume=true hydra.run.dir=outputs/search/<previous run>

The run folder (``hydra.run.dir``) receives the study journal, ``trials.csv``,
``pareto.csv``, ``pareto.png`` and one bneck YAML per Pareto member under ``pareto/``.
This module composes the configuration, hands it to :class:`nas.search.pipeline.SearchRun`
and prints; the run itself is library code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nas._io import OutOfSpaceError
from nas.cli.hydra_app import job_config
from nas.errors import NASError
from nas.search.config import SearchConfig
from nas.search.credentials import hide_passwords, redact, scrub_folder
from nas.search.outputs import summary_table
from nas.search.pipeline import SearchInterrupted, SearchRun
from nas.search.runner import WorkerError
from nas.search.storage import JournalError, StorageUnreachableError


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


def _say(line: str) -> None:
    stream = sys.stderr if line.startswith("warning:") else sys.stdout
    print(f"nas-search: {line}", file=stream, flush=True)


def _print_summary(study: optuna.Study, run: SearchRun) -> None:
    print(summary_table(study))
    print(f"outputs: {', '.join(str(p) for p in run.outputs.values())}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="search")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir, plain = job_config(cfg)
    # A password that came from a config file rather than the command line (which main()
    # has cleaned) was written by Hydra before this point: take it out again.
    scrub_folder(run_dir / ".hydra")
    try:
        run = SearchRun(SearchConfig.from_dict(plain), run_dir, space_origin=space_source(plain),
                        report=_say)
        study = run.run()
    except SearchInterrupted as stop:
        _print_summary(stop.study, run)
        raise SystemExit(130) from None  # the shell's code for Ctrl-C; outputs are written
    except (WorkerError, JournalError, StorageUnreachableError, OutOfSpaceError) as err:
        print(f"nas-search: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except (NASError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
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
    if study is None:
        print(f"nas-search: rank {os.environ.get('RANK')}: the supernet is trained; rank 0 runs the search")
        return
    _print_summary(study, run)


def main() -> None:
    """Console entry point."""
    from nas.cli.hydra_app import run_hydra_app

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Hydra writes the command line into the run folder and its logs: no password reaches it.
    sys.argv = hide_passwords(sys.argv)
    run_hydra_app("nas-search", _hydra_main)


if __name__ == "__main__":
    main()
