"""The demo behind `python -m hungarian_loss`: learn to find rectangles, as a set.

Synthetic data made on the fly: grayscale images with 1 to `max_objects` filled
rectangles, and their boxes (`"center_xywh"`, normalized to `[0, 1]`), padded with
rows of -1 to `max_objects` rows. A small convolutional network predicts a fixed
number of boxes per image, in no particular order, and is trained with
`HungarianLoss(cost={"l1": 5.0, "giou": 2.0}, box_format="center_xywh")`: the true
boxes of an image are matched one-to-one to the predictions with the least total cost,
and only the matched pairs are pulled together.

The demo prints the matched error on held-out images before and after training (the
mean L1 distance, in pixels, between each true box and the prediction it is matched
to) and draws a few of them with their matches. matplotlib is needed for the picture
only and is imported when the demo runs: `pip install hungarian-loss[demo]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hungarian_loss.loss import HungarianLoss

__all__ = ["DemoResult", "build_model", "main", "make_data", "matched_error", "run"]

IMAGE_SIZE = 64
MAX_OBJECTS = 5
NUM_PREDICTIONS = 6
DETR_BOX_COST = {"l1": 5.0, "giou": 2.0}
INSTALL_HINT = (
    "The demo draws its picture with matplotlib, which is not installed.\n"
    "Install it with:  python -m pip install 'hungarian-loss[demo]'\n"
    "(or: python -m pip install matplotlib), then run `python -m hungarian_loss` again."
)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What a demo run measured and wrote.

    Attributes:
        error_before: Matched error (mean L1 per matched box, in pixels) on the held-out
            images before training.
        error_after: The same after training.
        seconds: Wall-clock time of the whole run.
        output: Path of the PNG written.
    """

    error_before: float
    error_after: float
    seconds: float
    output: Path


def make_data(
    num_images: int,
    seed: int,
    image_size: int = IMAGE_SIZE,
    max_objects: int = MAX_OBJECTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Images with 1 to `max_objects` filled, non-overlapping rectangles, and their boxes.

    Args:
        num_images: How many images.
        seed: Seed of the random generator.
        image_size: Side of the square images, in pixels.
        max_objects: Most rectangles in an image; also the number of box rows.

    Returns:
        `images`, float32 `[num_images, image_size, image_size, 1]` in `[0, 1]`, and
        `boxes`, float32 `[num_images, max_objects, 4]`: `"center_xywh"` boxes
        normalized by `image_size`, in random order, padding rows all -1.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.03, (num_images, image_size, image_size, 1))
    boxes = np.full((num_images, max_objects, 4), -1.0)
    low, high = image_size // 10, image_size * 3 // 8  # sides of 6 to 24 pixels at 64
    for index in range(num_images):
        wanted = int(rng.integers(1, max_objects + 1))
        placed: list[tuple[int, int, int, int]] = []  # xyxy, pixels
        for _ in range(50 * wanted):  # rejection sampling; a crowded image keeps fewer
            if len(placed) == wanted:
                break
            width, height = rng.integers(low, high + 1, size=2)
            left = int(rng.integers(0, image_size - width + 1))
            top = int(rng.integers(0, image_size - height + 1))
            box = (left, top, left + int(width), top + int(height))
            if all(not _overlap(box, other, gap=2) for other in placed):
                placed.append(box)
        for row, (left, top, right, bottom) in enumerate(placed):
            images[index, top:bottom, left:right, 0] += rng.uniform(0.5, 1.0)
            boxes[index, row] = (
                (left + right) / 2,
                (top + bottom) / 2,
                right - left,
                bottom - top,
            )
        boxes[index, : len(placed)] /= image_size
    return np.clip(images, 0.0, 1.0).astype("float32"), boxes.astype("float32")


