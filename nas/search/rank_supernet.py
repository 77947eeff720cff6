"""The main job's supernet phase on several processes: ``torchrun ... nas-search``.

Under ``torchrun`` every rank starts the same ``nas-search`` command. Before anything else
the ranks train the search's supernet together, data-parallel (:mod:`nas.supernet.parallel`:
each rank its slice of every global batch, rank 0 writes ``<run>/supernet/supernet.pt``);
then they leave the process group, the other ranks end, and rank 0 runs the search, whose
evaluator finds that finished supernet in the run folder and scores candidates with it (the
search's trials are cheap next to the supernet; ``n_workers`` and a shared storage spread
them). A resumed start resumes the training from rank 0's last checkpoint.

The ranks must share the run folder (``hydra.run.dir=<folder>``: Hydra's default folder is
named by the second each process started) and everything the training reads; they refuse,
in one line, before the first step otherwise.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from nas.config import ConfigError
from nas.search.config import SearchConfig

log = logging.getLogger(__name__)

SUPERNET_KINDS = ("supernet", "predictor")


def world_size() -> int:
    """How many processes ``torchrun`` started (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def train_supernet_on_ranks(config: SearchConfig, run_dir: Path, say: Callable[[str], None]) -> bool:
    """Under ``torchrun``: train the search's supernet on all ranks (module docstring).
    Returns whether this process goes on with the search: always outside ``torchrun``, on
    rank 0 only under it."""
    if world_size() <= 1:
        return True
    kind = config.evaluator.get("kind")
    if kind not in SUPERNET_KINDS:
        raise ConfigError(f"under torchrun nas-search trains its supernet on every rank; "
                          f"evaluator={kind} has no supernet: start it without torchrun "
                          "(n_workers=<n> runs trials in parallel)")
    plain = config.to_dict()
    if kind == "predictor":
        from nas.search.predictor_search import supernet_section

        plain["evaluator"] = supernet_section(plain["evaluator"])
    from nas.search.report import search_data
    from nas.search.selection import selection_data
    from nas.supernet.evaluator import SupernetEvaluatorConfig, search_training, space_of_config
    from nas.supernet.train import new_supernet, train_supernet
    from nas.training.data import make_loaders
    from nas.training.distributed import init_from_env, shutdown
    from nas.training.train_config import resolve_device

    ev_cfg = SupernetEvaluatorConfig.from_dict(plain["evaluator"])
    if ev_cfg.checkpoint:
        raise ConfigError(f"under torchrun nas-search trains its supernet on every rank, but "
                          f"evaluator.checkpoint={ev_cfg.checkpoint} is given: start the search "
                          "without torchrun")
    train_cfg, folder = search_training(ev_cfg, run_dir)
    data_cfg = selection_data(search_data(config), config.selection)
    parallel = init_from_env(train_cfg.device)
    try:
        # Rank 0's supernet must land in the folder every rank's search reads.
        parallel.agree({"run folder": str(Path(run_dir).resolve())})
        loaders = make_loaders(data_cfg, seed=train_cfg.seed,
                               pin_memory=resolve_device(train_cfg.device).type == "cuda",
                               rank=parallel.rank, world=parallel.world)
        space = space_of_config(plain)
        if parallel.rank == 0:
            say(f"training the supernet on {parallel.world} processes into {folder} (rank 0 "
                "then runs the search)")
        result = train_supernet(new_supernet(space, loaders.num_classes, train_cfg), data_cfg, train_cfg,
                                checkpoint_dir=folder, resume=True, loaders=loaders, parallel=parallel)
    finally:
        shutdown()
    if parallel.rank == 0:
        say(f"supernet ready: {result.steps} steps on {result.processes} processes, "
            f"{result.seconds:.0f} s ({result.images_per_second:.1f} images/s)")
    return parallel.rank == 0


__all__ = ["train_supernet_on_ranks", "world_size"]
