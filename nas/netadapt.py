"""NetAdapt as MobileNetV3 used it: shrink a trained network to a latency target, step by step.

Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications"
(ECCV 2018), and MobileNetV3 (Howard et al., 2019, Sec. 4.2):

1. Start from a trained seed; ``L0`` is its lookup-table latency (:mod:`nas.cost.lut`).
2. Each step generates *proposals*, each cutting the latency by at least
   ``delta = delta_fraction x L0`` (the paper: 0.01 L0). MobileNetV3 uses two kinds:

   * ``expansion``: shrink one block's expansion layer;
   * ``bottleneck``: shrink the output width shared by a residual group (a stage's first
     block, or the stem, plus every following stride-1 block with ``in == out``), so every
     residual connection stays legal (:func:`nas.prune.residual_groups`).

   Each proposal takes the *largest* channel count (a multiple of ``divisor``) that meets
   its cut, as NetAdapt picks the largest filter count meeting a step's budget from its
   per-layer lookup tables (Sec. 3.2.1). Keys the table lacks are measured on demand
   (:meth:`nas.cost.lut.LatencyTable.predict` with ``measure_missing``).
3. Each proposal inherits the previous weights, keeping the filters with the largest L2
   norm (:mod:`nas.prune`), is fine-tuned for ``T`` steps ("short-term", the paper's
   T = 10000) and evaluated on a held-out split.
4. The pick: the largest ``dAcc / |dLatency|`` (MobileNetV3's rule, ``rule="paper"``), or
   the highest accuracy (the original NetAdapt's, ``rule="netadapt"``). Both changes are
   taken against the current network: its table latency and its holdout score (the picked
   proposal's after its short-term fine-tune; at step 1, the start's).
5. Repeat until the target latency, then fine-tune the result for longer ("long-term";
   MobileNetV3 trains the final network from scratch: ``long_term_init="scratch"``).

Choices that are ours, not the papers':

* Channel counts that would make a block's expansion equal its input width are skipped:
  the builder then drops the 1x1 expand conv (paper Table 1, row 1), and no inherited
  weight maps onto the missing layer. Likewise counts that would create a residual
  (a stride-1 block's ``in == out``) are skipped, so the network's topology never changes.
  A block *without* an expand conv (``expansion == in``) has its depthwise channels tied
  to its input: it gets no expansion proposal, and shrinking its input shrinks them too.
* ``max_proposals`` (None = all) evaluates only the k proposals with the best latency
  saving per fraction of channels removed (``preselect="saving_per_channel"``) or the best
  raw saving (``"saving"``), to bound the cost of a step on small machines.
* Before a proposal (or the start) is scored, BatchNorm statistics are recalibrated on a
  few training batches (``TrainConfig.bn_recalibration_batches``, :func:`nas.bn.recalibrate_bn`):
  MobileNetV3's BN momentum of 0.01 would otherwise keep the pre-pruning statistics
  through a short fine-tune.
* ``selection="holdout"``: proposals are trained on the training split minus a carved,
  class-stratified holdout (``DataConfig.carve_val``) and scored on that holdout, so the
  validation split stays unseen until the final report (NetAdapt, Sec. 3.1, uses a
  separate holdout set for the same reason). Synthetic data has no carve: there the
  validation split serves both.
* A step's short-term runs all use training seed ``seed + step`` (same batches for every
  proposal of a step, fresh batches for the next step).

Everything is checkpointed per step (spec, weights, history, and each evaluated proposal of
an unfinished step), so an interrupted refinement resumes at the last finished proposal
and produces the history an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

import torch
from torch import nn

from nas.arch import NetworkSpec
from nas.bn import recalibrate_bn
from nas.checkpoint import cpu_state, save_atomic, write_text_atomic
from nas.data import DataConfig, Loaders, make_loaders
from nas.errors import NASError
from nas.formats import from_yaml, save_spec, to_string, to_yaml
from nas.model import MobileNetV3Net, build_model
from nas.prune import (
    STEM,
    PruneError,
    ResidualGroup,
    check_prunable,
    has_expand_conv,
    in_channels,
    prune_model,
    residual_groups,
)
from nas.train import TrainConfig, evaluate_model, resolve_device, train

log = logging.getLogger("nas.netadapt")

RULES = ("paper", "netadapt")
KINDS = ("expansion", "bottleneck")
PRESELECT = ("saving_per_channel", "saving")
SELECTIONS = ("holdout", "val")
LONG_TERM_INITS = ("inherit", "scratch")
STATE_FILE = "state.json"
HISTORY_COLUMNS = [
    "step", "phase", "proposal", "kind", "blocks", "channels_before", "channels_after",
    "latency_ms", "saved_ms", "top1", "split", "delta_top1", "score", "picked",
    "train_steps", "seconds", "spec",
]


class NetAdaptError(NASError, ValueError):
    """A refinement cannot run as asked (target, inputs, resume mismatch); says why."""


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NetAdaptConfig:
    """What NetAdapt does; training settings live in :class:`FineTuner`.

    Attributes:
        target_ms: the latency target in milliseconds (exactly one of the two targets).
        target_fraction: the target as a fraction of the start latency, in (0, 1).
        delta_fraction: each proposal cuts at least ``delta_fraction x`` start latency
            (MobileNetV3: 0.01).
        divisor: channel counts are multiples of this (8, as ``make_divisible``).
        min_channels: no layer goes below this many channels.
        kinds: proposal kinds, a subset of ``("expansion", "bottleneck")``.
        rule: ``"paper"`` (max dAcc/|dLat|, MobileNetV3) or ``"netadapt"`` (max accuracy).
        max_proposals: evaluate at most this many proposals per step (None: all).
        preselect: how ``max_proposals`` ranks them (see the module docstring).
        max_steps: stop after this many steps even above the target (None: no limit).
        long_term_init: ``"inherit"`` (fine-tune the adapted weights) or ``"scratch"``.
        seed: base training seed (step ``s`` uses ``seed + s``).
    """

    target_ms: float | None = None
    target_fraction: float | None = None
    delta_fraction: float = 0.01
    divisor: int = 8
    min_channels: int = 8
    kinds: tuple[str, ...] = KINDS
    rule: Literal["paper", "netadapt"] = "paper"
    max_proposals: int | None = None
    preselect: Literal["saving_per_channel", "saving"] = "saving_per_channel"
    max_steps: int | None = None
    long_term_init: Literal["inherit", "scratch"] = "inherit"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if (self.target_ms is None) == (self.target_fraction is None):
            raise NetAdaptError("give exactly one of target_ms and target_fraction")
        if self.target_ms is not None and not (_number(self.target_ms) and self.target_ms > 0):
            raise NetAdaptError(f"target_ms must be a positive number, got {self.target_ms!r}")
        if self.target_fraction is not None and not (
                _number(self.target_fraction) and 0 < self.target_fraction < 1):
            raise NetAdaptError(f"target_fraction must be in (0, 1), got {self.target_fraction!r}")
        if not (_number(self.delta_fraction) and 0 < self.delta_fraction < 1):
            raise NetAdaptError(f"delta_fraction must be in (0, 1), got {self.delta_fraction!r}")
        for name in ("divisor", "min_channels"):
            if not _int(getattr(self, name), 1):
                raise NetAdaptError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise NetAdaptError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(self.kinds)}")
        _choice("rule", self.rule, RULES)
        _choice("preselect", self.preselect, PRESELECT)
        _choice("long_term_init", self.long_term_init, LONG_TERM_INITS)
        if self.max_proposals is not None and not _int(self.max_proposals, 1):
            raise NetAdaptError(f"max_proposals must be an integer >= 1 or null, got {self.max_proposals!r}")
        if self.max_steps is not None and not _int(self.max_steps, 0):
            raise NetAdaptError(f"max_steps must be an integer >= 0 or null, got {self.max_steps!r}")
        if not _int(self.seed, 0):
            raise NetAdaptError(f"seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetAdaptConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise NetAdaptError(f"unknown NetAdapt setting(s) {unknown}; allowed: {sorted(names)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kinds"] = list(self.kinds)
        return out

    def target_for(self, start_ms: float) -> float:
        """The target in milliseconds for a network of ``start_ms``; checks it is below."""
        target = self.target_ms if self.target_ms is not None else self.target_fraction * start_ms
        if target >= start_ms:
            raise NetAdaptError(f"target {target:.4g} ms is not below the start latency "
                                f"{start_ms:.4g} ms: nothing to adapt")
        return float(target)


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _int(value: object, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise NetAdaptError(f"{name} must be one of {list(allowed)}, got {value!r}")


# ---------------------------------------------------------------------------- latency
class Latency(Protocol):
    """Milliseconds of a spec (a lookup table, possibly measuring what it lacks)."""

    def __call__(self, spec: NetworkSpec) -> float: ...


MEASURE_MODES = ("table", "anchored")


class TableLatency:
    """A :class:`~nas.cost.lut.LatencyTable` as NetAdapt's latency model.

    Missing keys raise :class:`~nas.cost.lut.MissingKeysError`, or, with
    ``measure_missing``, are measured on demand with ``harness`` (default: the table's
    own) in the network that needs them, and saved to ``save_to`` at once, so a resumed
    run predicts what the interrupted one predicted. Two ways to measure:

    * ``mode="table"``: the table's own on-demand measurement
      (:meth:`~nas.cost.lut.LatencyTable.predict` with ``measure_missing``);
    * ``mode="anchored"``: the same in-context timing
      (:func:`nas.cost.timing.measure_in_context`, ``harness.passes`` passes), but each new
      key is scaled by the median ratio *table figure / figure measured now* of the keys of
      the same network the table already holds. A proposal's saving is the difference
      between a key measured now and one measured earlier; on a machine whose speed drifts
      (shared cores: 30% between runs minutes apart was seen on these machines) that difference is
      mostly drift, and NetAdapt's "largest count that meets the cut" degenerates into
      picking a lucky measurement. Anchoring to keys timed in the same forward passes
      cancels the common-mode drift.
    """

    def __init__(self, table: Any, *, measure_missing: bool = False, harness: Any = None,
                 save_to: str | Path | None = None, mode: str = "table") -> None:
        _choice("mode", mode, MEASURE_MODES)
        self.table = table
        self.measure_missing = measure_missing
        self.harness = harness
        self.save_to = Path(save_to) if save_to is not None else None
        self.mode = mode
        self.measured = 0

    def __call__(self, spec: NetworkSpec) -> float:
        before = len(self.table)
        if self.mode == "anchored" and self.measure_missing:
            missing = self.table.missing_keys(spec)
            if missing:
                self._measure_anchored(spec, missing)
        ms = self.table.predict(spec, measure_missing=self.measure_missing, harness=self.harness,
                                save_to=self.save_to)
        self.measured += len(self.table) - before
        return float(ms)

    def _measure_anchored(self, spec: NetworkSpec, missing: list[str]) -> None:
        import datetime
        import statistics

        from nas.cost.lut import LatencyTableError
        from nas.cost.ort_runner import aggregate, loadavg
        from nas.cost.timing import harness_context, measure_in_context

        if self.harness is None and self.table.provenance.get("source") != "measured here":
            raise LatencyTableError("this table was imported from another device; measuring "
                                    "missing keys here would mix devices -- pass a harness")
        cfg = self.harness or self.table.harness_config()
        # Per-pass rows combined exactly as a table build combines them (``cfg.pass_statistic``:
        # the shipped tables use the minimum), so new keys and the anchors agree in kind.
        per_pass: dict[str, list[dict[str, float]]] = {}
        with harness_context(cfg):
            for _ in range(cfg.passes):
                _, ops = measure_in_context(spec.resolved(), cfg)
                for key, timing in ops:
                    per_pass.setdefault(key, []).append(
                        {"median_ms": timing.median_ms, "min_ms": timing.min_ms,
                         "iqr_ms": timing.iqr_ms, "mean_ms": timing.mean_ms, "n": timing.n})
        figures = {k: aggregate(rows, cfg.pass_statistic) for k, rows in per_pass.items()}
        now = {k: f["ms"] for k, f in figures.items()}
        known = [k for k in now if k in self.table and now[k] > 0]
        ratio = statistics.median(self.table.ms(k) / now[k] for k in known) if known else 1.0
        load = (loadavg() or [""])[0]
        stamp = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")
        for key in missing:
            f = figures[key]
            self.table.set_entry(key, f["ms"] * ratio, iqr_ms=f["iqr_ms"] * ratio,
                                 mean_ms=f["mean_ms"] * ratio, n=f["n"], passes=cfg.passes,
                                 pass_spread_ms=f["pass_spread_ms"] * ratio,
                                 loadavg=load, measured_at=stamp, method="context-anchored")
        self.table.provenance.setdefault("builds", []).append({
            "date": stamp, "keys": len(missing), "method": "context-anchored (nas.netadapt)",
            "anchor_ratio": round(ratio, 4), "anchor_keys": len(known), "loadavg": load,
            "passes": cfg.passes, "threads": cfg.threads})
        if self.save_to is not None:
            self.table.save(self.save_to)


# ---------------------------------------------------------------------------- proposals
@dataclass(frozen=True)
class Proposal:
    """One candidate network of a step.

    Attributes:
        kind: ``"expansion"`` or ``"bottleneck"``.
        positions: the block (expansion) or the residual group's positions (bottleneck;
            ``-1`` is the stem).
        before, after: the channel count changed.
        spec: the whole proposed network.
        latency_ms: its lookup-table latency.
    """

    kind: str
    positions: tuple[int, ...]
    before: int
    after: int
    spec: NetworkSpec
    latency_ms: float

    @property
    def where(self) -> str:
        names = ["stem" if p == STEM else str(p) for p in self.positions]
        return ("block " if self.kind == "expansion" else "blocks ") + ",".join(names) \
            if names != ["stem"] else "stem"

    @property
    def name(self) -> str:
        return f"{self.kind} {self.where}: {self.before}->{self.after}"


def channel_candidates(current: int, divisor: int, minimum: int) -> Iterator[int]:
    """Counts below ``current``, multiples of ``divisor``, largest first, down to ``minimum``."""
    c = (current - 1) // divisor * divisor
    floor = max(minimum, divisor)
    while c >= floor:
        yield c
        c -= divisor


def shrink_expansion(spec: NetworkSpec, block: int, channels: int) -> NetworkSpec | None:
    """``spec`` with block ``block``'s expansion set to ``channels``, or None if illegal.

    Illegal: the block has no expand conv (its depthwise channels are its input), or the
    new count equals the block's input width (the builder would drop the expand conv).
    """
    spec = spec.resolved()
    ins = in_channels(spec)
    if not has_expand_conv(spec)[block] or channels == ins[block]:
        return None
    blocks = list(spec.blocks)
    blocks[block] = blocks[block].replace(expansion=channels)
    return spec.with_blocks(blocks)


def shrink_group(spec: NetworkSpec, group: ResidualGroup, channels: int) -> NetworkSpec | None:
    """``spec`` with residual group ``group`` shrunk to ``channels``, or None if illegal.

    The group's members' outputs (and the stem's, when it is in the group) change, so do
    the inputs of the members after the first and of the consumer; blocks without an
    expand conv among them follow with their expansion. Illegal: a count that makes an
    expand conv vanish (expansion == new input), or that creates a residual (a stride-1
    first member or consumer whose other side equals the count), or the last group under
    the original last stage (its projection is tied to the last block's output).
    """
    spec = spec.resolved()
    if group.consumer is None and spec.last_stage != "efficient":
        return None
    ins = in_channels(spec)
    expands = has_expand_conv(spec)
    blocks = list(spec.blocks)
    stem = spec.stem_channels
    for p in group.positions:
        if p == STEM:
            stem = channels
        else:
            blocks[p] = blocks[p].replace(out=channels)
    readers = [p for p in group.positions[1:]]  # members after the first read the group
    if group.consumer is not None:
        readers.append(group.consumer)
    for r in readers:
        if not expands[r]:
            blocks[r] = blocks[r].replace(expansion=channels)
        elif blocks[r].expansion == channels:
            return None
    try:
        new = spec.replace(blocks=tuple(blocks), stem_channels=stem)
        check_prunable(spec, new)  # catches a residual appearing (first member or consumer)
    except (PruneError, ValueError):
        return None
    return new


def make_proposals(spec: NetworkSpec, latency: Latency, cut_ms: float,
                   cfg: NetAdaptConfig, *, current_ms: float | None = None) -> list[Proposal]:
    """Every proposal of one step: per block and per residual group, the largest legal
    count whose network is at least ``cut_ms`` faster than ``spec`` (NetAdapt Sec. 3.2.1).

    Targets with no such count (already at ``min_channels``, or every smaller count
    illegal or not fast enough) give no proposal.
    """
    spec = spec.resolved()
    current_ms = latency(spec) if current_ms is None else current_ms
    budget = current_ms - cut_ms
    proposals: list[Proposal] = []

    def first_meeting(kind: str, positions: tuple[int, ...], before: int,
                      make: Callable[[int], NetworkSpec | None]) -> None:
        for c in channel_candidates(before, cfg.divisor, cfg.min_channels):
            candidate = make(c)
            if candidate is None:
                continue
            ms = latency(candidate)
            if ms <= budget:
                proposals.append(Proposal(kind, positions, before, c, candidate, ms))
                return

    if "expansion" in cfg.kinds:
        expands = has_expand_conv(spec)
        for i, block in enumerate(spec.blocks):
            if expands[i]:
                first_meeting("expansion", (i,), block.expansion,
                              lambda c, i=i: shrink_expansion(spec, i, c))
    if "bottleneck" in cfg.kinds:
        for group in residual_groups(spec):
            first_meeting("bottleneck", group.positions, group.channels,
                          lambda c, g=group: shrink_group(spec, g, c))
    return proposals


def preselect(proposals: Sequence[Proposal], current_ms: float, k: int | None,
              by: str = "saving_per_channel") -> list[Proposal]:
    """At most ``k`` proposals (network order kept), ranked by latency saving.

    ``saving_per_channel``: saving divided by the fraction of the layer's channels
    removed (cheap cuts first); ``saving``: the raw saving. Ties keep network order.
    """
    if k is None or len(proposals) <= k:
        return list(proposals)

    def rank(p: Proposal) -> float:
        saving = current_ms - p.latency_ms
        if by == "saving":
            return saving
        return saving / ((p.before - p.after) / p.before)

    order = sorted(range(len(proposals)), key=lambda i: -rank(proposals[i]))
    keep = sorted(order[:k])
    return [proposals[i] for i in keep]


# ---------------------------------------------------------------------------- the pick
def pick_score(top1: float, latency_ms: float, *, current_top1: float, current_ms: float,
               rule: str) -> float:
    """The figure a proposal is picked by (larger is better).

    ``paper``: ``(top1 - current_top1) / |current_ms - latency_ms|`` (MobileNetV3 Sec. 4.2);
    ``netadapt``: ``top1`` (the original NetAdapt: the smallest accuracy loss).
    """
    if rule == "netadapt":
        return top1
    if rule != "paper":
        raise NetAdaptError(f"rule must be one of {list(RULES)}, got {rule!r}")
    saved = abs(current_ms - latency_ms)
    return (top1 - current_top1) / saved if saved > 0 else -math.inf


def pick(results: Sequence[tuple[float, float]], *, current_top1: float, current_ms: float,
         rule: str = "paper") -> int:
    """Index of the proposal to keep among ``(top1, latency_ms)`` results.

    Ties go to the larger latency saving, then to the earlier proposal.
    """
    if not results:
        raise NetAdaptError("no proposal to pick from")
    keyed = [(pick_score(t, ms, current_top1=current_top1, current_ms=current_ms, rule=rule), -ms, -i)
             for i, (t, ms) in enumerate(results)]
    return -max(keyed)[2]


# ---------------------------------------------------------------------------- baseline
def scale_width(spec: NetworkSpec, multiplier: float, divisor: int = 8) -> NetworkSpec:
    """Uniform width scaling of the channels NetAdapt may change: the stem and every block's
    expansion and output, each ``make_divisible(c x multiplier, divisor)`` (never above c).

    The baseline NetAdapt is compared with (NetAdapt, Sec. 4: width multipliers). Unlike
    :meth:`NetworkSpec.resolved` it leaves the last conv and the head alone (NetAdapt never
    touches them) and keeps the topology: a residual group keeps one width, a block
    without expand conv keeps ``expansion == in``, and a count that would drop an expand
    conv or create a residual moves by one ``divisor`` (up if it can, else down).
    """
    from nas.arch import make_divisible

    spec = spec.resolved()
    expands = has_expand_conv(spec)

    def scaled(c: int, avoid: int | None) -> int:
        new = min(make_divisible(c * multiplier, divisor), c)
        if new == avoid:
            new = new + divisor if new + divisor <= c else new - divisor
        return new

    width: dict[int, int] = {}
    for group in residual_groups(spec):
        first = group.positions[0]
        # A stride-1 first member whose in equalled its new out would gain a residual.
        avoid = width[first - 1] if first != STEM and spec.blocks[first].stride == 1 else None
        c = scaled(group.channels, avoid)
        for p in group.positions:
            width[p] = c
    blocks = []
    for i, block in enumerate(spec.blocks):
        new_in = width[i - 1]
        expansion = scaled(block.expansion, new_in) if expands[i] else new_in
        blocks.append(block.replace(expansion=expansion, out=width[i]))
    result = spec.replace(blocks=tuple(blocks), stem_channels=width[STEM])
    check_prunable(spec, result)
    return result


def width_for_latency(spec: NetworkSpec, latency: Latency, target_ms: float, *, divisor: int = 8,
                      low: float = 0.1, iterations: int = 20) -> tuple[float, NetworkSpec, float]:
    """The largest multiplier whose :func:`scale_width` network is at most ``target_ms``,
    by bisection on the table latency; returns ``(multiplier, spec, ms)``."""
    lo, hi = low, 1.0
    best = (low, scale_width(spec, low, divisor))
    if latency(best[1]) > target_ms:
        raise NetAdaptError(f"even multiplier {low} is slower than {target_ms:.4g} ms")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        candidate = scale_width(spec, mid, divisor)
        if latency(candidate) <= target_ms:
            lo, best = mid, (mid, candidate)
        else:
            hi = mid
    return best[0], best[1], latency(best[1])


# ---------------------------------------------------------------------------- training
class FineTuner:
    """Short-term and long-term fine-tuning and scoring, on top of :func:`nas.train.train`.

    Args:
        data_cfg: the data; its validation split scores the final network.
        short_term: the short-term fine-tune (``steps`` is NetAdapt's ``T``); its
            ``bn_recalibration_batches`` also apply to scoring the start network.
        long_term: the long-term fine-tune of the result (None: none).
        selection: ``"holdout"`` (score proposals on a holdout carved from train) or
            ``"val"`` (on the validation split).
    """

    def __init__(self, data_cfg: DataConfig, short_term: TrainConfig, long_term: TrainConfig | None, *,
                 selection: str = "holdout") -> None:
        _choice("selection", selection, SELECTIONS)
        if short_term.steps is None:
            raise NetAdaptError("short_term needs 'steps' (NetAdapt's T)")
        self.data_cfg = data_cfg
        self.short_term = dataclasses.replace(short_term, checkpoint_dir=None, eval_every=0,
                                              progress=False)
        self.long_term = long_term
        self.selection = selection
        carve = selection == "holdout" and data_cfg.name != "synthetic"
        # The data proposals are trained and scored on: (train minus the holdout, holdout).
        self.select_cfg = dataclasses.replace(data_cfg, carve_val=True) if carve else data_cfg
        self.device = resolve_device(short_term.device)
        self._final: Loaders | None = None
        self._select: dict[int, Loaders] = {}

    # ------------------------------------------------------------------ loaders
    def final_loaders(self) -> Loaders:
        if self._final is None:
            self._final = make_loaders(self.data_cfg, seed=self.short_term.seed)
        return self._final

    def select_loaders(self, seed: int) -> Loaders:
        """Loaders of the selection data whose shuffling/augmentation is fixed by ``seed``."""
        if seed not in self._select:
            self._select = {seed: make_loaders(self.select_cfg, seed=seed)}  # keep one
        return self._select[seed]

    @property
    def num_classes(self) -> int:
        return self.final_loaders().num_classes

    # ------------------------------------------------------------------ scoring
    def selection_top1(self, model: nn.Module, seed: int) -> float:
        """Top-1 on the selection split, after BN recalibration as in the short-term runs."""
        loaders = self.select_loaders(seed)
        model.to(self.device)
        batches = self.short_term.bn_recalibration_batches
        if batches:
            sampler = loaders.train.sampler
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(0)  # a fixed set of batches: the score is repeatable
            recalibrate_bn(model, loaders.train, batches, self.device)
        return evaluate_model(model, loaders.val, self.device)[0]

    def final_top1(self, model: nn.Module) -> float:
        """Top-1 on the validation split (the figure to report)."""
        model.to(self.device)
        return evaluate_model(model, self.final_loaders().val, self.device)[0]

    # ------------------------------------------------------------------ training
    def short(self, model: nn.Module, seed: int) -> float:
        """Fine-tune ``model`` in place for ``T`` steps; return its selection top-1.

        :func:`nas.train.train` recalibrates BatchNorm before it scores
        (``bn_recalibration_batches``): MobileNetV3's BN momentum of 0.01 would otherwise
        keep the pre-pruning statistics through a short fine-tune.
        """
        cfg = dataclasses.replace(self.short_term, seed=seed)
        return train(model, self.select_cfg, cfg, loaders=self.select_loaders(seed)).top1

    def long(self, model: nn.Module, checkpoint_dir: Path | None) -> tuple[nn.Module, int]:
        """Long-term fine-tune (resumable from ``checkpoint_dir``); ``(model, steps)``."""
        if self.long_term is None:
            return model, 0
        where = str(checkpoint_dir) if checkpoint_dir is not None else None
        cfg = dataclasses.replace(self.long_term, checkpoint_dir=where)
        result = train(model, self.select_cfg, cfg, resume=checkpoint_dir is not None)
        return result.model, result.steps

    def settings(self) -> dict[str, Any]:
        return {"data": self.data_cfg.settings(), "short_term": self.short_term.settings(),
                "long_term": self.long_term.settings() if self.long_term else None,
                "selection": self.selection}


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """The state after a finished step: enough to continue exactly."""

    step: int
    spec: NetworkSpec
    state_dict: dict[str, torch.Tensor]
    latency_ms: float
    top1: float
    history: list[dict[str, Any]]
    settings: dict[str, Any]


class RunFolder:
    """The files of one refinement::

        steps/step0000/  spec.yaml, weights.pth, state.json (the start)
        steps/stepNNNN/  the same after step N; while a step runs, proposals.jsonl and
                         proposalKK.pth hold its finished proposals
        long_term/       nas.train's checkpoint of the long-term fine-tune
        history.csv, trajectory.png, netadapt.yaml, netadapt.pth, summary.json
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def step_dir(self, step: int) -> Path:
        return self.root / "steps" / f"step{step:04d}"

    def save(self, checkpoint: Checkpoint) -> None:
        d = self.step_dir(checkpoint.step)
        save_spec(checkpoint.spec, d / "spec.yaml")
        save_atomic(checkpoint.state_dict, d / "weights.pth")
        state = {"step": checkpoint.step, "latency_ms": checkpoint.latency_ms,
                 "top1": checkpoint.top1, "history": checkpoint.history,
                 "settings": checkpoint.settings}
        # state.json last: its presence marks the step as finished.
        write_text_atomic(d / STATE_FILE, json.dumps(state, indent=1, default=str))
        for extra in list(d.glob("proposal*")):  # the step's scratch files
            extra.unlink()
        # Resuming needs the latest weights only; keep the start's too, drop the rest.
        previous = self.step_dir(checkpoint.step - 1) / "weights.pth"
        if checkpoint.step >= 2 and previous.is_file():
            previous.unlink()

    def latest(self) -> Checkpoint | None:
        steps = sorted(self.root.glob(f"steps/step*/{STATE_FILE}"))
        if not steps:
            return None
        d = steps[-1].parent
        state = json.loads((d / STATE_FILE).read_text(encoding="utf-8"))
        spec = from_yaml((d / "spec.yaml").read_text(), str(d / "spec.yaml"))
        weights = torch.load(d / "weights.pth", map_location="cpu", weights_only=True)
        return Checkpoint(step=state["step"], spec=spec, state_dict=weights,
                          latency_ms=state["latency_ms"], top1=state["top1"],
                          history=state["history"], settings=state["settings"])

    # ------------------------------------------------------------------ a running step
    def finished_proposals(self, step: int) -> list[dict[str, Any]]:
        path = self.step_dir(step) / "proposals.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by the interruption
        return rows

    def save_proposal(self, step: int, index: int, row: dict[str, Any], model: nn.Module) -> None:
        d = self.step_dir(step)
        save_atomic(cpu_state(model), d / f"proposal{index:02d}.pth")
        with open(d / "proposals.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")

    def proposal_weights(self, step: int, index: int) -> dict[str, torch.Tensor]:
        return torch.load(self.step_dir(step) / f"proposal{index:02d}.pth", map_location="cpu",
                          weights_only=True)

    def clear_step(self, step: int) -> None:
        d = self.step_dir(step)
        if d.is_dir() and not (d / STATE_FILE).is_file():
            shutil.rmtree(d)


# ---------------------------------------------------------------------------- history
def _row(step: int, phase: str, *, proposal: str = "", kind: str = "", blocks: str = "",
         before: int | None = None, after: int | None = None, latency_ms: float,
         saved_ms: float = 0.0, top1: float, split: str, delta_top1: float | None = None,
         score: float | None = None, picked: bool = False, train_steps: int = 0,
         seconds: float = 0.0, spec: NetworkSpec) -> dict[str, Any]:
    return {"step": step, "phase": phase, "proposal": proposal, "kind": kind, "blocks": blocks,
            "channels_before": before, "channels_after": after, "latency_ms": latency_ms,
            "saved_ms": saved_ms, "top1": top1, "split": split, "delta_top1": delta_top1,
            "score": score, "picked": picked, "train_steps": train_steps,
            "seconds": round(seconds, 2), "spec": to_string(spec)}


def write_history(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """The history as CSV (one row per evaluated proposal, start and long-term rows)."""
    import pandas as pd

    frame = pd.DataFrame(list(history), columns=HISTORY_COLUMNS)
    write_text_atomic(path, frame.to_csv(index=False))
    return path


def plot_trajectory(history: Sequence[dict[str, Any]], path: Path, *, target_ms: float,
                    title: str = "NetAdapt") -> Path:
    """Accuracy against latency: every proposal, the picked trajectory, the final network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(history)
    proposals = [r for r in rows if r["phase"] == "short_term"]
    path_rows = [r for r in rows if (r["phase"] == "start" and r["split"] == "selection")
                 or (r["phase"] == "short_term" and r["picked"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if proposals:
        ax.scatter([r["latency_ms"] for r in proposals], [100 * r["top1"] for r in proposals],
                   s=12, color="0.65", label="proposals (short-term)")
    if path_rows:
        ax.plot([r["latency_ms"] for r in path_rows], [100 * r["top1"] for r in path_rows], "o-",
                color="tab:blue", ms=4, label="picked")
    for phase, marker, colour, label in (("start", "s", "tab:green", "start (val)"),
                                         ("long_term", "*", "tab:red", "final, long-term (val)")):
        pts = [r for r in rows if r["phase"] == phase and r["split"] == "val"]
        if pts:
            ax.scatter([r["latency_ms"] for r in pts], [100 * r["top1"] for r in pts], marker=marker,
                       s=160 if marker == "*" else 50, color=colour, zorder=5, label=label)
    ax.axvline(target_ms, ls="--", color="0.4", lw=1, label=f"target {target_ms:.3g} ms")
    ax.set_xlabel("lookup-table latency (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.invert_xaxis()  # time runs left to right as latency falls
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- the loop
@dataclass
class NetAdaptResult:
    """What :func:`netadapt` produced.

    Attributes:
        spec: the adapted network (deployment spec: the start's class count/resolution).
        model: its long-term fine-tuned weights (the data's class count).
        start_ms, latency_ms, target_ms: lookup-table latencies.
        start_top1, top1: validation top-1 of the start and of the final network.
        steps: NetAdapt steps taken.
        history: every row of ``history.csv``.
        paths: output files by name.
        stopped: why the loop ended (``"target"``, ``"no proposals"``, ``"max_steps"``).
        train_steps: optimiser steps the final weights went through after the start
            (short-term on the picked path plus long-term), and ``all_train_steps``
            including every proposal's fine-tune.
    """

    spec: NetworkSpec
    model: MobileNetV3Net
    start_ms: float
    latency_ms: float
    target_ms: float
    start_top1: float
    top1: float
    steps: int
    history: list[dict[str, Any]]
    paths: dict[str, Path] = field(default_factory=dict)
    stopped: str = "target"
    train_steps: int = 0
    all_train_steps: int = 0
    measured_keys: int = 0


def netadapt(spec: NetworkSpec, model: MobileNetV3Net, latency: Latency, cfg: NetAdaptConfig,
             tuner: FineTuner, run_dir: str | Path, *, resume: bool = True,
             progress: Callable[[str], None] | None = None) -> NetAdaptResult:
    """Adapt ``model`` (built from ``spec``) to the latency target; outputs go to ``run_dir``.

    Args:
        spec: the start network as deployed (its resolution and class count key the table).
        model: its trained weights, built with the data's class count.
        latency: milliseconds of a spec (:class:`TableLatency`).
        cfg: the NetAdapt settings.
        tuner: the fine-tuning and scoring.
        run_dir: where checkpoints and outputs go.
        resume: continue from ``run_dir``'s last finished step when there is one
            (otherwise a folder with checkpoints is an error).
        progress: called with a one-line message after each proposal and step.
    """
    report = progress or log.info
    spec = spec.resolved()
    folder = RunFolder(run_dir)
    settings = {"start": to_string(spec), "netadapt": cfg.to_dict(), "tuner": tuner.settings()}
    settings = json.loads(json.dumps(settings, default=str))

    checkpoint = folder.latest()
    # A resumed run keeps the start latency it began with (the table may have grown since).
    start_ms = checkpoint.history[0]["latency_ms"] if checkpoint is not None else latency(spec)
    target_ms = cfg.target_for(start_ms)
    delta_ms = cfg.delta_fraction * start_ms
    if checkpoint is not None and not resume:
        raise NetAdaptError(f"{folder.root} already holds a refinement (steps/); resume it "
                            "(resume=true) or choose another folder")
    if checkpoint is not None and checkpoint.settings != settings:
        diffs = sorted(k for k in set(settings) | set(checkpoint.settings)
                       if settings.get(k) != checkpoint.settings.get(k))
        raise NetAdaptError(f"{folder.root}: the checkpoint was written with other settings "
                            f"({', '.join(diffs)} differ); use the same settings or another folder")
    if checkpoint is None:
        t0 = time.perf_counter()
        model.to(tuner.device)
        start_sel = tuner.selection_top1(model, cfg.seed)
        start_val = tuner.final_top1(model) if tuner.selection == "holdout" else start_sel
        history = [_row(0, "start", proposal="start", latency_ms=start_ms, top1=start_sel,
                        split="selection", spec=spec, picked=True, seconds=time.perf_counter() - t0)]
        if tuner.selection == "holdout":
            history.append(_row(0, "start", proposal="start", latency_ms=start_ms, top1=start_val,
                                split="val", spec=spec))
        checkpoint = Checkpoint(step=0, spec=spec, state_dict=cpu_state(model), latency_ms=start_ms,
                        top1=start_sel, history=history, settings=settings)
        folder.save(checkpoint)
        report(f"start: {start_ms:.3f} ms, selection top-1 {start_sel:.4f}; target {target_ms:.3f} ms, "
            f"delta {delta_ms:.3f} ms")
    else:
        report(f"resuming after step {checkpoint.step}: {checkpoint.latency_ms:.3f} ms, top-1 {checkpoint.top1:.4f}")

    step, current, current_ms, current_top1 = checkpoint.step, checkpoint.spec, checkpoint.latency_ms, checkpoint.top1
    history = list(checkpoint.history)
    current_model = build_model(current, num_classes=tuner.num_classes)
    current_model.load_state_dict(checkpoint.state_dict)
    stopped = "target"
    loop_started, steps_this_run = time.perf_counter(), 0
    while current_ms > target_ms:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            stopped = "max_steps"
            break
        step += 1
        seed = cfg.seed + step
        all_proposals = make_proposals(current, latency, delta_ms, cfg, current_ms=current_ms)
        proposals = preselect(all_proposals, current_ms, cfg.max_proposals, cfg.preselect)
        if not proposals:
            stopped = "no proposals"
            report(f"step {step}: no proposal can cut {delta_ms:.3f} ms; stopping at {current_ms:.3f} ms")
            folder.clear_step(step)
            step -= 1
            break
        done = _matching_finished(folder, step, proposals)
        results: list[tuple[float, float]] = []
        rows: list[dict[str, Any]] = []
        for i, prop in enumerate(proposals):
            if i < len(done):
                row = done[i]
            else:
                t0 = time.perf_counter()
                candidate = prune_model(current_model, prop.spec)
                top1 = tuner.short(candidate, seed)
                row = _row(step, "short_term", proposal=prop.name, kind=prop.kind, blocks=prop.where,
                           before=prop.before, after=prop.after, latency_ms=prop.latency_ms,
                           saved_ms=current_ms - prop.latency_ms, top1=top1, split="selection",
                           delta_top1=top1 - current_top1,
                           score=pick_score(top1, prop.latency_ms, current_top1=current_top1,
                                            current_ms=current_ms, rule=cfg.rule),
                           train_steps=tuner.short_term.steps or 0,
                           seconds=time.perf_counter() - t0, spec=prop.spec)
                folder.save_proposal(step, i, row, candidate)
                report(f"step {step} [{i + 1}/{len(proposals)}] {prop.name}: {prop.latency_ms:.3f} ms, "
                    f"top-1 {top1:.4f} ({row['seconds']:.0f} s)")
            rows.append(row)
            results.append((row["top1"], row["latency_ms"]))
        chosen = pick(results, current_top1=current_top1, current_ms=current_ms, rule=cfg.rule)
        rows[chosen] = {**rows[chosen], "picked": True}
        history.extend(rows)
        prop = proposals[chosen]
        current_model = build_model(prop.spec, num_classes=tuner.num_classes)
        current_model.load_state_dict(folder.proposal_weights(step, chosen))
        current, current_ms, current_top1 = prop.spec, prop.latency_ms, results[chosen][0]
        folder.save(Checkpoint(step=step, spec=current, state_dict=cpu_state(current_model),
                               latency_ms=current_ms, top1=current_top1, history=history,
                               settings=settings))
        write_history(history, folder.root / "history.csv")
        steps_this_run += 1
        # Each step cuts at least delta_ms: an upper bound on the steps still to come.
        left = max(0, math.ceil((current_ms - target_ms) / delta_ms))
        per_step = (time.perf_counter() - loop_started) / steps_this_run
        report(f"step {step}: picked {prop.name} -> {current_ms:.3f} ms (target {target_ms:.3f}), "
            f"top-1 {current_top1:.4f}; {len(all_proposals)} proposal(s), {len(proposals)} evaluated; "
            f"at most {left} step(s) left, ETA <= {left * per_step / 60:.0f} min")

    return _finish(folder, spec, current, current_model, history, tuner, cfg, step=step,
                   start_ms=start_ms, current_ms=current_ms, target_ms=target_ms, stopped=stopped,
                   latency=latency, report=report)


def _matching_finished(folder: RunFolder, step: int,
                       proposals: Sequence[Proposal]) -> list[dict[str, Any]]:
    """The finished proposals of an interrupted ``step``, if they are these proposals."""
    done = folder.finished_proposals(step)
    ok: list[dict[str, Any]] = []
    for row, prop in zip(done, proposals):
        weights = folder.step_dir(step) / f"proposal{len(ok):02d}.pth"
        if row.get("spec") != to_string(prop.spec) or not weights.is_file():
            break
        ok.append(row)
    if len(ok) != len(done):
        # Different proposals than before (e.g. a changed table): start the step afresh.
        folder.clear_step(step)
        return []
    return ok


def _finish(folder: RunFolder, start: NetworkSpec, spec: NetworkSpec, model: MobileNetV3Net,
            history: list[dict[str, Any]], tuner: FineTuner, cfg: NetAdaptConfig, *, step: int,
            start_ms: float, current_ms: float, target_ms: float, stopped: str, latency: Latency,
            report: Callable[[str], None]) -> NetAdaptResult:
    """Long-term fine-tune, final score, outputs."""
    t0 = time.perf_counter()
    history = [r for r in history if r["phase"] != "long_term"]
    before_val = tuner.final_top1(model)
    history.append(_row(step, "adapted", proposal="after short-term steps", latency_ms=current_ms,
                        top1=before_val, split="val", spec=spec))
    if cfg.long_term_init == "scratch" and tuner.long_term is not None:
        # MobileNetV3 trains the adapted network from scratch (paper Sec. 4.2, NetAdapt).
        torch.manual_seed(tuner.long_term.seed)
        model = build_model(spec, num_classes=tuner.num_classes)
    model, long_steps = tuner.long(model, folder.root / "long_term")
    top1 = tuner.final_top1(model)
    history.append(_row(step, "long_term", proposal=f"long-term ({cfg.long_term_init})",
                        latency_ms=current_ms, top1=top1, split="val", picked=True,
                        train_steps=long_steps, seconds=time.perf_counter() - t0, spec=spec))
    start_val = next((r["top1"] for r in history if r["phase"] == "start" and r["split"] == "val"),
                     history[0]["top1"])
    short = tuner.short_term.steps or 0
    paths = {
        "history": write_history(history, folder.root / "history.csv"),
        "plot": plot_trajectory(history, folder.root / "trajectory.png", target_ms=target_ms,
                                title=f"NetAdapt ({cfg.rule} rule): {start_ms:.3g} -> {current_ms:.3g} ms"),
        "spec": save_spec(spec.replace(name=(start.name or "network") + "_netadapt"),
                          folder.root / "netadapt.yaml"),
        "weights": folder.root / "netadapt.pth",
    }
    save_atomic(cpu_state(model), paths["weights"])
    evaluated = sum(1 for r in history if r["phase"] == "short_term")
    result = NetAdaptResult(
        spec=spec, model=model, start_ms=start_ms, latency_ms=current_ms, target_ms=target_ms,
        start_top1=start_val, top1=top1, steps=step, history=history, paths=paths, stopped=stopped,
        train_steps=step * short + long_steps, all_train_steps=evaluated * short + long_steps,
        measured_keys=getattr(latency, "measured", 0))
    summary = {k: v for k, v in dataclasses.asdict(result).items()
               if k not in ("spec", "model", "history", "paths")}
    summary.update(spec=to_string(spec), yaml=to_yaml(spec), settings=json.loads(json.dumps(
        {"netadapt": cfg.to_dict(), "tuner": tuner.settings()}, default=str)),
        proposals_evaluated=evaluated, num_classes=tuner.num_classes)
    paths["summary"] = folder.root / "summary.json"
    write_text_atomic(paths["summary"], json.dumps(summary, indent=1, default=str))
    report(f"done ({stopped}): {start_ms:.3f} -> {current_ms:.3f} ms in {step} step(s); "
        f"val top-1 {start_val:.4f} -> {top1:.4f}")
    return result


__all__ = [
    "Checkpoint", "FineTuner", "HISTORY_COLUMNS", "KINDS", "Latency", "MEASURE_MODES",
    "NetAdaptConfig", "NetAdaptError", "NetAdaptResult", "PRESELECT", "Proposal", "RULES",
    "RunFolder", "TableLatency", "channel_candidates", "make_proposals", "netadapt", "pick",
    "pick_score", "plot_trajectory", "preselect", "scale_width", "shrink_expansion",
    "shrink_group", "width_for_latency", "write_history",
]
