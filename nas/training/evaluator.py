"""The accuracy half of the search objective: one interface, several implementations.

The search and NetAdapt only ever call ``evaluator.evaluate(spec)``. Proxy training
(:mod:`nas.training.train`) and the weight-sharing supernet (:mod:`nas.supernet.network`) implement it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from nas.arch.spec import NetworkSpec


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one spec, with what produced it.

    Attributes:
        top1: top-1 accuracy on the held-out split, as a fraction in [0, 1].
        top5: top-5 accuracy (fraction), or ``None`` when there are fewer than 5 classes.
        details: evaluator-specific facts (training settings, epochs, loss, seconds, ...),
            kept with the result so a cached figure says how it was obtained.
    """

    top1: float
    top5: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Evaluator(Protocol):
    """Anything that scores an architecture spec."""

    def evaluate(self, spec: NetworkSpec) -> EvalResult:
        """Score ``spec``; raise on failure (never return NaN)."""
        ...
