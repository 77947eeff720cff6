"""NetAdapt's settings (:class:`NetAdaptConfig`), checked field by field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from nas.config import Config, check_choice, check_int, check_number
from nas.errors import NASError


RULES = ("paper", "netadapt")
KINDS = ("expansion", "bottleneck")
PRESELECT = ("saving_per_channel", "saving")
SELECTIONS = ("holdout", "val")
LONG_TERM_INITS = ("inherit", "scratch")
class NetAdaptError(NASError, ValueError):
    """A refinement cannot run as asked (target, inputs, resume mismatch); says why."""


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NetAdaptConfig(Config):
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
        owner, error = "netadapt", NetAdaptError
        if (self.target_ms is None) == (self.target_fraction is None):
            raise NetAdaptError("give exactly one of target_ms and target_fraction")
        check_number(owner, "target_ms", self.target_ms, low=0, low_open=True, optional=True, error=error)
        check_number(owner, "target_fraction", self.target_fraction, low=0, high=1, low_open=True,
                     high_open=True, optional=True, error=error)
        check_number(owner, "delta_fraction", self.delta_fraction, low=0, high=1, low_open=True,
                     high_open=True, error=error)
        for name in ("divisor", "min_channels"):
            check_int(owner, name, getattr(self, name), minimum=1, error=error)
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise NetAdaptError(f"netadapt.kinds must be a non-empty subset of {list(KINDS)}, "
                                f"got {list(self.kinds)}")
        check_choice(owner, "rule", self.rule, RULES, error=error)
        check_choice(owner, "preselect", self.preselect, PRESELECT, error=error)
        check_choice(owner, "long_term_init", self.long_term_init, LONG_TERM_INITS, error=error)
        check_int(owner, "max_proposals", self.max_proposals, minimum=1, optional=True, error=error)
        check_int(owner, "max_steps", self.max_steps, minimum=0, optional=True, error=error)
        check_int(owner, "seed", self.seed, minimum=0, error=error)

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
