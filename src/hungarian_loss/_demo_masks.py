"""The masks task of `python -m hungarian_loss --task masks`: a mask-set predictor.

Synthetic data made on the fly: 32 x 32 grayscale images with 1 to `MAX_OBJECTS`
non-overlapping shapes, each a filled rectangle (class 0) or a filled disc (class 1), and
their targets as a dict: `labels [B, M]` (padding -1) and `masks [B, M, 32, 32]` at the
images' resolution (padding masks all 0). A small MaskFormer-shaped model (convolutions
to 16 x 16 pixel embeddings, `NUM_QUERIES` learned queries refined by two decoder layers
that attend to the pixels and to each other) predicts, per query, `K + 1` logits (the
classes, then "no object") and a mask at 16 x 16, the dot product of the query's
embedding with each pixel's: `{"logits": [B, Q, 3], "masks": [B, Q, 16, 16]}`.

It is trained with `DETRLoss.mask2former(num_points=NUM_POINTS)`: Mask2Former's criterion
(class 2, sigmoid BCE 5, dice 5, "no object" 0.1), the predictions and the targets read at
the same normalized points, whatever their resolutions. The model's `compute_loss` hands
the whole target and prediction dicts to the loss (`SetModel`): `compile(loss=...)` would
apply a loss to each output of a dict separately.

Before and after training it prints, on held-out images, the mean IoU of the matched masks
(each target with the query `loss.match` pairs it with; masks upsampled to 32 x 32 and
thresholded at sigmoid 0.5) and the precision and recall of the predicted objects (the
queries whose most probable class is not "no object", with probability above 0.5; a hit
overlaps a target of the same class not yet taken with mask IoU >= 0.5), then draws a few
images with their predicted masks.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from hungarian_loss import _demo
from hungarian_loss.detr import DETRLoss

__all__ = [
    "CLASS_NAMES",
    "MaskDemoResult",
    "SetModel",
    "build_mask_model",
    "make_mask_data",
    "make_mask_loss",
    "mask_detection_scores",
    "matched_mask_iou",
    "object_scores",
    "run_masks",
    "upsample_masks",
]

IMAGE_SIZE = 32
MASK_SIZE = IMAGE_SIZE // 2  # the predicted masks' side: half the images' (and the targets')
MAX_OBJECTS = 3
NUM_QUERIES = 6
CLASS_NAMES = ("rectangle", "disc")  # class ids 0 and 1; "no object" is the last logit
NUM_POINTS = 256  # points per mask (Mask2Former: 12544 = 112 x 112)
EPOCHS = _demo.TASK_DEFAULTS["masks"].epochs
SAMPLES = _demo.TASK_DEFAULTS["masks"].samples
BATCH_SIZE = 32
THRESHOLD = 0.5  # a query is a predicted object when its class probability is above it
IOU_THRESHOLD = 0.5  # a predicted object is right when its mask IoU with a target is this
LOSS_NAME = f"DETRLoss.mask2former(num_points={NUM_POINTS})"
COLORS = ("tab:orange", "tab:cyan")  # the predicted masks of each class


@dataclasses.dataclass(frozen=True)
class MaskDemoResult:
    """What a run of the masks task measured and wrote.

    Attributes:
        iou_before: Mean IoU of the matched masks on the held-out images before training.
        iou_after: The same after training.
        precision_before: Precision of the predicted objects at mask IoU 0.5 before
            training (0 when there are none).
        recall_before: Recall of the targets at mask IoU 0.5 before training.
        precision_after: Precision after training.
        recall_after: Recall after training.
        seconds: Wall-clock time of the whole run.
        output: Path of the PNG written.
    """

    iou_before: float
    iou_after: float
    precision_before: float
    recall_before: float
    precision_after: float
    recall_after: float
    seconds: float
    output: Path


def make_mask_data(
    num_images: int,
    seed: int,
    image_size: int = IMAGE_SIZE,
    max_objects: int = MAX_OBJECTS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images with 1 to `max_objects` rectangles and discs, and their labels and masks.

    Args:
        num_images: How many images.
        seed: Seed of the random generator.
        image_size: Side of the square images, in pixels (and of the target masks).
        max_objects: Most shapes in an image; also the number of target rows.

    Returns:
        `images`, float32 `[num_images, image_size, image_size, 1]` in `[0, 1]`, and
        the targets `{"labels": int32 [num_images, max_objects], "masks": float32
        [num_images, max_objects, image_size, image_size]}`: class 0 (rectangle) or 1
        (disc), in random order; padding rows have the label -1 and an empty mask.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.03, (num_images, image_size, image_size, 1))
    labels = np.full((num_images, max_objects), -1, dtype="int32")
    masks = np.zeros((num_images, max_objects, image_size, image_size), dtype="float32")
    centres = np.arange(image_size) + 0.5  # pixel centres
    low, high = image_size * 7 // 32, image_size * 7 // 16  # sides of 7 to 14 pixels at 32
    for index in range(num_images):
        wanted = int(rng.integers(1, max_objects + 1))
        taken = np.zeros((image_size, image_size), dtype=bool)  # with a margin of 1 pixel
        count = 0
        for _ in range(50 * wanted):  # rejection sampling; a crowded image keeps fewer
            if count == wanted:
                break
            label = int(rng.integers(0, len(CLASS_NAMES)))
            width, height = rng.integers(low, high + 1, size=2)
            if label == 1:  # a disc: one diameter
                height = width
            left = int(rng.integers(0, image_size - width + 1))
            top = int(rng.integers(0, image_size - height + 1))
            if label == 0:
                shape = np.zeros((image_size, image_size), dtype=bool)
                shape[top : top + height, left : left + width] = True
            else:
                radius = width / 2
                x, y = left + radius, top + radius
                shape = (centres[None, :] - x) ** 2 + (centres[:, None] - y) ** 2 <= radius**2
            if np.any(shape & taken):
                continue
            taken |= _grow(shape)
            labels[index, count] = label
            masks[index, count] = shape
            images[index, :, :, 0] += shape * rng.uniform(0.5, 1.0)
            count += 1
    return np.clip(images, 0.0, 1.0).astype("float32"), {"labels": labels, "masks": masks}


def _grow(shape: np.ndarray) -> np.ndarray:
    """A boolean mask and its 8 neighbours: the pixels another shape must not touch."""
    padded = np.pad(shape, 1)
    height, width = shape.shape
    grown = np.zeros_like(shape)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


class SetModel(keras.Model):
    """A model whose outputs are a dict, trained with one loss of the whole dict.

    `compile(loss=...)` applies a loss to each output of a dict separately, with the
    target of the same name; a set criterion such as `DETRLoss` with masks needs the
    labels and the masks together. `compute_loss` is Keras 3's extension point for it:
    this one calls the compiled loss on the target and prediction dicts (plus the
    layers' own losses), on every backend, inside the compiled training step.
    """

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        loss = self.loss(y, y_pred, sample_weight)
        return loss + ops.sum(self.losses) if self.losses else loss


class _Queries(keras.layers.Layer):
    """`num_queries` learned query vectors, one copy per image: `[B, Q, dim]`."""

    def __init__(self, num_queries: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queries = self.add_weight(
            shape=(num_queries, dim), initializer="random_normal", name="queries"
        )

    def call(self, tokens: Any) -> Any:
        shape = (ops.shape(tokens)[0], *self.queries.shape)
        return ops.broadcast_to(ops.cast(self.queries, tokens.dtype), shape)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], *self.queries.shape)


class _Attention(keras.layers.Layer):
    """One-head attention of queries `[B, Q, D]` to values `[B, N, D]`: `[B, Q, D]`.

    Smaller than `keras.layers.MultiHeadAttention` (three projections, no biases), and
    quicker to compile: each variable is one more update in the training step's graph.
    """

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.query = keras.layers.Dense(dim, use_bias=False)
        self.key = keras.layers.Dense(dim, use_bias=False)
        self.value = keras.layers.Dense(dim, use_bias=False)

    def call(self, queries: Any, values: Any) -> Any:
        scores = ops.einsum("bqd,bnd->bqn", self.query(queries), self.key(values))
        weights = ops.softmax(scores / float(np.sqrt(self.dim)), axis=-1)  # [B, Q, N]
        return ops.einsum("bqn,bnd->bqd", weights, self.value(values))

    def compute_output_shape(
        self, queries_shape: tuple[Any, ...], values_shape: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        return (*queries_shape[:-1], self.dim)


class _FourierPositions(keras.layers.Layer):
    """Appends `sin` and `cos` of each pixel's x and y at 4 frequencies: 16 channels."""

    def call(self, features: Any) -> Any:
        height, width = features.shape[1], features.shape[2]
        ys = (ops.arange(height, dtype="float32") + 0.5) / height
        xs = (ops.arange(width, dtype="float32") + 0.5) / width
        grid = ops.stack(
            [ops.tile(xs[None, :], (height, 1)), ops.tile(ys[:, None], (1, width))], axis=-1
        )  # [h, w, 2]
        angles = grid[:, :, :, None] * (np.pi * 2.0 ** np.arange(4, dtype="float32"))
        angles = ops.reshape(angles, (height, width, 8))
        waves = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)[None]
        waves = ops.broadcast_to(waves, (ops.shape(features)[0], height, width, 16))
        return ops.concatenate([features, ops.cast(waves, features.dtype)], axis=-1)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*input_shape[:-1], input_shape[-1] + 16)


