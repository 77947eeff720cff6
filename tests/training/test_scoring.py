"""Per-image predictions, flip averaging and the packed correctness record."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.training.loop import NonFiniteLossError
from nas.training.scoring import decode_correct, encode_correct, evaluate_model, predict


class LeftBright(nn.Module):
    """Class 0 when the left half of the image is brighter than the right, else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        margin = x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([margin, -margin], dim=1) * 10


def _loader(images: torch.Tensor, labels: torch.Tensor) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(list(zip(images, labels)), batch_size=3)


def test_predict_keeps_every_image_in_order_and_flip_averages_the_mirror():
    images = torch.zeros(7, 3, 4, 4)
    images[:4, :, :, :2] = 1.0  # left-bright: class 0
    images[4:, :, :, 2:] = 1.0  # right-bright: class 1
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    plain = predict(LeftBright(), _loader(images, labels), "cpu")
    assert plain.correct().tolist() == [True, True, True, False, True, True, True]
    assert plain.top1() == 6 / 7 and evaluate_model(LeftBright(), _loader(images, labels), "cpu")[0] == 6 / 7
    assert plain.topk(5) is None  # two classes
    # The mirror of each image says the opposite with the same confidence: the average is a tie.
    flipped = predict(LeftBright(), _loader(images, labels), "cpu", flip=True)
    assert torch.allclose(flipped.logits.exp(), torch.full((7, 2), 0.5))


def test_flip_averaging_stays_finite_for_a_confident_network():
    class Confident(nn.Module):  # softmax underflows to exactly 0 for the other classes in fp32
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[200.0, -200.0, 0.0]]).repeat(len(x), 1)

    images, labels = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    assert torch.softmax(Confident()(images), 1)[0, 1] == 0  # the case the log space avoids
    flipped = predict(Confident(), _loader(images, labels), "cpu", flip=True)
    assert torch.isfinite(flipped.logits).all() and flipped.top1() == 1.0
    assert torch.allclose(flipped.logits.exp().sum(1), torch.ones(2))


def test_correctness_record_round_trips_at_any_length():
    for images in (1, 8, 13, 5000):
        correct = torch.rand(images, generator=torch.Generator().manual_seed(images)) > 0.3
        text = encode_correct(correct)
        assert decode_correct(text, images).tolist() == correct.tolist()
    assert len(encode_correct(torch.ones(5000, dtype=torch.bool))) == 836


def test_predict_refuses_non_finite_logits_and_empty_loaders():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 3), float("nan"))

    with pytest.raises(NonFiniteLossError, match="non-finite logits after 0 images"):
        predict(Broken(), _loader(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)), "cpu")
    with pytest.raises(ValueError, match="no images"):
        predict(LeftBright(), [], "cpu")
