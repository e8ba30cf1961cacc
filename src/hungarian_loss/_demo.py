"""The demo behind `python -m hungarian_loss`: a rectangle detector trained with DETRLoss.

Synthetic data made on the fly: grayscale images with 1 to `max_objects` filled
rectangles, and their boxes (`"center_xywh"`, normalized to `[0, 1]`) with the class id
0 ("rectangle"), padded with rows of -1 to `max_objects` rows. A small convolutional
network predicts a fixed set of `NUM_PREDICTIONS` items per image, in no particular
order: a box and two logits, "rectangle" and "no object". It is trained with
`DETRLoss(eos_coef=0.6)`: the true boxes of an image are matched one-to-one to the
predictions with the least total cost (class, L1 and GIoU), the matched predictions learn
their box and the class "rectangle", and every other prediction learns to say "no object".

With `recipe="rt-detr"` (`--recipe rt-detr`) each item is a box and one sigmoid logit,
"rectangle" (no "no object" logit), and the loss is RT-DETR's criterion,
`DETRLoss.rt_detr(denoising_groups=0)`: the varifocal loss, which trains the score of a
matched prediction towards the IoU of its box with its target's and every other score
towards 0, matching weights class/L1/GIoU 2/5/2 with a focal class cost, and the batch's
normalization with the reduction "sum" (RT-DETR's criterion itself). The CNN has no
decoder, so there are no denoising queries: the recipe's class term, matching and
normalization are what this exercises.

With `--task masks` the demo trains a mask-set predictor instead (rectangles and discs,
a mask and a class per query, Mask2Former's criterion `DETRLoss.mask2former()`): see
`hungarian_loss._demo_masks`.

The demo prints, on held-out images before and after training, the precision and the
recall of the predictions the model calls rectangles (score above 0.5: the softmax
probability of "rectangle", or with `"rt-detr"` the sigmoid of its logit) at IoU 0.5,
and the matched error (the mean L1 distance, in pixels, between each true box and the
prediction matched to it), then draws a few images with their detections. matplotlib is
needed for the picture only and is imported when the demo runs:
`pip install hungarian-loss[demo]`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hungarian_loss.detr import DETRLoss
from hungarian_loss.loss import HungarianLoss

__all__ = [
    "RECIPES",
    "TASKS",
    "DemoResult",
    "build_model",
    "detection_scores",
    "main",
    "make_data",
    "make_loss",
    "matched_error",
    "object_probability",
    "run",
]

IMAGE_SIZE = 64
MAX_OBJECTS = 5
NUM_PREDICTIONS = 16
EOS_COEF = 0.6  # the weight of "no object" for unmatched predictions (DETR: 0.1)
EPOCHS = 16
BATCH_SIZE = 32
THRESHOLD = 0.5  # a prediction is a detection when its "rectangle" score is above it
IOU_THRESHOLD = 0.5  # a detection is right when its IoU with a true box is at least this
DETR_BOX_COST = {"l1": 5.0, "giou": 2.0}
RECIPES = ("detr", "rt-detr")
TASKS = ("boxes", "masks")  # a box detector (the default), or a mask-set predictor


@dataclasses.dataclass(frozen=True)
class _TaskDefaults:
    """The defaults of `--epochs`, `--samples` and `--output` for one task."""

    epochs: int
    samples: int
    output: str


TASK_DEFAULTS = {
    "boxes": _TaskDefaults(epochs=EPOCHS, samples=4096, output="hungarian_demo.png"),
    "masks": _TaskDefaults(epochs=20, samples=2048, output="hungarian_demo_masks.png"),
}
# The logits of each prediction, by recipe: "rectangle" and "no object" (softmax), or
# "rectangle" alone (sigmoid).
NUM_LOGITS = {"detr": 2, "rt-detr": 1}
LOSS_NAMES = {
    "detr": f"DETRLoss(eos_coef={EOS_COEF})",
    "rt-detr": "DETRLoss.rt_detr(denoising_groups=0)",
}
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
        precision_before: Precision of the detections (probability > 0.5) at IoU 0.5 on
            the held-out images before training (0 when there are none).
        recall_before: Recall of the true boxes at IoU 0.5, before training.
        precision_after: Precision after training.
        recall_after: Recall after training.
        seconds: Wall-clock time of the whole run.
        output: Path of the PNG written.
        recipe: The recipe trained: `"detr"` or `"rt-detr"`.
    """

    error_before: float
    error_after: float
    precision_before: float
    recall_before: float
    precision_after: float
    recall_after: float
    seconds: float
    output: Path
    recipe: str = "detr"


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
        `boxes`, float32 `[num_images, max_objects, 5]`: `"center_xywh"` boxes
        normalized by `image_size` and the class id 0, in random order, padding rows
        all -1.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.03, (num_images, image_size, image_size, 1))
    boxes = np.full((num_images, max_objects, 5), -1.0)
    low, high = image_size // 8, image_size * 3 // 8  # sides of 8 to 24 pixels at 64
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
            boxes[index, row, :4] = (
                (left + right) / 2,
                (top + bottom) / 2,
                right - left,
                bottom - top,
            )
            boxes[index, row, 4] = 0.0  # the class "rectangle"
        boxes[index, : len(placed), :4] /= image_size
    return np.clip(images, 0.0, 1.0).astype("float32"), boxes.astype("float32")


