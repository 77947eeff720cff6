"""Scoring a trained network on a validation split: top-1/top-5/loss, per-image predictions.

``evaluate_model`` is what every training path reports (stand-alone training, NetAdapt's
fine-tuning, supernet extraction). ``predict`` keeps each image's logits, for what a summary
figure hides: which images a network gets right (so two seeds can be compared image by image,
and the part of their top-1 difference that is the val set's own sampling noise estimated) and
test-time flip averaging (the mean of the softmax over an image and its mirror).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.config import ConfigError
from nas.training.loop import NonFiniteLossError


@dataclass(frozen=True)
class Predictions:
    """Every image's logits (or, with flip averaging, log-probabilities) and its label."""

    logits: torch.Tensor  # (images, classes), float32 on the CPU
    target: torch.Tensor  # (images,), int64

    def correct(self) -> torch.Tensor:
        """Which images are classified right (bool, one per image, in loader order)."""
        return self.logits.argmax(dim=1) == self.target

    def top1(self) -> float:
        # Counted as integers: the same fraction as (right images) / (images), to the last bit.
        return int(self.correct().sum()) / len(self.target)

    def topk(self, k: int) -> float | None:
        if self.logits.shape[1] < k:
            return None
        hits = (self.logits.topk(k, dim=1).indices == self.target[:, None]).any(dim=1)
        return int(hits.sum()) / len(self.target)

    def loss(self) -> float:
        """Mean cross-entropy (no label smoothing)."""
        return float(nn.functional.cross_entropy(self.logits.double(), self.target))


def encode_correct(correct: torch.Tensor) -> str:
    """Per-image correctness as a compact string (bits packed, base64): 5,000 images, 836 chars."""
    return base64.b64encode(np.packbits(correct.numpy().astype(np.uint8)).tobytes()).decode("ascii")


def decode_correct(text: str, images: int) -> np.ndarray:
    """Inverse of :func:`encode_correct` (``images`` trims the packing's padding bits)."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:images].astype(bool)


@torch.no_grad()
def predict(model: nn.Module, loader: Any, device: torch.device | str, *, flip: bool = False) -> Predictions:
    """Run ``model`` (in eval mode) over ``loader`` and keep every image's output.

    With ``flip`` the output is the log of the mean softmax over each image and its horizontal
    mirror (test-time augmentation; the training augmentation flips too, so both views are
    in-distribution). Raises :class:`NonFiniteLossError` when the logits are not finite.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    try:
        for images, target in loader:
            images = images.to(device, non_blocking=True)
            logits = model(images).float()
            if flip:
                mirrored = model(images.flip(dims=[3])).float()
                # log of the mean softmax, in log space: a confident network's softmax underflows
                # to 0 for some classes, and the log of that would be -inf.
                views = torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)])
                logits = torch.logsumexp(views, dim=0) - math.log(2)
            if not torch.isfinite(logits).all():
                raise NonFiniteLossError(
                    f"evaluation produced non-finite logits after {sum(len(t) for t in targets)} images; "
                    "the weights have diverged (lower the learning rate)"
                )
            outputs.append(logits.cpu())
            targets.append(target.cpu())
    finally:
        model.train(was_training)
    if not targets:
        raise ConfigError("the evaluation loader yielded no images (an empty val split?)")
    return Predictions(torch.cat(outputs), torch.cat(targets).long())


def evaluate_model(model: nn.Module, loader: Any, device: torch.device | str
                   ) -> tuple[float, float | None, float]:
    """``(top1, top5, loss)`` of ``model`` on ``loader`` (fractions; top5 None below 5 classes).

    Raises :class:`NonFiniteLossError` when the logits are not finite.
    """
    scored = predict(model, loader, device)
    return scored.top1(), scored.topk(5), scored.loss()
