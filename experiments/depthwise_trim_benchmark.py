"""Training-step time with the trimmed depthwise conv against the plain ``nn.Conv2d`` one.

``nas.models.depthwise.TrimmedDepthwiseConv2d`` skips the kernel taps that read only padding
(the last stages' 2x2 and 1x1 maps at the proxy's 32 px). This times one SGD step (forward,
backward, update; channels-last, one thread, as the proxy trains) of the same network with
the same weights both ways, in interleaved rounds (A B A B) so the shared machine's drifting
load hits both alike, and checks that both compute the same logits. Networks: the
repeatability benchmark's smallest, canonical and largest Small-space specs, and the Small
supernet on its largest path (``nas.supernet.dynamic_ops`` convolves through
``trimmed_depthwise_conv2d``; its plain arm swaps in ``F.conv2d``).

Writes ``runs.csv`` (every round) and ``summary.yaml`` (median ms per step, the median per-round
ratio plain / trimmed per network and batch, load averages) into ``--out``.

    python -m experiments.depthwise_trim_benchmark --rounds 7
"""

from __future__ import annotations

import copy
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from experiments import harness
from nas.arch.space import load_space
from nas.models.builder import build_model
from nas.models.depthwise import TrimmedDepthwiseConv2d, trimmed_depthwise_conv2d
from nas.supernet import dynamic_ops
from nas.supernet.network import Supernet

DEFAULT_OUT = harness.RESULTS / "depthwise_trim"


def plain_copy(model: nn.Module) -> nn.Module:
    """The same network and weights with every trimmed conv back to ``nn.Conv2d``'s forward
    (the subclass adds no state, so the instance's class can be swapped)."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, TrimmedDepthwiseConv2d):
            module.__class__ = nn.Conv2d
    return plain


def plain_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: tuple[int, int], padding: tuple[int, int], groups: int) -> torch.Tensor:
    """The whole-kernel convolution the supernet's plain arm uses instead."""
    return F.conv2d(input, weight, bias, stride, padding, 1, groups)


def supernet_conv(trimmed: bool) -> None:
    """Point the supernet's depthwise op at the trimmed or the whole-kernel convolution."""
    dynamic_ops.trimmed_depthwise_conv2d = trimmed_depthwise_conv2d if trimmed else plain_conv2d


def step_ms(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
            target: torch.Tensor, steps: int) -> float:
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), target).backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps * 1000


def logits(model: nn.Module, images: torch.Tensor, trimmed: bool) -> torch.Tensor:
    supernet_conv(trimmed)
    with torch.no_grad():  # eval mode: dropout off, so both arms must agree
        return model.eval()(images)


def main(argv: list[str] | None = None) -> int:
    parser = harness.study_parser(__doc__)
    harness.add_common(parser, out=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args(argv)
    harness.start(args)
    torch.manual_seed(0)
    space = load_space("mobilenetv3_small")
    probe = Supernet(space, num_classes=10)
    specs = {"smallest": probe.smallest_spec(), "canonical": space.base, "largest": probe.largest_spec()}
    probe.set_active(probe.largest_spec())
    rows = []
    for name in [*specs, "supernet_largest"]:
        for batch in args.batch_sizes:
            if name == "supernet_largest":
                trimmed = probe.to(memory_format=torch.channels_last)
                plain = trimmed  # the same module; supernet_conv switches its depthwise op
            else:
                trimmed = build_model(specs[name], num_classes=10).to(memory_format=torch.channels_last)
                plain = plain_copy(trimmed)
            images = torch.randn(batch, 3, args.resolution, args.resolution).contiguous(
                memory_format=torch.channels_last)
            target = torch.randint(0, 10, (batch,))
            difference = (logits(trimmed, images, True) - logits(plain, images, False)).abs().max().item()
            trimmed.train(), plain.train()
            arms = {"plain": plain, "trimmed": trimmed}
            optimizers = {arm: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for arm, m in arms.items()}
            for arm, model in arms.items():  # warm-up: oneDNN primitive creation
                supernet_conv(arm == "trimmed")
                step_ms(model, optimizers[arm], images, target, 3)
            for round_index in range(args.rounds):
                for arm, model in arms.items():
                    supernet_conv(arm == "trimmed")
                    ms = step_ms(model, optimizers[arm], images, target, args.steps)
                    rows.append({"spec": name, "batch_size": batch, "arm": arm, "round": round_index,
                                 "ms_per_step": ms, "load": harness.load_1min(),
                                 "max_logit_difference": difference})
            print(f"{name} batch {batch}: " + ", ".join(
                f"{arm} {statistics.median(r['ms_per_step'] for r in rows if r['spec'] == name and r['batch_size'] == batch and r['arm'] == arm):.1f} ms"
                for arm in arms) + f" (load {harness.load_1min():.2f})", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "runs.csv", index=False)
    medians = frame.groupby(["spec", "batch_size", "arm"], sort=False)["ms_per_step"].median().unstack("arm")
    # The speed-up is the median of the per-round ratios (each from side-by-side timings).
    per_round = frame.pivot_table(index=["spec", "batch_size", "round"], columns="arm", values="ms_per_step")
    speedups = (per_round["plain"] / per_round["trimmed"]).groupby(level=["spec", "batch_size"]).median()
    summary = {
        "setup": {"resolution": args.resolution, "threads": 1, "rounds": args.rounds,
                  "steps_per_round": args.steps, "channels_last": True,
                  "load_average": [round(float(frame["load"].min()), 2), round(float(frame["load"].max()), 2)]},
        "results": [{"spec": spec, "batch_size": int(batch),
                     "plain_ms_per_step": round(float(row["plain"]), 1),
                     "trimmed_ms_per_step": round(float(row["trimmed"]), 1),
                     "speedup": round(float(speedups[(spec, batch)]), 3),
                     "max_logit_difference": float(frame[(frame.spec == spec) & (frame.batch_size == batch)]
                                                   ["max_logit_difference"].iloc[0])}
                    for (spec, batch), row in medians.iterrows()],
    }
    harness.write_yaml(args.out / "summary.yaml", summary)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