def _overlap(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    """Whether two `"xyxy"` pixel boxes come closer than `gap` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def build_model(
    image_size: int = IMAGE_SIZE, num_predictions: int = NUM_PREDICTIONS
) -> keras.Model:
    """A small CNN: image in, `num_predictions` boxes out (`"center_xywh"`, sigmoid)."""
    inputs = keras.Input((image_size, image_size, 1))
    x = inputs
    for filters in (16, 32, 32, 64):  # 64 -> 32 -> 16 -> 8 -> 4 pixels
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dense(num_predictions * 4, activation="sigmoid")(x)
    outputs = keras.layers.Reshape((num_predictions, 4))(x)
    return keras.Model(inputs, outputs, name="box_finder")


def matched_error(loss: HungarianLoss, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean L1 distance in pixels between true boxes and the predictions matched to them.

    Args:
        loss: The loss whose matching to use (`HungarianLoss.match`).
        y_true: Boxes `[B, M, 4]`, padding rows all -1, normalized coordinates.
        y_pred: Predicted boxes `[B, N, 4]`, normalized coordinates.

    Returns:
        The mean over every matched pair of the batch of `sum_d |t_d - p_d|`, in pixels.
    """
    indices = np.asarray(loss.match(y_true, y_pred))  # [B, M]
    samples, targets = np.nonzero(indices >= 0)
    pairs = y_true[samples, targets] - y_pred[samples, indices[samples, targets]]  # [P, 4]
    return float(np.abs(pairs).sum(axis=1).mean() * IMAGE_SIZE)


def run(
    epochs: int = 12,
    samples: int = 4096,
    seed: int = 0,
    output: str | Path = "hungarian_demo.png",
    batch_size: int = 64,
    verbose: int = 1,
) -> DemoResult:
    """Trains the box finder and draws its matches; prints what it does.

    Args:
        epochs: Training epochs.
        samples: Training images (the held-out set is an eighth of that, 64 at least).
        seed: Seed of the data, the weights and the shuffling.
        output: Path of the PNG to write.
        batch_size: Training batch size.
        verbose: Keras `fit` verbosity: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The matched errors, the run time and the path of the picture.

    Raises:
        ModuleNotFoundError: if matplotlib is not installed.
    """
    start = time.perf_counter()
    pyplot = _import_pyplot()  # fail before training, not after
    output = Path(output)
    keras.utils.set_random_seed(seed)
    x_train, y_train = make_data(samples, seed=seed)
    x_test, y_test = make_data(max(64, samples // 8), seed=seed + 1)
    print(
        f"hungarian-loss demo (Keras {keras.__version__}, backend {keras.backend.backend()}): "
        f"{samples} training and {len(x_test)} held-out {IMAGE_SIZE}x{IMAGE_SIZE} images, "
        f"1 to {MAX_OBJECTS} rectangles each; the model predicts {NUM_PREDICTIONS} boxes."
    )

    loss = HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh")
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss)

    before = model.predict(x_test, batch_size=256, verbose=0)
    error_before = matched_error(loss, y_test, before)
    print(f"matched error before training: {error_before:.2f} px (mean L1 per matched box)")

    model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_test, y_test),
        verbose=verbose,
    )

    after = model.predict(x_test, batch_size=256, verbose=0)
    error_after = matched_error(loss, y_test, after)
    print(f"matched error after training:  {error_after:.2f} px (mean L1 per matched box)")

    shown = slice(0, 4)
    _draw(
        pyplot,
        output,
        x_test[shown],
        y_test[shown],
        {
            f"before training: {error_before:.1f} px": before[shown],
            f"after {epochs} epochs: {error_after:.1f} px": after[shown],
        },
        loss,
    )
    seconds = time.perf_counter() - start
    print(f"wrote {output} ({seconds:.0f} s in all)")
    return DemoResult(error_before, error_after, seconds, output)


