"""The ``sample(number) -> seconds`` functions of torch and ONNX Runtime, and the export that
ONNX Runtime times: the lowest layer of timing, which the harness statistics
(:func:`nas.cost.sampling.run_samples`) and the latency backends (:mod:`nas.cost.backends`)
both build on."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from nas.cost import ort_runner, sampling
from nas.cost.harness import HarnessConfig, torch_dtype


def example_input(input_shape: Sequence[int], cfg: HarnessConfig, device: str = "cpu"):
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn((cfg.batch, *input_shape), generator=generator)
    return x.to(device=device, dtype=torch_dtype(cfg.dtype))


def torch_sampler(module, input_shape: Sequence[int], cfg: HarnessConfig) -> Callable[[int], float]:
    """``sample(number)`` for torch-cpu (wall clock) or torch-cuda (CUDA events)."""
    import torch

    if cfg.runtime == "torch-cuda":
        module = module.eval().to(device="cuda", dtype=torch_dtype(cfg.dtype))
        x = example_input(input_shape, cfg, "cuda")
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def sample(number: int) -> float:
            torch.cuda.synchronize()
            start.record()
            for _ in range(number):
                module(x)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return sample
    module = module.eval().to(dtype=torch_dtype(cfg.dtype))
    x = example_input(input_shape, cfg)
    return sampling.perf_counter_sample(lambda: module(x))


def export_for_ort(module, input_shape: Sequence[int], cfg: HarnessConfig, path: str | Path) -> Path:
    """Export ``module`` for an input of ``(cfg.batch, *input_shape)`` (native HardSwish)."""
    from nas.models.export import export_module

    return export_module(module.eval().float(), example_input(input_shape, cfg.replace(dtype="float32")), path,
                         exporter=cfg.onnx_exporter)


def ort_sampler(path: str | Path, input_shape: Sequence[int], cfg: HarnessConfig) -> Callable[[int], float]:
    session = ort_runner.make_session(path, cfg.threads, opt_level=cfg.ort_opt_level)
    call = ort_runner.session_callable(session, (cfg.batch, *input_shape), "float32", seed=cfg.seed)
    return sampling.perf_counter_sample(call)


__all__ = ["example_input", "export_for_ort", "ort_sampler", "torch_sampler"]
