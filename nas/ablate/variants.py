"""An ablation's variants: a base network and the changes that make each variant (paper
Sec. 5.2-5.3, Table 5, the appendix multiplier and resolution rows), as plain data.

A variant in a study's YAML::

    hswish_at_112_unfused:
      base: large                       # canonical name or bneck YAML (default: the study's)
      hswish_from: 112                  # RE before the first 112-channel layer, HS from it on
      set: {hswish: decomposed}         # NetworkSpec fields (stem_channels, last_stage, ...)
      blocks: {0: {expansion: 32}}      # per-row changes (0-based rows)
      paper: {top1: 75.0, ms: 54.4}     # the paper's figures for this variant, if any

Other changes: ``activation: RE`` (every layer), ``soft: true`` (swish for h-swish and a
sigmoid SE gate: Sec. 5.2's soft forms), ``se: false`` (no squeeze-and-excite).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nas.arch.codecs import load_spec
from nas.arch.spec import ACTIVATIONS, NetworkSpec, SpecError
from nas.errors import NASError

#: Keys of a variant mapping (``name`` comes from the mapping's key).
VARIANT_KEYS = ("base", "activation", "hswish_from", "soft", "se", "set", "blocks", "paper")
#: Figures a variant may carry from the paper (the side-by-side table of docs/results/ablations.md).
PAPER_KEYS = ("top1", "ms", "ms_unfused", "madds_m", "params_m", "madds_delta_m", "ms_delta")
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(NetworkSpec) if f.name not in ("blocks", "name"))
_BLOCK_FIELDS = ("kernel", "expansion", "out", "se", "activation", "stride", "dilation")


class AblationError(NASError, ValueError):
    """An ablation study or variant is malformed; the message names it."""


@dataclass(frozen=True)
class Variant:
    """One variant of a study: how to make its network, and the paper's figures for it."""

    name: str
    base: str
    activation: str | None = None
    hswish_from: int | None = None
    soft: bool = False
    se: bool | None = None
    set: dict[str, Any] = field(default_factory=dict)
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    paper: dict[str, float] = field(default_factory=dict)

    def spec(self) -> NetworkSpec:
        """The variant's network (errors name the variant)."""
        try:
            return _apply(self, load_spec(self.base))
        except SpecError as err:
            raise AblationError(f"variant {self.name}: {err}") from None


def variant_from_dict(name: str, data: Any, default_base: str) -> Variant:
    """Read one variant mapping; unknown keys and malformed values are named."""
    where = f"variant {name}"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AblationError(f"{where}: expected a mapping with keys {list(VARIANT_KEYS)}, got {data!r}")
    unknown = sorted(set(data) - set(VARIANT_KEYS))
    if unknown:
        raise AblationError(f"{where}: unknown key(s) {unknown}; allowed: {list(VARIANT_KEYS)}")
    changes = dict(data.get("set") or {})
    bad = sorted(set(changes) - set(_SPEC_FIELDS))
    if bad:
        raise AblationError(f"{where}: set: unknown spec field(s) {bad}; allowed: {list(_SPEC_FIELDS)}")
    blocks: dict[int, dict[str, Any]] = {}
    for row, fields in (data.get("blocks") or {}).items():
        if not isinstance(row, int) or not isinstance(fields, dict):
            raise AblationError(f"{where}: blocks: expected {{row number: {{field: value}}}}, "
                                f"got {row!r}: {fields!r}")
        bad = sorted(set(fields) - set(_BLOCK_FIELDS))
        if bad:
            raise AblationError(f"{where}: blocks row {row}: unknown field(s) {bad}; "
                                f"allowed: {list(_BLOCK_FIELDS)}")
        blocks[row] = dict(fields)
    paper = dict(data.get("paper") or {})
    bad = sorted(set(paper) - set(PAPER_KEYS))
    if bad:
        raise AblationError(f"{where}: paper: unknown figure(s) {bad}; allowed: {list(PAPER_KEYS)}")
    activation = data.get("activation")
    if activation is not None and activation not in ACTIVATIONS:
        raise AblationError(f"{where}: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    hswish_from = data.get("hswish_from")
    if hswish_from is not None and (isinstance(hswish_from, bool) or not isinstance(hswish_from, int)):
        raise AblationError(f"{where}: hswish_from must be a channel count, got {hswish_from!r}")
    for key in ("soft", "se"):
        if key in data and not isinstance(data[key], bool):
            raise AblationError(f"{where}: {key} must be true or false, got {data[key]!r}")
    return Variant(name=name, base=str(data.get("base") or default_base), activation=activation,
                   hswish_from=hswish_from, soft=bool(data.get("soft", False)), se=data.get("se"),
                   set=changes, blocks=blocks, paper={k: float(v) for k, v in paper.items()})


def _hswish_from(spec: NetworkSpec, channels: int) -> NetworkSpec:
    """ReLU before the first layer with ``channels`` outputs, h-swish from it on (Table 5's
    "h-swish @16" and "@112"); the head keeps h-swish."""
    outs = [spec.stem_channels] + [b.out for b in spec.blocks]
    if channels not in outs:
        raise SpecError(f"hswish_from: no layer has {channels} output channels (layers: {outs})")
    first = outs.index(channels)  # 0 is the stem
    blocks = tuple(b.replace(activation="HS" if i + 1 >= first else "RE")
                   for i, b in enumerate(spec.blocks))
    return spec.replace(blocks=blocks, stem_activation="HS" if first == 0 else "RE",
                        head_activation="HS")


def _apply(variant: Variant, spec: NetworkSpec) -> NetworkSpec:
    if variant.activation:
        act = variant.activation
        spec = spec.replace(blocks=tuple(b.replace(activation=act) for b in spec.blocks),
                            stem_activation=act, head_activation=act)
    if variant.hswish_from is not None:
        spec = _hswish_from(spec, variant.hswish_from)
    if variant.soft:
        def soft(act: str) -> str:
            return "SW" if act == "HS" else act

        spec = spec.replace(blocks=tuple(b.replace(activation=soft(b.activation)) for b in spec.blocks),
                            stem_activation=soft(spec.stem_activation),
                            head_activation=soft(spec.head_activation), se_gate="soft")
    if variant.se is not None:
        spec = spec.replace(blocks=tuple(b.replace(se=b.se and variant.se) for b in spec.blocks))
    blocks = list(spec.blocks)
    for row, fields in variant.blocks.items():
        if not 0 <= row < len(blocks):
            raise SpecError(f"blocks: row {row} does not exist (rows 0..{len(blocks) - 1})")
        blocks[row] = blocks[row].replace(**fields)
    spec = spec.with_blocks(blocks)
    return spec.replace(**variant.set, name=variant.name)


__all__ = ["AblationError", "PAPER_KEYS", "VARIANT_KEYS", "Variant", "variant_from_dict"]
