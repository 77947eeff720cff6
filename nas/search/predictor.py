"""An accuracy predictor: a network's supernet top-1 from its architecture encoding.

The design is Once-for-All's (Cai et al., ICLR 2020, Sec. 3.4, "accuracy predictor"): each
sub-network is encoded as the one-hot choices of its layers, a layer a stage does not use
encoded as zeros, and a small MLP (3 hidden layers of 400 units, ReLU) regresses the accuracy
the supernet measured for a few thousand sampled sub-networks. The search then queries the
predictor (microseconds a network) instead of the supernet (seconds a network).

Here the encoding is defined by a :class:`~nas.arch.space.SearchSpace`: for every stage whose
depth is searched a one-hot of its depth offset, then for every block position up to the
stage's largest depth a one-hot of each of its choices (kernel, expansion, SE, activation).
The predictor keeps the space it was fitted on (its name, a hash of its choices, the whole
document) and scores nothing outside it: a network with a choice value the space lacks, or a
predictor asked about another space, raises :class:`PredictorError` naming the block and the
value. A one-hot input the network never saw during fitting has no meaning to extrapolate.

A fitted predictor is saved as two small files: ``<name>.pt`` (``torch.save`` of the MLP's
state dict) and ``<name>.json`` (the space, the target scaling and the fitting settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from nas.arch.space import SearchSpace, SpaceError
from nas.arch.spec import NetworkSpec
from nas.config import Config, check_int, check_number
from nas.errors import NASError

FORMAT = 1  # the saved files' layout version


class PredictorError(NASError, ValueError):
    """A network or space the predictor was not fitted on, or an unusable predictor file."""


# ---------------------------------------------------------------------------- the space
def space_document(space: SearchSpace) -> dict[str, Any]:
    """The space as plain data (what a saved predictor keeps to rebuild it)."""
    from nas.supernet.train import space_to_dict

    return space_to_dict(space)


def space_hash(space: SearchSpace) -> str:
    """A short hash of the space's choices, stages and base network (its identity)."""
    text = json.dumps(space_document(space), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def genome(space: SearchSpace) -> list[tuple[str, tuple[Any, ...]]]:
    """Every parameter a network of ``space`` can have, with its choices, in a fixed order.

    The names are :meth:`SearchSpace.suggest`'s; the blocks a stage uses only at its larger
    depths are included (a fixed-length genome: an evolutionary search keeps them between
    generations even while a shallower depth leaves them unused).
    """
    genes: list[tuple[str, tuple[Any, ...]]] = []
    for s, stage in enumerate(space.stages, start=1):
        if len(stage.depth_offsets) > 1:
            genes.append((f"s{s}_depth", tuple(stage.depth_offsets)))
        for b in range(1, max(stage.depths) + 1):
            prefix = f"s{s}_b{b}_"
            genes += [(prefix + "kernel", tuple(space.kernels)),
                      (prefix + "expansion", tuple(stage.expansions)),
                      (prefix + "se", tuple(space.se)),
                      (prefix + "activation", tuple(space.activations))]
    return genes


class Encoding:
    """One-hot encoding of the networks of one space (see the module docstring)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.genes = genome(space)
        self._offsets: dict[str, tuple[int, dict[Any, int]]] = {}
        offset = 0
        for name, choices in self.genes:
            self._offsets[name] = (offset, {value: i for i, value in enumerate(choices)})
            offset += len(choices)
        self.size = offset
        # For encode_genomes: each gene's first one-hot column, and the block gene's depth rule
        # (its stage's depth gene, whose value index i means depth blocks + offsets[i]).
        self._starts = np.array([self._offsets[name][0] for name, _ in self.genes], dtype=np.int64)
        self._needs: list[tuple[int, int, np.ndarray] | None] = []
        names = [name for name, _ in self.genes]
        for name, _ in self.genes:
            stage_text, _, rest = name.partition("_")
            stage = space.stages[int(stage_text[1:]) - 1]
            if rest == "depth" or len(stage.depth_offsets) == 1:
                self._needs.append(None)  # always present (a fixed depth covers every block gene)
                continue
            block = int(rest.split("_")[0][1:])
            depths = np.array(stage.depths, dtype=np.int64)
            self._needs.append((names.index(f"{stage_text}_depth"), block, depths))

    def params(self, spec: NetworkSpec) -> dict[str, Any]:
        """``spec``'s parameters in this space; raises :class:`PredictorError` outside it."""
        try:
            return self.space.params_of(spec)
        except SpaceError as err:
            raise PredictorError(f"network {spec.name or '(unnamed)'} is outside the predictor's "
                                 f"space: {err}; a predictor scores only the space it was fitted "
                                 "on (it never extrapolates)") from None

    def encode(self, specs: Sequence[NetworkSpec]) -> np.ndarray:
        """A ``(len(specs), size)`` float32 array of one-hot rows."""
        out = np.zeros((len(specs), self.size), dtype=np.float32)
        for row, spec in enumerate(specs):
            for name, value in self.params(spec).items():
                offset, index = self._offsets[name]
                out[row, offset + index[value]] = 1.0
        return out

    def encode_genomes(self, genomes: np.ndarray) -> np.ndarray:
        """The one-hot rows of genomes (value indices, one column per :func:`genome` gene), as
        :meth:`encode` gives for the networks they decode to: a block its stage's depth leaves
        out is all zeros. Vectorised, for a search that scores 10^5 networks."""
        genomes = np.asarray(genomes, dtype=np.int64)
        rows = np.arange(len(genomes))
        out = np.zeros((len(genomes), self.size), dtype=np.float32)
        for g, need in enumerate(self._needs):
            used = rows if need is None else rows[need[2][genomes[:, need[0]]] >= need[1]]
            out[used, self._starts[g] + genomes[used, g]] = 1.0
        return out

# ---------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class PredictorModelConfig(Config):
    """The MLP and how it is fitted (``evaluator.model`` of ``evaluator=predictor``).

    Attributes:
        hidden: units per hidden layer (Once-for-All: 400).
        layers: hidden layers (Once-for-All: 3).
        epochs: passes over the scores.
        batch_size: scores per Adam step.
        lr: Adam's learning rate (cosine-annealed to 0).
        weight_decay: Adam's L2 penalty (the scores are few: a few hundred).
        seed: initialisation and batch order.
    """

    hidden: int = 400
    layers: int = 3
    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "evaluator.model"
        for name in ("hidden", "layers", "epochs", "batch_size"):
            check_int(owner, name, getattr(self, name), minimum=1)
        check_int(owner, "seed", self.seed, minimum=0)
        check_number(owner, "lr", self.lr, low=0.0, low_open=True)
        check_number(owner, "weight_decay", self.weight_decay, low=0.0)


def _mlp(inputs: int, hidden: int, layers: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules)


class AccuracyPredictor:
    """Once-for-All's accuracy predictor for one space: fit on (network, top-1), then predict.

    Args:
        space: the space whose networks it scores (and only those).
        config: the MLP's size and fitting settings.
    """

    def __init__(self, space: SearchSpace, config: PredictorModelConfig | None = None) -> None:
        self.space = space
        self.config = config or PredictorModelConfig()
        self.encoding = Encoding(space)
        self.space_hash = space_hash(space)
        self.net = self._fresh_net()
        # The targets are standardised for fitting (Once-for-All adds the mean accuracy as a
        # fixed bias for the same reason: the MLP then fits the differences between networks).
        self.mean, self.std = 0.0, 1.0
        self.fitted: dict[str, Any] = {}

    def _fresh_net(self) -> nn.Sequential:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return _mlp(self.encoding.size, self.config.hidden, self.config.layers)

    # ------------------------------------------------------------------ space checks
    def check_space(self, space: SearchSpace) -> None:
        """Raise unless ``space`` is the one the predictor was fitted on."""
        other = space_hash(space)
        if other != self.space_hash:
            raise PredictorError(
                f"the predictor was fitted on space {self.space.name!r} (choices hash "
                f"{self.space_hash}), not on space {space.name!r} (hash {other}); fit one on "
                "this space's scores")

    # ------------------------------------------------------------------ fit / predict
    def fit(self, specs: Sequence[NetworkSpec], top1: Sequence[float]) -> dict[str, Any]:
        """Fit on the networks ``specs`` and their measured ``top1``; returns the fit's record."""
        if len(specs) != len(top1) or len(specs) < 2:
            raise PredictorError(f"fitting needs at least 2 networks with one score each, got "
                                 f"{len(specs)} networks and {len(top1)} scores")
        x = torch.from_numpy(self.encoding.encode(specs))
        y = torch.tensor(np.asarray(top1, dtype=np.float64), dtype=torch.float32)
        if not torch.isfinite(y).all():
            raise PredictorError("fitting needs finite scores; some are NaN or infinite")
        self.mean = float(y.mean())
        self.std = float(y.std()) if float(y.std()) > 0 else 1.0
        target = (y - self.mean) / self.std
        cfg = self.config
        self.net = self._fresh_net()
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(specs) / cfg.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.net.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(specs), generator=generator)
            for start in range(0, len(specs), cfg.batch_size):
                batch = order[start:start + cfg.batch_size]
                loss = nn.functional.mse_loss(self.net(x[batch]).squeeze(1), target[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        self.net.eval()
        self.fitted = {"samples": len(specs)}
        fitted = self.predict(specs)
        self.fitted["train_rmse"] = float(np.sqrt(np.mean((fitted - y.double().numpy()) ** 2)))
        return dict(self.fitted)

    def predict(self, specs: Sequence[NetworkSpec]) -> np.ndarray:
        """Predicted top-1 of each of ``specs`` (a float64 array)."""
        return self.predict_encoded(self.encoding.encode(specs))

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray:
        """Predicted top-1 of genomes (:meth:`Encoding.encode_genomes`), a float64 array."""
        return self.predict_encoded(self.encoding.encode_genomes(genomes))

    def predict_encoded(self, x: np.ndarray) -> np.ndarray:
        """Predicted top-1 of already encoded rows (:class:`Encoding`), a float64 array."""
        if not self.fitted:
            raise PredictorError("the predictor is not fitted: call fit() or load a saved one")
        with torch.no_grad():
            out = self.net(torch.from_numpy(x)).squeeze(1).double() * self.std + self.mean
        return out.numpy()

    def predict_one(self, spec: NetworkSpec) -> float:
        return float(self.predict([spec])[0])

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path`` (``.pt``: the weights) and the ``.json`` beside it; returns both."""
        from nas._io import write_atomic, write_text_atomic

        if not self.fitted:
            raise PredictorError("an unfitted predictor is not saved")
        weights = Path(path).with_suffix(".pt")
        meta = weights.with_suffix(".json")
        weights.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(weights, lambda tmp: torch.save(self.net.state_dict(), tmp),
                     what="the predictor's weights")
        record = {"format": FORMAT, "space_name": self.space.name, "space_hash": self.space_hash,
                  "space": space_document(self.space), "inputs": self.encoding.size,
                  "model": dataclasses.asdict(self.config), "target_mean": self.mean,
                  "target_std": self.std, "fitted": self.fitted}
        write_text_atomic(meta, json.dumps(record, indent=1), what="the predictor's metadata")
        return weights, meta

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """A predictor saved by :meth:`save` (``path``: the ``.pt`` or the ``.json``)."""
        from nas.supernet.train import space_from_plain

        weights = Path(path).with_suffix(".pt")
        meta = weights.with_suffix(".json")
        for file in (weights, meta):
            if not file.is_file():
                raise PredictorError(f"{file}: missing; a saved predictor is a .pt and a .json "
                                     "of the same name")
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PredictorError(f"{meta}: not JSON ({err})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise PredictorError(f"{meta}: not a predictor file of format {FORMAT}")
        space = space_from_plain(record["space"])
        predictor = cls(space, PredictorModelConfig.from_dict(record["model"]))
        if predictor.space_hash != record["space_hash"]:
            raise PredictorError(f"{meta}: its space does not match its recorded hash "
                                 f"{record['space_hash']} (an edited file?)")
        predictor.net.load_state_dict(torch.load(weights, weights_only=True))
        predictor.net.eval()
        predictor.mean, predictor.std = float(record["target_mean"]), float(record["target_std"])
        predictor.fitted = dict(record["fitted"])
        return predictor


__all__ = ["AccuracyPredictor", "Encoding", "PredictorError", "PredictorModelConfig", "genome",
           "space_document", "space_hash"]
