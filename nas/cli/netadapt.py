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

import sys

import hydra
from omegaconf import DictConfig

from nas.cli.hydra_app import job_config


@hydra.main(version_base="1.3", config_path="../conf", config_name="netadapt")
def _hydra_main(cfg: DictConfig) -> None:
    from nas.netadapt.pipeline import run_netadapt_config
    from nas.training.train import CheckpointError, NonFiniteLossError

    run_dir, plain = job_config(cfg)
    try:
        result = run_netadapt_config(plain, run_dir)
    except (ValueError, FileNotFoundError, KeyError, CheckpointError, NonFiniteLossError) as err:
        # Bad input ends with one line and exit status 2, not a traceback (KeyError: a
        # latency key the table lacks with measure_missing=false).
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"nas-netadapt: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"NetAdapt ({plain['netadapt']['rule']} rule): {result.start_ms:.3f} -> {result.latency_ms:.3f} ms "
          f"(target {result.target_ms:.3f}) in {result.steps} step(s), stopped: {result.stopped}")
    print(f"val top-1: start {result.start_top1:.4f}, final {result.top1:.4f}; "
          f"{result.measured_keys} latency key(s) measured")
    print(f"outputs: {', '.join(str(p) for p in result.paths.values())}")


def main() -> None:
    """Console entry point."""
    from nas.cli.hydra_app import run_hydra_app

    run_hydra_app("nas-netadapt", _hydra_main)


if __name__ == "__main__":
    main()
