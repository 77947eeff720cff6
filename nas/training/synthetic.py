"""Synthetic images: a learnable, deterministic stand-in dataset with no files."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from nas.config import ConfigError


class SyntheticImages(Dataset):
    """Class-conditional images generated lazily from ``(seed, split, index)``.

    Each class owns a seeded *prototype*: two oriented colour gratings (orientation,
    spatial frequency, colour, relative strength). A sample draws, from its own seed, a
    random phase for each grating (shift), a common frequency scale and orientation jitter
    (scaling/rotation), a Gaussian window at a random place (where the pattern is), a
    contrast, a distractor grating borrowed from another class, a coloured blob, a random
    background colour gradient, and pixel noise.

    Random phases make every class's mean image nearly flat, so a linear model on pixels
    is close to chance; recognising a class needs phase-invariant, orientation- and
    frequency-selective features, which a small CNN learns in a few epochs, and a bigger
    or better one learns faster. Labels cycle through the classes (balanced).

    Images are float tensors ``(3, size, size)``, zero-mean with a standard deviation of
    about 0.5 (already normalised: no ``Normalize`` needed). Nothing is stored but the
    prototypes, so any size costs no memory.
    """

    # Difficulty: ranges of the pattern window's width (fraction of the image), the
    # distractor's amplitude and the pixel noise's standard deviation.
    # Tuned so that at resolution 64, 2 epochs of 3000 images, canonical Small reaches about
    # 0.68 top-1, Small x0.5 0.44 and Large 0.85 (10 classes): learnable, not saturated,
    # and different networks visibly apart.
    WINDOW = (0.3, 0.6)
    DISTRACTOR = (0.2, 0.5)
    NOISE = (0.1, 0.3)

    def __init__(self, *, num_samples: int, num_classes: int, size: int, seed: int,
                 split: int = 0) -> None:
        if num_samples < 1 or num_classes < 2 or size < 4:
            raise ConfigError("SyntheticImages needs num_samples >= 1, num_classes >= 2, size >= 4")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.size = size
        self.seed = seed
        self.split = split
        self.classes = [f"class_{c:03d}" for c in range(num_classes)]
        rng = np.random.default_rng([seed, 0x5EED, num_classes])
        # Prototype: per class, two gratings: (orientation, cycles per image, colour, amplitude).
        self._theta = rng.uniform(0.0, np.pi, size=(num_classes, 2))
        self._freq = rng.uniform(1.5, 5.0, size=(num_classes, 2))
        colour = rng.normal(size=(num_classes, 2, 3))
        self._colour = colour / np.linalg.norm(colour, axis=-1, keepdims=True)
        self._amp = np.stack([np.ones(num_classes), rng.uniform(0.5, 0.9, num_classes)], axis=1)
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")
        self.targets = [i % num_classes for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def _grating(self, theta: float, freq: float, phase: float) -> np.ndarray:
        proj = self._xx * math.cos(theta) + self._yy * math.sin(theta)
        return np.cos(2.0 * math.pi * freq * proj + phase)

    def _window(self, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        width = rng.uniform(low, high)
        return np.exp(-((self._xx - cx) ** 2 + (self._yy - cy) ** 2) / (2.0 * width**2))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, self.split, index])
        scale = rng.uniform(0.8, 1.25)
        jitter = rng.normal(0.0, 0.1)
        window = self._window(rng, *self.WINDOW)
        image = np.zeros((3, self.size, self.size), dtype=np.float64)
        contrast = rng.uniform(0.6, 1.2)
        for j in range(2):
            pattern = self._grating(self._theta[label, j] + jitter, self._freq[label, j] * scale,
                                    rng.uniform(0.0, 2.0 * math.pi))
            image += (contrast * self._amp[label, j] * window * pattern)[None] * \
                self._colour[label, j][:, None, None]
        # Distractor: a grating of another class, weaker and elsewhere, so single features
        # are ambiguous and the network must combine orientation, frequency and colour.
        other = (label + 1 + int(rng.integers(self.num_classes - 1))) % self.num_classes
        k = int(rng.integers(2))
        distractor = self._grating(self._theta[other, k] + rng.normal(0.0, 0.1),
                                   self._freq[other, k] * rng.uniform(0.8, 1.25),
                                   rng.uniform(0.0, 2.0 * math.pi))
        image += (rng.uniform(*self.DISTRACTOR) * self._window(rng, 0.15, 0.35) * distractor)[None] * \
            self._colour[other, k][:, None, None]
        # A coloured blob and a background gradient: class-independent clutter.
        image += rng.uniform(0.3, 1.0) * self._window(rng, 0.05, 0.15)[None] * \
            rng.normal(size=3)[:, None, None]
        gx, gy = rng.normal(0.0, 0.3, size=2)
        image += rng.normal(0.0, 0.3, size=3)[:, None, None] + \
            (gx * (self._xx - 0.5) + gy * (self._yy - 0.5))[None]
        image += rng.normal(0.0, rng.uniform(*self.NOISE), size=image.shape)
        return torch.from_numpy(image.astype(np.float32)), label


# ---------------------------------------------------------------------------- transforms
