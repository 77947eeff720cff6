"""``nas-ablate``: reproduce one of the paper's ablations (Hydra app; ``-m`` runs several).

    nas-ablate ablation=nonlinearities                       # Table 5, fused and unfused h-swish
    nas-ablate -m ablation=last_stage,stem,se,soft           # several studies, one folder each
    nas-ablate ablation=multipliers_small ablation.accuracy.seeds=[0,1]
    nas-ablate ablation=stem hydra.run.dir=outputs/ablate/stem/<previous run>   # resume

The studies live in ``nas/conf/ablation/``. The run folder receives ``ablation.csv``,
``ablation.md`` (ours and the paper's figures side by side), ``ablation.png``, the variants'
bneck YAMLs under ``specs/``, the run's copy of the latency table (when keys were measured)
and ``results.jsonl``
(every figure as it is measured: a study started again in the same folder goes on where it
stopped). Bad input ends with one line ``nas-ablate: error: ...`` and exit status 2.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from nas.cli.hydra_app import job_config
from nas.errors import NASError

log = logging.getLogger("nas-ablate")


@hydra.main(version_base="1.3", config_path="../conf", config_name="ablate")
def _hydra_main(cfg: DictConfig) -> None:
    from nas.ablate.study import run_study, study_from_dict

    run_dir, plain = job_config(cfg)
    try:
        study = study_from_dict(plain["ablation"])
        csv = run_study(study, run_dir, progress=bool(plain.get("progress", True)))
    except KeyboardInterrupt:
        print(f"nas-ablate: interrupted; what was measured is in {run_dir / 'results.jsonl'} "
              f"(start again with hydra.run.dir={run_dir} to go on)", file=sys.stderr)
        raise SystemExit(130) from None
    except (NASError, FileNotFoundError) as err:
        print(f"nas-ablate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print((run_dir / "ablation.md").read_text(encoding="utf-8"))
    print(f"outputs: {csv}, {run_dir / 'ablation.md'}, {run_dir / 'ablation.png'}")


def main() -> None:
    """Console entry point."""
    from nas.cli.hydra_app import run_hydra_app

    run_hydra_app("nas-ablate", _hydra_main)


if __name__ == "__main__":
    main()