class _MaskProduct(keras.layers.Layer):
    """Mask logits: each query's embedding `[B, Q, D]` times each pixel's `[B, h, w, D]`."""

    def call(self, embeddings: Any, pixels: Any) -> Any:
        return ops.einsum("bqd,bhwd->bqhw", embeddings, pixels)  # [B, Q, h, w]

    def compute_output_shape(
        self, embeddings_shape: tuple[Any, ...], pixels_shape: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        return (embeddings_shape[0], embeddings_shape[1], pixels_shape[1], pixels_shape[2])


def build_mask_model(
    image_size: int = IMAGE_SIZE,
    num_queries: int = NUM_QUERIES,
    num_classes: int = len(CLASS_NAMES),
    dim: int = 32,
) -> SetModel:
    """A tiny MaskFormer: image in, `{"logits": [B, Q, K + 1], "masks": [B, Q, h, w]}` out.

    Convolutions give pixel embeddings at half the image's resolution; the pixel
    coordinates (two more input channels) and their Fourier features (16 channels after
    the stride) tell the queries where each pixel is. Learned queries pass through two
    decoder layers (cross-attention to the pixels, self-attention between queries, an
    MLP); each query gives K + 1 logits and a mask embedding, whose dot product with
    each pixel embedding is the mask's logit there.
    """
    inputs = keras.Input((image_size, image_size, 1))
    x = _demo._AddCoordinates()(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(dim, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(dim, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(dim, 3, padding="same", dilation_rate=2, activation="relu")(x)
    x = _FourierPositions()(x)  # where each pixel is, for the queries to select a region
    x = keras.layers.Conv2D(dim, 1, activation="relu")(x)
    pixels = keras.layers.Conv2D(dim, 1)(x)  # [B, h, w, D]: the pixel embeddings
    side = image_size // 2
    tokens = keras.layers.Reshape((side * side, dim))(x)  # [B, h * w, D]
    queries = _Queries(num_queries, dim)(tokens)  # [B, Q, D]
    for _ in range(2):
        attended = _Attention(dim)(queries, tokens)  # each query reads the pixels
        queries = _normalize(queries + attended)
        mixed = _Attention(dim)(queries, queries)  # and the other queries
        queries = _normalize(queries + mixed)
        hidden = keras.layers.Dense(2 * dim, activation="relu")(queries)
        queries = _normalize(queries + keras.layers.Dense(dim)(hidden))
    logits = keras.layers.Dense(num_classes + 1, name="logits")(queries)  # [B, Q, K + 1]
    embeddings = keras.layers.Dense(dim, activation="relu")(queries)
    embeddings = keras.layers.Dense(dim)(embeddings)  # [B, Q, D]
    masks = _MaskProduct(name="masks")(embeddings, pixels)  # [B, Q, h, w]
    return SetModel(inputs, {"logits": logits, "masks": masks}, name="mask_set_predictor")


def _normalize(x: Any) -> Any:
    """Layer normalization without a scale or an offset to learn."""
    return keras.layers.LayerNormalization(center=False, scale=False)(x)


def make_mask_loss(seed: int = 0) -> DETRLoss:
    """`DETRLoss.mask2former(num_points=NUM_POINTS, seed=seed)`: Mask2Former's criterion."""
    return DETRLoss.mask2former(num_points=NUM_POINTS, seed=seed)


def upsample_masks(logits: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Mask logits `[B, Q, h, w]` resized bilinearly to `[B, Q, size, size]` (float64).

    Pixel centres aligned (`align_corners=False`, the loss's convention), edges clamped.
    """
    resized = ops.image.resize(
        ops.convert_to_tensor(logits, "float32"),
        (size, size),
        interpolation="bilinear",
        data_format="channels_first",
    )
    return np.asarray(ops.convert_to_numpy(resized), dtype="float64")


def _iou(mask: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of a boolean mask `[H, W]` with each of `others [K, H, W]`: `[K]`."""
    intersection = np.sum(mask & others, axis=(1, 2))
    union = np.sum(mask | others, axis=(1, 2))
    return np.asarray(intersection / np.maximum(union, 1), dtype="float64")


def matched_mask_iou(
    loss: DETRLoss, y_true: dict[str, np.ndarray], y_pred: dict[str, np.ndarray]
) -> float:
    """Mean IoU of each target mask with the mask of the query matched to it.

    Args:
        loss: The loss whose matching to use (`DETRLoss.match`).
        y_true: `{"labels" [B, M], "masks" [B, M, H, W]}`, padding labels -1.
        y_pred: `{"logits" [B, Q, K + 1], "masks" [B, Q, h, w]}` (mask logits).

    Returns:
        The mean over the matched targets of the batch of the IoU of the target
        (`> 0.5`) with the matched prediction upsampled to `H x W` (`sigmoid > 0.5`, a
        logit above 0).
    """
    indices = np.asarray(loss.match(y_true, y_pred))  # [B, M]
    samples, targets = np.nonzero(indices >= 0)
    chosen = y_pred["masks"][samples, indices[samples, targets]]  # [pairs, h, w]
    predicted = upsample_masks(chosen[None], y_true["masks"].shape[-1])[0] > 0.0
    truth = y_true["masks"][samples, targets] > 0.5  # [pairs, H, W]
    intersection = np.sum(predicted & truth, axis=(1, 2))
    union = np.maximum(np.sum(predicted | truth, axis=(1, 2)), 1)
    return float(np.mean(intersection / union)) if len(samples) else 0.0


def object_scores(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's most probable class and its softmax probability: `[B, Q]` each.

    The class is `K` ("no object") where that is the most probable.
    """
    logits = logits.astype("float64")
    logits = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return probabilities.argmax(axis=-1), probabilities.max(axis=-1)


def mask_detection_scores(
    y_true: dict[str, np.ndarray],
    y_pred: dict[str, np.ndarray],
    threshold: float = THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[float, float]:
    """Precision and recall of the predicted objects at a mask IoU threshold.

    The predicted objects are the queries whose most probable class is not "no object"
    and has a probability above `threshold`. In each image, taken from the most to the
    least probable, a predicted object is right when its mask (upsampled to the
    targets' resolution, `sigmoid > 0.5`) overlaps a target of the same class not yet
    taken with IoU >= `iou_threshold`.

    Args:
        y_true: `{"labels" [B, M], "masks" [B, M, H, W]}`, padding labels -1.
        y_pred: `{"logits" [B, Q, K + 1], "masks" [B, Q, h, w]}`.
        threshold: Probability above which a query is a predicted object.
        iou_threshold: Least mask IoU of a right prediction with its target.

    Returns:
        `(precision, recall)`: right predictions over predictions (0 when there are
        none) and over targets.
    """
    classes, probabilities = object_scores(y_pred["logits"])  # [B, Q]
    no_object = y_pred["logits"].shape[-1] - 1
    predicted = upsample_masks(y_pred["masks"], y_true["masks"].shape[-1]) > 0.0
    right = detections = targets = 0
    for index, labels in enumerate(y_true["labels"]):
        real = labels >= 0
        truth, labels = y_true["masks"][index][real] > 0.5, labels[real]
        targets += len(labels)
        free = np.ones(len(labels), dtype=bool)
        for query in np.argsort(-probabilities[index], kind="stable"):
            label, probability = classes[index, query], probabilities[index, query]
            if label == no_object or probability <= threshold:
                continue
            detections += 1
            candidates = free & (labels == label)
            if not candidates.any():
                continue
            overlaps = np.where(candidates, _iou(predicted[index, query], truth), -1.0)
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold:
                free[best] = False
                right += 1
    return right / max(detections, 1), right / max(targets, 1)


def run_masks(
    epochs: int = EPOCHS,
    samples: int = SAMPLES,
    seed: int = 0,
    output: str | Path = _demo.TASK_DEFAULTS["masks"].output,
    batch_size: int = BATCH_SIZE,
    verbose: int = 1,
) -> MaskDemoResult:
    """Trains the mask-set predictor and draws its masks; prints what it does.

    A run is reproducible: the same seed gives the same data, weights, points and numbers
    (on TensorFlow, op determinism is switched on for the run).

    Args:
        epochs: Training epochs.
        samples: Training images (the held-out set is an eighth of that, 64 at least).
        seed: Seed of the data, the weights, the shuffling and the loss's points.
        output: Path of the PNG to write.
        batch_size: Training batch size.
        verbose: Keras `fit` verbosity: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The matched masks' IoU, the precision and the recall before and after training,
        the run time and the path of the picture.

    Raises:
        ModuleNotFoundError: if matplotlib is not installed.
    """
    start = time.perf_counter()
    pyplot = _demo._import_pyplot()  # fail before training, not after
    output = Path(output)
    with _demo._deterministic():
        return _run(pyplot, output, epochs, samples, seed, batch_size, verbose, start)


def _run(
    pyplot: Any,
    output: Path,
    epochs: int,
    samples: int,
    seed: int,
    batch_size: int,
    verbose: int,
    start: float,
) -> MaskDemoResult:
    """The body of `run_masks`, with deterministic kernels switched on."""
    keras.utils.set_random_seed(seed)
    x_train, y_train = make_mask_data(samples, seed=seed)
    x_test, y_test = make_mask_data(max(64, samples // 8), seed=seed + 1)
    print(
        f"hungarian-loss demo, task masks (Keras {keras.__version__}, backend "
        f"{keras.backend.backend()}): {samples} training and {len(x_test)} held-out "
        f"{IMAGE_SIZE}x{IMAGE_SIZE} images, 1 to {MAX_OBJECTS} rectangles and discs each, "
        f"target masks at {IMAGE_SIZE}x{IMAGE_SIZE}; the model predicts {NUM_QUERIES} "
        f"masks at {MASK_SIZE}x{MASK_SIZE} with {'/'.join(CLASS_NAMES)}/no-object logits, "
        f"trained with {LOSS_NAME}."
    )
    loss = make_mask_loss(seed)
    model = build_mask_model()
    steps = epochs * -(-samples // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)

    def measure(when: str) -> tuple[dict[str, np.ndarray], float, float, float]:
        predictions = model.predict(x_test, batch_size=256, verbose=0)
        precision, recall = mask_detection_scores(y_test, predictions)
        iou = matched_mask_iou(loss, y_test, predictions)
        print(
            f"masks, {when}: precision {precision:.3f}, recall {recall:.3f} "
            f"(p > {THRESHOLD}, mask IoU >= {IOU_THRESHOLD}); matched mask IoU {iou:.3f} "
            "(mean over targets)"
        )
        return predictions, precision, recall, iou

    before, precision_before, recall_before, iou_before = measure("before training")
    # No validation data: the scores on the held-out images say more than their loss, and
    # the tiny runs of the tests save a compile.
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    after, precision_after, recall_after, iou_after = measure("after training ")

    shown = slice(0, 4)
    _draw(
        pyplot,
        output,
        x_test[shown],
        y_test["masks"][shown],
        {
            f"before training\nP {precision_before:.2f}, R {recall_before:.2f}": _head(
                before, shown
            ),
            f"after {epochs} epochs\nP {precision_after:.2f}, R {recall_after:.2f}": _head(
                after, shown
            ),
        },
    )
    seconds = time.perf_counter() - start
    print(f"wrote {output} ({seconds:.0f} s in all)")
    return MaskDemoResult(
        iou_before,
        iou_after,
        precision_before,
        recall_before,
        precision_after,
        recall_after,
        seconds,
        output,
    )


def _head(y_pred: dict[str, np.ndarray], shown: slice) -> dict[str, np.ndarray]:
    return {key: value[shown] for key, value in y_pred.items()}


def _draw(
    pyplot: Any,
    output: Path,
    images: np.ndarray,
    target_masks: np.ndarray,
    rows: dict[str, dict[str, np.ndarray]],
) -> None:
    """One row per entry of `rows`: the images, the targets' outlines, the predicted masks."""
    from matplotlib.colors import to_rgb

    columns = len(images)
    size = images.shape[1]
    figure, axes = pyplot.subplots(
        len(rows), columns, figsize=(2.6 * columns, 2.9 * len(rows)), squeeze=False
    )
    for row, (title, y_pred) in enumerate(rows.items()):
        classes, probabilities = object_scores(y_pred["logits"])  # [B, Q]
        masks = upsample_masks(y_pred["masks"], size) > 0.0  # [B, Q, H, W]
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(images[column, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            labels: list[tuple[float, float]] = []  # where the probabilities are written
            for query in np.argsort(probabilities[column], kind="stable"):  # most probable last
                label, probability = classes[column, query], probabilities[column, query]
                if label >= len(CLASS_NAMES) or probability <= THRESHOLD:
                    continue  # "no object", or not sure enough
                overlay = np.zeros((size, size, 4))
                overlay[..., :3] = to_rgb(COLORS[label])
                overlay[..., 3] = 0.55 * masks[column, query]
                axis.imshow(overlay)
                ys, xs = np.nonzero(masks[column, query])
                if len(xs):  # the probability at the mask's centre
                    x, y = float(np.mean(xs)), float(np.mean(ys))
                    while any(abs(x - u) < 5 and abs(y - v) < 3 for u, v in labels):
                        y += 3.0  # a duplicate's below the other's
                    labels.append((x, y))
                    axis.text(
                        x,
                        y,
                        f"{probability:.2f}",
                        color="white",
                        fontsize=6,
                        ha="center",
                        va="center",
                        bbox={"facecolor": COLORS[label], "linewidth": 0, "pad": 1.0},
                    )
            for mask in target_masks[column]:
                if mask.any():
                    axis.contour(mask, levels=[0.5], colors="tab:green", linewidths=1.2)
            axis.set_xlim(-0.5, size - 0.5)
            axis.set_ylim(size - 0.5, -0.5)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=9)
    handles = [pyplot.Line2D([], [], color="tab:green", label="true mask")]
    handles += [
        pyplot.Rectangle((0, 0), 1, 1, color=color, alpha=0.55, label=f"predicted {name}")
        for name, color in zip(CLASS_NAMES, COLORS, strict=True)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(
        f"task masks, {LOSS_NAME}: {NUM_QUERIES} queries, held-out images (p > {THRESHOLD})",
        fontsize=10,
    )
    figure.tight_layout(rect=(0.0, 0.05, 1.0, 1.0))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    pyplot.close(figure)
