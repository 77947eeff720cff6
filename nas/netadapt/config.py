"""NetAdapt's settings (:class:`NetAdaptConfig`), checked field by field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from nas.config import Config
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
        check_choice("rule", self.rule, RULES)
        check_choice("preselect", self.preselect, PRESELECT)
        check_choice("long_term_init", self.long_term_init, LONG_TERM_INITS)
        if self.max_proposals is not None and not _int(self.max_proposals, 1):
            raise NetAdaptError(f"max_proposals must be an integer >= 1 or null, got {self.max_proposals!r}")
        if self.max_steps is not None and not _int(self.max_steps, 0):
            raise NetAdaptError(f"max_steps must be an integer >= 0 or null, got {self.max_steps!r}")
        if not _int(self.seed, 0):
            raise NetAdaptError(f"seed must be an integer >= 0, got {self.seed!r}")

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


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise NetAdaptError(f"{name} must be one of {list(allowed)}, got {value!r}")
