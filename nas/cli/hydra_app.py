"""Running a Hydra app as a console command: composition errors and malformed config files
end with one line ``<prog>: error: ...`` and exit status 2, a full disk with one line and
status 1, not Hydra's traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from nas._io import OutOfSpaceError, is_out_of_space
from nas.interrupts import install_sigint_handler


def job_config(cfg: Any) -> tuple[Path, dict[str, Any]]:
    """Inside a Hydra job: its run folder and the composed config as plain, resolved data."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return Path(HydraConfig.get().runtime.output_dir), plain


def run_hydra_app(prog: str, hydra_main: Callable[[], None]) -> None:
    """Call a ``@hydra.main`` function as the command ``prog``."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    install_sigint_handler()
    # Let composition errors reach the handlers below instead of Hydra's printed traceback.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        hydra_main()
    except KeyboardInterrupt:  # before the job started (composing, writing .hydra/)
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except yaml.YAMLError as err:  # a config file (e.g. a custom space) that is not YAML
        mark = getattr(err, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}" if mark is not None else "a config file"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        print(f"{prog}: error: {where}: not valid YAML ({problem})", file=sys.stderr)
        raise SystemExit(2) from None
    except (HydraException, OmegaConfBaseException) as err:  # unknown group, bad override
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{prog}: error: {first}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        if not is_out_of_space(err):
            raise
        # Hydra itself writes the run folder's .hydra/ before the job starts.
        if not isinstance(err, OutOfSpaceError):
            err = OutOfSpaceError(err.filename or "the run folder", "the run's configuration (.hydra/)")
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


__all__ = ["job_config", "run_hydra_app"]