def _import_pyplot() -> Any:
    """`matplotlib.pyplot` on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError as error:
        raise ModuleNotFoundError(INSTALL_HINT, name="matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _draw(
    pyplot: Any,
    output: Path,
    images: np.ndarray,
    y_true: np.ndarray,
    rows: dict[str, np.ndarray],
    loss: HungarianLoss,
) -> None:
    """One row per entry of `rows`: the images, true boxes, predictions and matches."""
    columns = len(images)
    figure, axes = pyplot.subplots(
        len(rows), columns, figsize=(2.6 * columns, 2.9 * len(rows)), squeeze=False
    )
    for row, (title, y_pred) in enumerate(rows.items()):
        indices = np.asarray(loss.match(y_true, y_pred))  # [B, M]
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(images[column, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            matched = set(indices[column][indices[column] >= 0].tolist())
            for j, box in enumerate(y_pred[column]):
                style = (
                    {"color": "tab:orange", "linestyle": "--", "linewidth": 1.5}
                    if j in matched
                    else {"color": "tab:gray", "linestyle": ":", "linewidth": 1.0}
                )
                _rectangle(pyplot, axis, box, **style)
            for i, box in enumerate(y_true[column]):
                if np.all(box == -1.0):
                    continue
                _rectangle(pyplot, axis, box, color="tab:green", linestyle="-", linewidth=1.5)
                j = int(indices[column, i])
                if j >= 0:
                    pred = y_pred[column, j]
                    axis.plot(
                        [box[0] * IMAGE_SIZE - 0.5, pred[0] * IMAGE_SIZE - 0.5],
                        [box[1] * IMAGE_SIZE - 0.5, pred[1] * IMAGE_SIZE - 0.5],
                        color="tab:red",
                        linewidth=1.2,
                        marker="o",
                        markersize=2.5,
                    )
        axes[row, 0].set_ylabel(title, fontsize=9)
    handles = [
        pyplot.Line2D([], [], color="tab:green", label="true box"),
        pyplot.Line2D([], [], color="tab:orange", linestyle="--", label="matched prediction"),
        pyplot.Line2D([], [], color="tab:gray", linestyle=":", label="unmatched prediction"),
        pyplot.Line2D([], [], color="tab:red", marker="o", markersize=3, label="matched pair"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle("HungarianLoss(cost={'l1': 5, 'giou': 2}): held-out images", fontsize=10)
    figure.tight_layout(rect=(0.0, 0.05, 1.0, 1.0))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    pyplot.close(figure)


def _rectangle(pyplot: Any, axis: Any, box: np.ndarray, **style: Any) -> None:
    """Draws a normalized `"center_xywh"` box on an image axis (pixel centers at integers)."""
    center_x, center_y, width, height = (float(v) * IMAGE_SIZE for v in box)
    corner = (center_x - width / 2 - 0.5, center_y - height / 2 - 0.5)
    axis.add_patch(pyplot.Rectangle(corner, width, height, fill=False, **style))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `python -m hungarian_loss`."""
    parser = argparse.ArgumentParser(
        prog="python -m hungarian_loss",
        description=(
            "Train a small CNN to find 1 to 5 rectangles in synthetic 64x64 images, as a set "
            "of 6 boxes, with HungarianLoss; print the matched error before and after "
            "training and draw the matches."
        ),
    )
    parser.add_argument("--epochs", type=_positive, default=12, help="training epochs (12)")
    parser.add_argument("--samples", type=_positive, default=4096, help="training images (4096)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--output",
        default="hungarian_demo.png",
        help="path of the PNG to write (hungarian_demo.png)",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity: 0 silent, 1 progress bar (default), 2 a line per epoch",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    """An `argparse` type: a positive integer."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo from the command line; returns the exit status.

    Args:
        argv: Command-line arguments (default: `sys.argv[1:]`).

    Returns:
        0 on success, 1 when matplotlib is missing (with how to install it).
    """
    args = parse_args(argv)
    try:
        run(
            epochs=args.epochs,
            samples=args.samples,
            seed=args.seed,
            output=args.output,
            verbose=args.verbose,
        )
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        print(error, file=sys.stderr)
        return 1
    return 0
