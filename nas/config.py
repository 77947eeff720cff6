"""The one way a setting is read: a frozen dataclass filled from a mapping (Hydra YAML,
a checkpoint) by :func:`config_from_dict`, unknown keys refused, fields checked by ``check_*``
with errors that name the owner, the field and the allowed values."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Sequence, TypeVar

from nas.errors import NASError


class ConfigError(NASError, ValueError):
    """A config field has a wrong type or value; the message names the field and the choices."""


# ---------------------------------------------------------------------------- config helpers
C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
    """Build the dataclass ``cls`` from a mapping (e.g. Hydra YAML), rejecting unknown keys."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key(s) {unknown}; allowed keys: {names}"
        )
    return cls(**data)


def _label(owner: str, name: str, label: str | None) -> str:
    return label if label is not None else (f"{owner}.{name}" if owner else name)


def check_choice(owner: str, name: str, value: object, allowed: Sequence[object], *,
                 label: str | None = None, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` is one of ``allowed``.

    Every check names the setting as ``owner.name``, or as ``label`` when given (a spec's
    "bneck row 2: field 'stride'"), and raises :class:`ConfigError` or the caller's own
    :class:`~nas.errors.NASError` subclass."""
    if isinstance(value, bool) or value not in allowed:
        raise error(f"{_label(owner, name, label)} must be one of {list(allowed)}, got {value!r}")


def check_int(owner: str, name: str, value: object, *, minimum: int, maximum: int | None = None,
              optional: bool = False, label: str | None = None,
              error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` is an integer in [``minimum``, ``maximum``] (or None
    when ``optional``)."""
    if optional and value is None:
        return
    what = _label(owner, name, label)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "an integer or null" if optional else "an integer"
        raise error(f"{what} must be {kind} >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise error(f"{what} must be <= {maximum}, got {value}")


def check_number(owner: str, name: str, value: object, *, low: float, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False, optional: bool = False,
                 label: str | None = None, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` is a finite number in the given range (or None when
    ``optional``)."""
    if optional and value is None:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        bracket = "(" if low_open else "["
        upper = "inf)" if high == math.inf else f"{high}{')' if high_open else ']'}"
        null = " or null" if optional else ""
        raise error(f"{_label(owner, name, label)} must be a number in {bracket}{low}, {upper}{null}, "
                    f"got {value!r}")


class Config:
    """Base of every settings dataclass: read from a mapping, written back, compared.

    ``NOT_SETTINGS`` names the fields that do not change a result (device, progress bars,
    checkpoint folders); :meth:`settings` leaves them out, so two runs are compared (or a
    cache is keyed) by what matters.
    """

    NOT_SETTINGS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Any:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming the allowed ones."""
        return config_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def settings(self) -> dict[str, Any]:
        """The fields that change results (all but ``NOT_SETTINGS``)."""
        out = self.to_dict()
        for key in self.NOT_SETTINGS:
            out.pop(key)
        return out
