"""Training-step worker (TensorFlow or PyTorch backend): a DETR-like box head, two losses.

The model maps a feature vector to `N` boxes (`center_xywh`, sigmoid). Each image has a random
number (1 to M) of true boxes, padded to `M` rows of -1. Both models are compiled with Adam and
`jit_compile=True` on TensorFlow, Keras's default (`"auto"`: eager steps, the solver compiled by
the package) on PyTorch; contenders (one `model.train_on_batch` per call; on PyTorch the names
end in `_torch`):

- `hungarian`: `HungarianLoss(cost={"l1": 5.0, "giou": 2.0})`, matching inside the step;
- `ordered_l1`: an order-bound L1 (the first M predictions against the padded targets, padding
  masked out), the same work without any matching.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
from common import Case, Contender, error_summary, serve

PADDING = -1.0


def train_batch(
    rng: np.random.Generator, batch: int, features: int, max_targets: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(x [batch, features], y [batch, max_targets, 4])`: center_xywh boxes, padded with -1."""
    x = rng.standard_normal((batch, features)).astype(np.float32)
    centers = rng.uniform(0.2, 0.8, size=(batch, max_targets, 2))
    sizes = rng.uniform(0.05, 0.3, size=(batch, max_targets, 2))
    y = np.concatenate([centers, sizes], axis=-1).astype(np.float32)
    counts = rng.integers(1, max_targets + 1, size=batch)
    y[np.arange(max_targets)[None, :] >= counts[:, None]] = PADDING
    return x, y


def ordered_l1(y_true: Any, y_pred: Any) -> Any:
    """Per-sample mean absolute error of prediction `i` against target `i`, padding excluded."""
    from keras import ops

    count = y_true.shape[1]
    error = ops.mean(ops.abs(y_pred[:, :count] - y_true), axis=-1)  # [B, M]
    real = ops.cast(ops.any(ops.not_equal(y_true, PADDING), axis=-1), error.dtype)  # [B, M]
    return ops.sum(error * real, axis=-1) / ops.maximum(ops.sum(real, axis=-1), 1.0)


def box_head(features: int, predictions: int, seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(predictions * 4),
            keras.layers.Reshape((predictions, 4)),
            keras.layers.Activation("sigmoid"),
        ]
    )


def make_contender(loss: Any, config: dict[str, Any]) -> Contender:
    import keras

    spec = config["train"]
    model = box_head(spec["features"], spec["predictions"], config["seed"])
    jit_compile: Any = "auto" if keras.backend.backend() == "torch" else True
    model.compile(optimizer="adam", loss=loss, jit_compile=jit_compile)

    def step(batch: tuple[np.ndarray, np.ndarray]) -> float:
        return float(model.train_on_batch(*batch))

    return Contender(run=step)


def build(config: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    import keras

    spec = config["train"]
    info: dict[str, Any] = {"backend": keras.backend.backend(), "unavailable": {}, **spec}
    suffix = "_torch" if info["backend"] == "torch" else ""
    contenders = {}
    try:
        from hungarian_loss import HungarianLoss

        loss = HungarianLoss(cost={"l1": 5.0, "giou": 2.0}, box_format="center_xywh")
        contenders["hungarian" + suffix] = make_contender(loss, config)
    except Exception as error:
        info["unavailable"]["hungarian" + suffix] = error_summary(error)
    contenders["ordered_l1" + suffix] = make_contender(ordered_l1, config)
    case = Case(
        name=f"{spec['batch']}x{spec['targets']}->{spec['predictions']}",
        make_input=functools.partial(
            train_batch,
            batch=spec["batch"],
            features=spec["features"],
            max_targets=spec["targets"],
        ),
        contenders=contenders,
        check=lambda _, losses: {name: {"first_loss": value} for name, value in losses.items()},
    )
    return [case], info


if __name__ == "__main__":
    sys.exit(serve(build))