def _overlap(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    """Whether two `"xyxy"` pixel boxes come closer than `gap` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def build_model(
    image_size: int = IMAGE_SIZE,
    num_predictions: int = NUM_PREDICTIONS,
    recipe: str = "detr",
) -> keras.Model:
    """A small CNN: image in, `num_predictions` items out, `[B, N, 4 + logits]`.

    Each item is a box (`"center_xywh"`, sigmoid) and, with the `"detr"` recipe, two
    logits, "rectangle" and "no object" (`[B, N, 6]`); with `"rt-detr"`, one sigmoid
    logit, "rectangle" (`[B, N, 5]`).
    """
    num_logits = NUM_LOGITS[_checked(recipe)]
    inputs = keras.Input((image_size, image_size, 1))
    x = _AddCoordinates()(inputs)  # where each pixel is: boxes are positions
    for filters, stride in ((16, 2), (32, 2), (64, 2), (64, 1)):  # 64 -> 32 -> 16 -> 8 pixels
        x = keras.layers.Conv2D(filters, 3, stride, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    boxes = keras.layers.Dense(num_predictions * 4, activation="sigmoid")(x)
    logits = keras.layers.Dense(num_predictions * num_logits)(x)
    outputs = keras.layers.Concatenate(axis=-1)(
        [
            keras.layers.Reshape((num_predictions, 4))(boxes),
            keras.layers.Reshape((num_predictions, num_logits))(logits),
        ]
    )
    return keras.Model(inputs, outputs, name="rectangle_detector")


class _AddCoordinates(keras.layers.Layer):
    """Appends two channels to an image: the x and the y of each pixel, in `[0, 1]`."""

    def call(self, images: Any) -> Any:
        height, width = images.shape[1], images.shape[2]
        ys = keras.ops.linspace(0.0, 1.0, height)[:, None] * keras.ops.ones((1, width))
        xs = keras.ops.ones((height, 1)) * keras.ops.linspace(0.0, 1.0, width)[None, :]
        grid = keras.ops.stack([xs, ys], axis=-1)[None]  # [1, H, W, 2]
        grid = keras.ops.broadcast_to(grid, (keras.ops.shape(images)[0], height, width, 2))
        return keras.ops.concatenate([images, keras.ops.cast(grid, images.dtype)], axis=-1)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*input_shape[:-1], input_shape[-1] + 2)


def make_loss(recipe: str = "detr") -> DETRLoss:
    """The loss of a recipe.

    `"detr"`: `DETRLoss(eos_coef=0.6)`, DETR's weights with a heavier "no object" term
    (a small model trained briefly otherwise keeps duplicates of its detections), each
    sample normalized by its own boxes. `"rt-detr"`: `DETRLoss.rt_detr(denoising_groups=0)`
    as it is, batch normalization and reduction "sum" included (the demo's model has no
    decoder, hence no denoising queries).
    """
    if _checked(recipe) == "rt-detr":
        return DETRLoss.rt_detr(denoising_groups=0)
    return DETRLoss(eos_coef=EOS_COEF)


def _checked(recipe: str) -> str:
    """`recipe` if it is one of `RECIPES`, else a `ValueError`."""
    if recipe not in RECIPES:
        raise ValueError(f"Expected recipe to be one of {RECIPES}. Received: recipe={recipe!r}")
    return recipe


def object_probability(y_pred: np.ndarray, recipe: str = "detr") -> np.ndarray:
    """The score of "rectangle" of each prediction, `[B, N]`.

    `"detr"`: the softmax probability of "rectangle" against "no object".
    `"rt-detr"`: the sigmoid of the "rectangle" logit (trained by the varifocal loss
    towards the IoU of the prediction's box with its object's).
    """
    if _checked(recipe) == "rt-detr":
        return np.asarray(1.0 / (1.0 + np.exp(-y_pred[..., 4].astype("float64"))))
    logits = y_pred[..., 4:].astype("float64")  # [B, N, 2]
    logits = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return np.asarray(probabilities[..., 0], dtype="float64")


def matched_error(loss: HungarianLoss, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean L1 distance in pixels between true boxes and the predictions matched to them.

    Args:
        loss: The loss whose matching to use (`HungarianLoss.match`).
        y_true: Targets `[B, M, 4 (+ 1)]`, padding rows all -1, normalized coordinates.
        y_pred: Predictions `[B, N, 4 (+ logits)]`, normalized coordinates.

    Returns:
        The mean over every matched pair of the batch of `sum_d |t_d - p_d|` over the
        four box coordinates, in pixels.
    """
    indices = np.asarray(loss.match(y_true, y_pred))  # [B, M]
    samples, targets = np.nonzero(indices >= 0)
    pairs = y_true[samples, targets, :4] - y_pred[samples, indices[samples, targets], :4]
    return float(np.abs(pairs).sum(axis=1).mean() * IMAGE_SIZE)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one `"center_xywh"` box with each of `others [K, 4]`: `[K]`."""
    lo, hi = box[:2] - box[2:4] / 2, box[:2] + box[2:4] / 2  # [2]
    lows, highs = others[:, :2] - others[:, 2:4] / 2, others[:, :2] + others[:, 2:4] / 2
    overlap = np.clip(np.minimum(hi, highs) - np.maximum(lo, lows), 0.0, None)  # [K, 2]
    intersection = overlap.prod(axis=1)
    union = box[2:4].prod() + others[:, 2:4].prod(axis=1) - intersection
    return np.asarray(intersection / np.maximum(union, 1e-12), dtype="float64")


def detection_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    threshold: float = THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    recipe: str = "detr",
) -> tuple[float, float]:
    """Precision and recall of the detections at an IoU threshold, over a batch.

    The detections are the predictions whose "rectangle" score (`object_probability`)
    is above `threshold`. In each image, taken from the most to the least probable, a detection
    is right when it overlaps a true box not yet taken with IoU >= `iou_threshold`
    (the greedy rule of detection benchmarks such as PASCAL VOC).

    Args:
        y_true: Targets `[B, M, 5]`, padding rows all -1.
        y_pred: Predictions `[B, N, 4 + 2]` (`"detr"`) or `[B, N, 4 + 1]` (`"rt-detr"`).
        threshold: Score above which a prediction is a detection.
        iou_threshold: Least IoU of a right detection with its true box.
        recipe: Which scores `y_pred` holds: `"detr"` or `"rt-detr"`.

    Returns:
        `(precision, recall)`: right detections over detections (0 when there are
        none) and over true boxes.
    """
    probabilities = object_probability(y_pred, recipe)  # [B, N]
    right = detections = boxes = 0
    for targets, predictions, scores in zip(y_true, y_pred, probabilities, strict=True):
        targets = targets[~np.all(targets == -1.0, axis=1), :4].astype("float64")
        boxes += len(targets)
        free = np.ones(len(targets), dtype=bool)
        for j in np.argsort(-scores):
            if scores[j] <= threshold:
                break
            detections += 1
            if not free.any():
                continue
            overlaps = np.where(free, _iou(predictions[j, :4].astype("float64"), targets), -1.0)
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold:
                free[best] = False
                right += 1
    return right / max(detections, 1), right / max(boxes, 1)


def run(
    epochs: int = EPOCHS,
    samples: int = 4096,
    seed: int = 0,
    output: str | Path = "hungarian_demo.png",
    batch_size: int = BATCH_SIZE,
    verbose: int = 1,
    recipe: str = "detr",
) -> DemoResult:
    """Trains the rectangle detector and draws its detections; prints what it does.

    A run is reproducible: the same seed gives the same data, weights and numbers (on
    TensorFlow, op determinism is switched on for the run).

    Args:
        epochs: Training epochs.
        samples: Training images (the held-out set is an eighth of that, 64 at least).
        seed: Seed of the data, the weights and the shuffling.
        output: Path of the PNG to write.
        batch_size: Training batch size.
        verbose: Keras `fit` verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
        recipe: `"detr"` (softmax with "no object", `DETRLoss(eos_coef=0.6)`) or
            `"rt-detr"` (one sigmoid logit, `DETRLoss.rt_detr(denoising_groups=0)`).

    Returns:
        The precision, recall and matched error before and after training, the run
        time, the path of the picture and the recipe.

    Raises:
        ModuleNotFoundError: if matplotlib is not installed.
        ValueError: if `recipe` is not one of `RECIPES`.
    """
    _checked(recipe)
    start = time.perf_counter()
    pyplot = _import_pyplot()  # fail before training, not after
    output = Path(output)
    with _deterministic():
        return _run(pyplot, output, epochs, samples, seed, batch_size, verbose, start, recipe)


def _run(
    pyplot: Any,
    output: Path,
    epochs: int,
    samples: int,
    seed: int,
    batch_size: int,
    verbose: int,
    start: float,
    recipe: str,
) -> DemoResult:
    """The body of `run`, with deterministic kernels switched on."""
    keras.utils.set_random_seed(seed)
    x_train, y_train = make_data(samples, seed=seed)
    x_test, y_test = make_data(max(64, samples // 8), seed=seed + 1)
    logits = (
        'a sigmoid "rectangle" logit (no "no object" logit)'
        if recipe == "rt-detr"
        else '"rectangle" and "no object" logits'
    )
    print(
        f"hungarian-loss demo, recipe {recipe} (Keras {keras.__version__}, backend "
        f"{keras.backend.backend()}): {samples} training and {len(x_test)} held-out "
        f"{IMAGE_SIZE}x{IMAGE_SIZE} images, 1 to {MAX_OBJECTS} rectangles each; the model "
        f"predicts {NUM_PREDICTIONS} boxes with {logits}, trained with {LOSS_NAMES[recipe]}."
    )
    if recipe == "rt-detr":
        print(
            "The CNN has no decoder, so there are no denoising queries (denoising_groups=0): "
            "this exercises the recipe's varifocal loss, matching weights 2/5/2 and batch "
            "normalization (reduction 'sum')."
        )

    loss = make_loss(recipe)
    model = build_model(recipe=recipe)
    steps = epochs * -(-samples // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)

    def measure(when: str) -> tuple[np.ndarray, float, float, float]:
        predictions = model.predict(x_test, batch_size=256, verbose=0)
        precision, recall = detection_scores(y_test, predictions, recipe=recipe)
        error = matched_error(loss, y_test, predictions)
        print(
            f"{recipe}, {when}: precision {precision:.3f}, recall {recall:.3f} "
            f"(p > {THRESHOLD}, IoU >= {IOU_THRESHOLD}); matched error {error:.2f} px "
            "(mean L1 per matched box)"
        )
        return predictions, precision, recall, error

    before, precision_before, recall_before, error_before = measure("before training")
    model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_test, y_test),
        verbose=verbose,
    )
    after, precision_after, recall_after, error_after = measure("after training ")

    shown = slice(0, 4)
    _draw(
        pyplot,
        output,
        x_test[shown],
        y_test[shown],
        {
            f"before training\nP {precision_before:.2f}, R {recall_before:.2f}": before[shown],
            f"after {epochs} epochs\nP {precision_after:.2f}, R {recall_after:.2f}": after[shown],
        },
        recipe,
    )
    seconds = time.perf_counter() - start
    print(f"wrote {output} ({seconds:.0f} s in all)")
    return DemoResult(
        error_before,
        error_after,
        precision_before,
        recall_before,
        precision_after,
        recall_after,
        seconds,
        output,
        recipe,
    )


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Backend-specific: deterministic kernels on TensorFlow (JAX's CPU kernels are).

    For the run only: TensorFlow's op determinism also turns off XLA in every model
    compiled later in the process (Keras's `jit_compile=True` falls back), so the previous
    setting is restored afterwards. TensorFlow's public API can only switch it on; where
    its internal switch is missing, the setting stays on.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        switch_off = getattr(tf_config, "disable_op_determinism", None)
        if not was_on and switch_off is not None:
            switch_off()


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
    recipe: str = "detr",
) -> None:
    """One row per entry of `rows`: the images, true boxes, and the detections (p > 0.5)."""
    columns = len(images)
    figure, axes = pyplot.subplots(
        len(rows), columns, figsize=(2.6 * columns, 2.9 * len(rows)), squeeze=False
    )
    for row, (title, y_pred) in enumerate(rows.items()):
        probabilities = object_probability(y_pred, recipe)  # [B, N]
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(images[column, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            for box in y_true[column]:
                if not np.all(box == -1.0):
                    _rectangle(pyplot, axis, box, color="tab:green", linestyle="-", linewidth=1.5)
            for box, probability in zip(y_pred[column], probabilities[column], strict=True):
                if probability <= THRESHOLD:
                    continue  # the model says "no object"
                _rectangle(pyplot, axis, box, color="tab:orange", linestyle="--", linewidth=1.5)
                left = (box[0] - box[2] / 2) * IMAGE_SIZE - 0.5
                top = (box[1] - box[3] / 2) * IMAGE_SIZE - 0.5
                axis.text(left, top - 0.8, f"{probability:.2f}", color="tab:orange", fontsize=6)
            # The image, whatever the boxes: predictions may reach outside it.
            axis.set_xlim(-0.5, IMAGE_SIZE - 0.5)
            axis.set_ylim(IMAGE_SIZE - 0.5, -0.5)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=9)
    handles = [
        pyplot.Line2D([], [], color="tab:green", label="true box"),
        pyplot.Line2D(
            [], [], color="tab:orange", linestyle="--", label=f"detection (p > {THRESHOLD})"
        ),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    kind = '"rectangle" / "no object"' if recipe == "detr" else 'sigmoid "rectangle"'
    figure.suptitle(
        f"recipe {recipe}, {LOSS_NAMES[recipe]}: a {kind} detector, held-out images",
        fontsize=10,
    )
    figure.tight_layout(rect=(0.0, 0.05, 1.0, 1.0))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    pyplot.close(figure)


def _rectangle(pyplot: Any, axis: Any, box: np.ndarray, **style: Any) -> None:
    """Draws a normalized `"center_xywh"` box on an image axis (pixel centers at integers)."""
    center_x, center_y, width, height = (float(v) * IMAGE_SIZE for v in box[:4])
    corner = (center_x - width / 2 - 0.5, center_y - height / 2 - 0.5)
    axis.add_patch(pyplot.Rectangle(corner, width, height, fill=False, **style))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of `python -m hungarian_loss`, with each task's defaults filled in."""
    parser = argparse.ArgumentParser(
        prog="python -m hungarian_loss",
        description=(
            "Train a small CNN to detect 1 to 5 rectangles in synthetic 64x64 images, as a "
            "set of 16 boxes with 'rectangle' / 'no object' scores, with DETRLoss; print the "
            "precision, recall and matched error before and after training and draw the "
            "detections. --recipe rt-detr trains one sigmoid logit per box with RT-DETR's "
            "criterion instead. --task masks trains a tiny MaskFormer to find rectangles "
            "and discs in 32x32 images as a set of 6 masks with class scores, with "
            "DETRLoss.mask2former(), and prints the matched masks' IoU, precision and recall."
        ),
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="boxes",
        help=(
            "boxes (default: a box detector) or masks (a mask-set predictor trained with "
            "Mask2Former's criterion, DETRLoss.mask2former(num_points=256))"
        ),
    )
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default=None,
        help=(
            "the loss and the head of the boxes task: detr (default; softmax 'rectangle' / "
            f"'no object', DETRLoss(eos_coef={EOS_COEF})) or rt-detr (one sigmoid logit, "
            "DETRLoss.rt_detr(denoising_groups=0): varifocal loss, matching 2/5/2)"
        ),
    )
    boxes, masks = TASK_DEFAULTS["boxes"], TASK_DEFAULTS["masks"]
    parser.add_argument(
        "--epochs",
        type=_positive,
        default=None,
        help=f"training epochs ({boxes.epochs}; --task masks: {masks.epochs})",
    )
    parser.add_argument(
        "--samples",
        type=_positive,
        default=None,
        help=f"training images ({boxes.samples}; --task masks: {masks.samples})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--output",
        default=None,
        help=f"path of the PNG to write ({boxes.output}; --task masks: {masks.output})",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity: 0 silent, 1 progress bar (default), 2 a line per epoch",
    )
    args = parser.parse_args(argv)
    if args.task == "masks" and args.recipe is not None:
        parser.error("--recipe chooses the boxes task's loss; --task masks has its own")
    if args.task == "boxes" and args.recipe is None:
        args.recipe = "detr"
    defaults = TASK_DEFAULTS[args.task]
    for name in ("epochs", "samples", "output"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    return args


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
        if args.task == "masks":
            from hungarian_loss._demo_masks import run_masks  # it imports this module

            run_masks(
                epochs=args.epochs,
                samples=args.samples,
                seed=args.seed,
                output=args.output,
                verbose=args.verbose,
            )
        else:
            run(
                epochs=args.epochs,
                samples=args.samples,
                seed=args.seed,
                output=args.output,
                verbose=args.verbose,
                recipe=args.recipe,
            )
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        print(error, file=sys.stderr)
        return 1
    return 0
