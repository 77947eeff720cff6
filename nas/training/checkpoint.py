"""Checkpoint files: atomic writes, RNG states, and reading back with a check of what wrote them.

One module for every resumable run (stand-alone and proxy training, supernet training,
NetAdapt's run folder). A checkpoint is a ``torch.save``'d dict with a ``format`` string,
an ``arch`` description, the ``settings`` that determine the result and the training loop's
``progress`` (:func:`steps_done` reads it); a resume with
another architecture or other settings is refused with the differing fields named, never
silently continued.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from nas._io import write_atomic, write_text_atomic
from nas.errors import NASError


class CheckpointError(NASError, RuntimeError):
    """A checkpoint cannot be resumed (unreadable, foreign, or written by other settings)."""


# ---------------------------------------------------------------------------- atomic writes
def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary sibling, then rename: a kill never leaves half a file, a
    full disk no temporary file and one line naming the checkpoint."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp), what="a checkpoint")


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state_dict (safe to keep while training goes on)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- RNG states
def rng_state(*, sampler: random.Random | None = None) -> dict[str, Any]:
    """Every RNG stream a run draws from: torch (CPU, CUDA), Python, NumPy, and ``sampler``."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if sampler is not None:
        state["sampler"] = sampler.getstate()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], *, sampler: random.Random | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if sampler is not None and "sampler" in state:
        version, internal, gauss = state["sampler"]
        sampler.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path, fmt: str | int, *, what: str = "checkpoint",
                    hint: str = "", error: type[Exception] = CheckpointError) -> dict[str, Any]:
    """Load ``path`` (on the CPU, tensors only) and check its ``format``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise error(f"{path}: cannot read {what} ({err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise error(f"{path}: not a {what} (format {fmt!r}){hint}")
    return ckpt


def steps_done(ckpt: Mapping[str, Any]) -> int:
    """The optimiser steps a run had taken when its checkpoint was written.

    ``ckpt``: a checkpoint read with :func:`read_checkpoint`, or a record that keeps its
    ``progress`` (:func:`nas.supernet.train.load_supernet` returns one). The training loop
    (:mod:`nas.training.loop`) writes the progress; this keeps its layout in one place.
    """
    return int(ckpt["progress"]["step"])


def settings_diff(saved: dict[str, Any], now: dict[str, Any],
                  defaults: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """``part.key: checkpoint X vs now Y`` for every setting that differs.

    A setting the checkpoint predates (absent from it) counts as its value in ``defaults``:
    a field is added with the default that keeps the behaviour the code had before it, so an
    older checkpoint was trained as that default trains."""
    defaults = defaults or {}

    def saved_value(part: str, key: str) -> Any:
        own = saved.get(part, {})
        return own[key] if key in own else defaults.get(part, {}).get(key)

    return [f"{part}.{key}: checkpoint {saved_value(part, key)!r} vs now {value!r}"
            for part in now for key, value in now[part].items()
            if saved_value(part, key) != value]


def check_matches(ckpt: dict[str, Any], path: str | Path, *, arch: Any, settings: dict[str, Any],
                  error: type[Exception] = CheckpointError,
                  defaults: dict[str, dict[str, Any]] | None = None) -> None:
    """Refuse a checkpoint written for another architecture or with other settings
    (``defaults``: see :func:`settings_diff`)."""
    if ckpt.get("arch") != arch:
        if isinstance(arch, str):
            raise error(f"{path}: written for architecture {ckpt.get('arch')!r}, not {arch!r}; "
                        "use another checkpoint folder")
        raise error(f"{path}: written for another network (its architecture, class count or "
                    "structure differ); use another checkpoint folder")
    diffs = settings_diff(ckpt.get("settings", {}), settings, defaults)
    if diffs:
        raise error(f"{path}: written with other settings ({'; '.join(diffs)}); "
                    "use another checkpoint folder or the same settings")


__all__ = [
    "CheckpointError", "check_matches", "cpu_state", "read_checkpoint", "rng_state",
    "save_atomic", "set_rng_state", "settings_diff", "steps_done", "write_text_atomic",
]
