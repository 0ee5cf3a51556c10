"""``digits-cnn``: a small convolutional network classifying scikit-learn's 8x8 handwritten digits.

Data: ``sklearn.datasets.load_digits()``, which ships inside scikit-learn (no download): 1797
grey-scale images of 8x8 pixels with integer values 0..16, ten classes (the UCI "optical
recognition of handwritten digits" test set). Pixels are divided by 16 into [0, 1] and the images
shaped ``(N, 1, 8, 8)``. The split is the same for every seed and every process: the images are
shuffled by ``torch.randperm`` from a generator seeded with :data:`SPLIT_SEED`, the first 1437
(80 %) train and the last 360 test.

Model (:class:`DigitsNet`, 151,306 parameters): conv 1->32 (3x3, padding 1), ReLU, conv 32->64
(3x3, padding 1), ReLU, 2x2 max-pool to 64x4x4, flatten, ``fc`` 1024->128, ReLU, ``head`` 128->10.
:func:`steepest.roles.classify` labels the two filters ``conv``, ``fc.weight`` ``hidden``,
``head.weight`` ``head`` and the biases ``vector``.

A trial with seed ``s`` initialises the network with torch's default initialisation drawn under
``torch.manual_seed(s)`` inside a forked RNG (the caller's global RNG is left as it was), and draws
each training minibatch as ``batch_size`` indices sampled uniformly *with replacement*
(``torch.randint``) from a generator seeded with ``s + 1``. The metric is the cross-entropy on the
whole test set; the test accuracy is reported beside it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..gpt import count_parameters
from .base import SECOND_STREAM, Budget, Task, Trial

#: the seed of the permutation that splits the 1797 images into train and test (never the trial's)
SPLIT_SEED = 1797
N_TEST = 360
SOURCE = "sklearn.datasets.load_digits"


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, a max-pool and two linear layers; logits for the ten digits."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        # torch's default init draws from the global RNG: fork it so the caller's stream is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc = nn.Linear(64 * 4 * 4, 128)
            self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(F.relu(self.fc(x.flatten(1))))


def split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed ``(train, test)`` index split of ``n`` images: the last :data:`N_TEST` of a seeded permutation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:-N_TEST], order[-N_TEST:]


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: images in [0, 1] of shape (N, 1, 8, 8), int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError("the digits-cnn task needs scikit-learn (its digits images ship with it): "
                           "pip install scikit-learn") from exc
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train, test = split_indices(len(labels))
    return images[train], labels[train], images[test], labels[test]


class DigitsTrial(Trial):
    def __init__(self, data: tuple[torch.Tensor, ...], seed: int, batch_size: int) -> None:
        self.model = DigitsNet(seed)
        self.roles = None
        self._x_train, self._y_train, self._x_test, self._y_test = data
        self._batch_size = batch_size
        self._generator = torch.Generator().manual_seed(seed + 1)
        self._second_generator = torch.Generator().manual_seed(seed + SECOND_STREAM)

    def _loss(self, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(self._y_train), (self._batch_size,), generator=generator)
        return F.cross_entropy(self.model(self._x_train[index]), self._y_train[index])

    def train_loss(self) -> torch.Tensor:
        return self._loss(self._generator)

    def second_loss(self) -> torch.Tensor:
        return self._loss(self._second_generator)

    @torch.no_grad()
    def classifier_features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(features, labels, weight, bias)`` of the last layer on the whole training set: the
        inputs of ``head`` (the penultimate ReLU features, ``N x 128``), the labels, and ``head``'s
        weight and bias; what :func:`steepest.diagnostics.neural_collapse` measures."""
        captured = []
        hook = self.model.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self.model.eval()
            self.model(self._x_train)
        finally:
            self.model.train()
            hook.remove()
        head = self.model.head
        return captured[0], self._y_train, head.weight.detach(), head.bias.detach()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        logits = self.model(self._x_test)
        self.model.train()
        return {"test_loss": F.cross_entropy(logits, self._y_test).item(),
                "test_accuracy": (logits.argmax(1) == self._y_test).float().mean().item()}


class DigitsCNN(Task):
    """The CNN on scikit-learn's digits (see the module docstring). It takes no options."""

    name = "digits-cnn"
    metric = "test_loss"
    metric_label = "test loss (cross-entropy)"
    extra_metrics = ("test_accuracy",)
    # A step takes milliseconds on 2 CPU threads, so a trial trains in seconds (the report's ms per
    # step has the numbers).
    budgets = {
        "smoke": Budget(steps=6, batch_size=8, eval_every=3),
        "quick": Budget(steps=300, batch_size=64, eval_every=20),
        "full": Budget(steps=500, batch_size=64, eval_every=25),
    }

    def __init__(self, **options) -> None:
        if options:
            raise ValueError(f"{self.name}: unknown option {sorted(options)[0]!r}; this task takes no options")
        super().__init__()
        self._data: tuple[torch.Tensor, ...] | None = None

    @property
    def data(self) -> tuple[torch.Tensor, ...]:
        """The cached ``(x_train, y_train, x_test, y_test)``, loaded on first use."""
        if self._data is None:
            self._data = load_digits_split()
        return self._data

    def prepare(self) -> dict:
        x_train, y_train, x_test, y_test = self.data
        return {"source": SOURCE, "n_train": len(y_train), "n_test": len(y_test),
                "classes": int(torch.cat([y_train, y_test]).max()) + 1,
                "image_shape": list(x_train.shape[1:]),
                "split": f"fixed permutation (torch seed {SPLIT_SEED}): {len(y_train)} train, "
                         f"last {len(y_test)} test, the same for every seed",
                "pixel_scale": "values 0..16 divided by 16"}

    def trial(self, seed: int, batch_size: int) -> Trial:
        return DigitsTrial(self.data, seed, batch_size)

    def describe_model(self) -> str:
        return (f"CNN conv 1->32, conv 32->64 (3x3), max-pool, linear 1024->128->10: "
                f"{count_parameters(DigitsNet()):,} parameters")
