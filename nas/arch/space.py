"""Per-block search spaces in the MobileNetV3 family (paper Sec. 4, MnasNet's factorised space).

A space is a skeleton of stages (out channels, stride, number of blocks) around a base
network that supplies the stem and the head. Every block picks a depthwise kernel, an
expansion width (absolute channels, from its stage's set), SE on/off and its activation;
a stage may also pick its depth relative to the skeleton (MnasNet's -1/0/+1 layers).

Parameters carry stable hierarchical names, in the spirit of NNI's MobileNetV3 space:
``s3_b1_kernel``, ``s3_b1_expansion``, ``s3_b1_se``, ``s3_b1_activation``, ``s3_depth``
(stages and blocks counted from 1). ``suggest(trial)`` builds a spec from an Optuna trial
and ``params_of(spec)`` is its inverse, so the canonical network can be enqueued as a trial.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from nas.arch.spec import ACTIVATIONS, BlockSpec, NetworkSpec, SpecError
from nas.errors import NASError
from nas.shipped import shipped_dir

SPACES_DIR = shipped_dir("search_spaces")


class SpaceError(NASError, ValueError):
    """A search space file (or a spec checked against a space) is invalid."""


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` a space needs (also satisfied by FixedTrial)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class StageSpace:
    """One stage of the skeleton and the choices of its blocks."""

    out: int
    stride: int
    blocks: int
    expansions: tuple[int, ...]
    depth_offsets: tuple[int, ...] = (0,)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(self.blocks + d for d in self.depth_offsets)


@dataclass(frozen=True)
class SearchSpace:
    """A per-block MobileNetV3 search space around ``base`` (stem and head come from it)."""

    name: str
    base: NetworkSpec
    stages: tuple[StageSpace, ...]
    kernels: tuple[int, ...]
    se: tuple[bool, ...]
    activations: tuple[str, ...]

    # -------------------------------------------------------------- trial <-> spec
    def suggest(self, trial: TrialLike) -> NetworkSpec:
        """Sample a spec from ``trial`` (define-by-run: depth first, then each block)."""
        blocks: list[BlockSpec] = []
        for s, stage in enumerate(self.stages, start=1):
            depth = stage.blocks
            if len(stage.depth_offsets) > 1:
                offset = trial.suggest_categorical(f"s{s}_depth", list(stage.depth_offsets))
                depth = stage.blocks + int(offset)
            for b in range(1, depth + 1):
                prefix = f"s{s}_b{b}_"
                blocks.append(BlockSpec(
                    kernel=int(trial.suggest_categorical(prefix + "kernel", list(self.kernels))),
                    expansion=int(trial.suggest_categorical(prefix + "expansion", list(stage.expansions))),
                    out=stage.out,
                    se=bool(trial.suggest_categorical(prefix + "se", list(self.se))),
                    activation=str(trial.suggest_categorical(prefix + "activation", list(self.activations))),
                    stride=stage.stride if b == 1 else 1,
                ))
        return self.base.with_blocks(blocks)

    def sample(self, rng: random.Random) -> NetworkSpec:
        """A uniformly random spec (for latency validation and tests)."""
        return self.suggest(_RandomTrial(rng))

    def params_of(self, spec: NetworkSpec) -> dict[str, Any]:
        """The parameters that make :meth:`suggest` return ``spec``; raises if it is outside."""
        params: dict[str, Any] = {}
        blocks = list(spec.blocks)
        position = 0
        for s, stage in enumerate(self.stages, start=1):
            depth = 0
            while position + depth < len(blocks) and blocks[position + depth].out == stage.out:
                depth += 1
            if depth not in stage.depths:
                raise SpaceError(
                    f"space {self.name}: stage s{s} (out {stage.out}) has {depth} blocks in the "
                    f"spec; allowed depths {list(stage.depths)}"
                )
            if len(stage.depth_offsets) > 1:
                params[f"s{s}_depth"] = depth - stage.blocks
            for b in range(1, depth + 1):
                block = blocks[position + b - 1]
                stride = stage.stride if b == 1 else 1
                prefix = f"s{s}_b{b}_"
                self._check_choice(prefix + "kernel", block.kernel, self.kernels)
                self._check_choice(prefix + "expansion", block.expansion, stage.expansions)
                self._check_choice(prefix + "se", block.se, self.se)
                self._check_choice(prefix + "activation", block.activation, self.activations)
                if block.stride != stride or block.dilation != 1:
                    raise SpaceError(f"space {self.name}: {prefix[:-1]} has stride "
                                     f"{block.stride}/dilation {block.dilation}; the skeleton "
                                     f"fixes stride {stride}, dilation 1")
                params.update({prefix + "kernel": block.kernel,
                               prefix + "expansion": block.expansion,
                               prefix + "se": block.se,
                               prefix + "activation": block.activation})
            position += depth
        if position != len(blocks):
            raise SpaceError(f"space {self.name}: the spec has {len(blocks) - position} block(s) "
                             "beyond the last stage")
        if self.base.with_blocks(blocks) != spec:
            raise SpaceError(f"space {self.name}: the spec's stem/head/resolution differ from "
                             "the space's base network")
        return params

    def _check_choice(self, name: str, value: object, allowed: tuple) -> None:
        if value not in allowed:
            raise SpaceError(f"space {self.name}: {name} = {value!r} is not a choice "
                             f"(allowed: {list(allowed)})")

    # -------------------------------------------------------------- enumeration
    def block_choices(self) -> list[tuple[int, int, list[BlockSpec]]]:
        """Every (input channels, input resolution, candidate blocks) a position can see.

        A latency table covering all of them covers every spec of the space. Positions with
        identical inputs (the non-first blocks of a stage) appear once.
        """
        from nas.arch.spec import conv_output_size

        options = []
        channels = self.base.stem_channels
        size = conv_output_size(self.base.resolution, 2)
        for stage in self.stages:
            first_out = conv_output_size(size, stage.stride)
            positions = [(channels, size, stage.stride)]
            if max(stage.depths) > 1:
                positions.append((stage.out, first_out, 1))
            for in_channels, in_size, stride in positions:
                candidates = [
                    BlockSpec(kernel=k, expansion=e, out=stage.out, se=se, activation=a, stride=stride)
                    for k in self.kernels for e in stage.expansions
                    for se in self.se for a in self.activations
                ]
                options.append((in_channels, in_size, candidates))
            channels, size = stage.out, first_out
        return options

    def size(self) -> int:
        """Number of distinct specs in the space."""
        per_block = len(self.kernels) * len(self.se) * len(self.activations)
        total = 1
        for stage in self.stages:
            total *= sum((per_block * len(stage.expansions)) ** d for d in stage.depths)
        return total

    def canonical(self) -> NetworkSpec:
        """The base network; it is a point of the space (checked on load)."""
        return self.base


class _RandomTrial:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.rng.choice(list(choices))


# ------------------------------------------------------------------ loading
_TOP_KEYS = {"name", "base", "resolution", "num_classes", "choices", "stages"}
_CHOICE_KEYS = {"kernel", "se", "activation"}
_STAGE_KEYS = {"out", "stride", "blocks", "expansion", "depth"}


def space_from_dict(data: Any, source: str = "<dict>") -> SearchSpace:
    """Decode a space document; every error names ``source`` and the field."""
    from nas.arch.codecs import load_spec

    where = f"{source}: "
    _check_keys(data, _TOP_KEYS, {"name", "base", "choices", "stages"}, f"{where}a search space",
                where)
    try:
        base = load_spec(data["base"])
        overrides = {k: data[k] for k in ("resolution", "num_classes") if k in data}
        base = base.replace(**overrides) if overrides else base
    except SpecError as err:
        raise SpaceError(f"{where}base: {err}") from None
    choices = data["choices"]
    if not isinstance(choices, dict) or set(choices) != _CHOICE_KEYS:
        raise SpaceError(f"{where}'choices' must have exactly the keys {sorted(_CHOICE_KEYS)}, "
                         f"got {sorted(choices) if isinstance(choices, dict) else choices!r}")
    kernels = _int_list(choices["kernel"], f"{where}choices.kernel")
    for k in kernels:
        if k % 2 == 0:
            raise SpaceError(f"{where}choices.kernel: kernel {k} must be odd")
    se_values = choices["se"]
    if not isinstance(se_values, list) or not se_values or any(not isinstance(v, bool) for v in se_values):
        raise SpaceError(f"{where}choices.se must be a non-empty list of true/false, got {se_values!r}")
    acts = choices["activation"]
    if not isinstance(acts, list) or not acts or any(a not in ACTIVATIONS for a in acts):
        raise SpaceError(f"{where}choices.activation must be a non-empty list of {list(ACTIVATIONS)}, "
                         f"got {acts!r}")
    stages = _stages(data["stages"], where)
    space = SearchSpace(name=str(data["name"]), base=base, stages=stages, kernels=tuple(kernels),
                        se=tuple(se_values), activations=tuple(acts))
    try:
        space.params_of(base)
    except SpaceError as err:
        raise SpaceError(f"{where}the base network is not a point of the space: {err}") from None
    return space


def _check_keys(data: Any, allowed: set[str], required: set[str], what: str, prefix: str) -> None:
    """``data`` must be a mapping with every ``required`` key and no key outside ``allowed``."""
    if not isinstance(data, dict):
        raise SpaceError(f"{what} must be a mapping with keys {sorted(allowed)}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpaceError(f"{prefix}unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise SpaceError(f"{prefix}missing key(s) {missing}")


def _int_list(value: Any, where: str, minimum: int = 1) -> list[int]:
    if not isinstance(value, list) or not value:
        raise SpaceError(f"{where} must be a non-empty list of integers, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise SpaceError(f"{where}: {v!r} is not an integer >= {minimum}")
    if len(set(value)) != len(value):
        raise SpaceError(f"{where}: duplicate choices in {value}")
    return value


def _stages(value: Any, where: str) -> tuple[StageSpace, ...]:
    if not isinstance(value, list) or not value:
        raise SpaceError(f"{where}'stages' must be a non-empty list")
    stages = []
    previous_out = None
    for i, stage in enumerate(value, start=1):
        label = f"{where}stage s{i}"
        _check_keys(stage, _STAGE_KEYS, {"out", "stride", "blocks", "expansion"}, label,
                    f"{label}: ")
        out = _int_list([stage["out"]], f"{label}.out")[0]
        blocks = _int_list([stage["blocks"]], f"{label}.blocks")[0]
        if stage["stride"] not in (1, 2) or isinstance(stage["stride"], bool):
            raise SpaceError(f"{label}.stride must be 1 or 2, got {stage['stride']!r}")
        expansions = _int_list(stage["expansion"], f"{label}.expansion")
        offsets = stage.get("depth", [0])
        if (not isinstance(offsets, list) or not offsets
                or any(isinstance(d, bool) or not isinstance(d, int) for d in offsets)):
            raise SpaceError(f"{label}.depth must be a list of integer offsets like [-1, 0, 1]")
        if blocks + min(offsets) < 1:
            raise SpaceError(f"{label}.depth: offset {min(offsets)} leaves no block of {blocks}")
        # Blocks are assigned to stages by their out channels, and a stage's later blocks
        # keep a residual only because in == out; two adjacent stages with equal widths
        # would make both ambiguous.
        if out == previous_out:
            raise SpaceError(f"{label}.out: {out} equals the previous stage's; adjacent stages "
                             "must differ in width")
        previous_out = out
        stages.append(StageSpace(out=out, stride=stage["stride"], blocks=blocks,
                                 expansions=tuple(expansions), depth_offsets=tuple(offsets)))
    return tuple(stages)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name (``mobilenetv3_large``) or a space YAML file."""
    from nas.arch.codecs import yaml_error_summary

    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise SpaceError(f"{name_or_path}: no such space file; shipped spaces: {shipped}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: {yaml_error_summary(err)}") from None
    return space_from_dict(data, str(path))
