"""`check_targets`: find the broken targets of a data set before training on them.

The loss makes a sample with a broken target `NaN` (the failure policy); this tells
which sample, row and value it was, in NumPy, before any training step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from hungarian_loss import boxes as box_lib

__all__ = ["TargetSummary", "check_targets"]

_CLASS_INDEX = 4  # [box (4 channels), class id, ...]
_DICT_KEYS = ("labels", "masks", "boxes")  # dict targets (Contract 7): labels and masks or boxes

# A rule: `(mask [S, M] of the rows that break it, describe(sample, row) -> str, fix)`.
_Rule = tuple[np.ndarray, Callable[[int, int], str], str]
Targets = np.ndarray | dict[str, np.ndarray]  # packed [S, M, D], or dict targets


@dataclasses.dataclass
class _Batch:
    """One batch of targets, read: what the rules and the summary need."""

    real: np.ndarray  # [S, M]: the rows that are not padding
    ids: np.ndarray | None  # [S, M] float64 class ids, if any
    boxes: np.ndarray | None  # [S, M, 4] float64 boxes in `box_format`, if any
    rules: list[_Rule]
    shown: Callable[[int, int], str]  # a row's values, for the message
    empty_masks: np.ndarray | None = None  # [S, M]: masks that are 0 everywhere


@dataclasses.dataclass(frozen=True)
class TargetSummary:
    """What `check_targets` found in targets that follow every rule.

    Attributes:
        samples: Number of samples (images).
        targets: Number of real (not padding) target rows.
        max_targets: The most real targets in one sample.
        class_counts: `{class id: number of targets}`, sorted by id; empty when the
            targets have no class channel.
        num_classes: The `num_classes` given to `check_targets`, or `None`.
        box_format: The format the boxes were read in.
        width_range: `(smallest, largest)` box width over the real targets, or `None`
            when there are none (likewise `height_range`).
        height_range: `(smallest, largest)` box height.
        samples_without_targets: Number of samples whose rows are all padding (legal).
        empty_masks: Number of real targets whose mask is 0 everywhere (legal), or
            `None` when the targets have no masks.
    """

    samples: int
    targets: int
    max_targets: int
    class_counts: dict[int, int]
    num_classes: int | None
    box_format: str
    width_range: tuple[float, float] | None
    height_range: tuple[float, float] | None
    samples_without_targets: int = 0
    empty_masks: int | None = None

    def __repr__(self) -> str:
        without = self.samples_without_targets
        lines = [
            f"TargetSummary: {self.samples} samples"
            + (f" ({without} without targets)" if without else "")
            + f", {self.targets} targets (at most {self.max_targets} per sample)"
        ]
        if self.class_counts:
            counts = ", ".join(f"{key}: {value}" for key, value in self.class_counts.items())
            of = "" if self.num_classes is None else f" (num_classes={self.num_classes})"
            lines.append(f"  class ids{of}: {counts}")
        if self.empty_masks is not None:
            lines.append(f"  masks: {self.targets}, empty masks: {self.empty_masks}")
        if self.width_range is not None and self.height_range is not None:
            (w_min, w_max), (h_min, h_max) = self.width_range, self.height_range
            lines.append(
                f"  box width {w_min:g} to {w_max:g}, height {h_min:g} to {h_max:g} "
                f"({self.box_format})"
            )
        return "\n".join(lines)


def check_targets(
    y_true: Any,
    num_classes: int | None = None,
    box_format: str = "xyxy",
    padding_value: float | None = -1.0,
    target_key: str | None = None,
    verbose: int = 1,
) -> TargetSummary:
    """Checks padded targets against the rules of the loss; names the first broken one.

    Targets come in one of two layouts:

    - packed, as `HungarianLoss` and `DETRLoss` read them: `[samples, M, D]`, each row
      a box in `box_format` (channels 0-3), then, when `D >= 5`, a class id (channel
      4); rows whose every value equals `padding_value` are padding;
    - a dict, as keras-hub's detectors and Mask2Former-style pipelines give them:
      `{"labels": [samples, M] (int), "masks": [samples, M, H, W] (bool, or float in
      [0, 1]), "boxes": [samples, M, 4] (optional)}`, with `"masks"` or `"boxes"` or
      both; row i is target i, and a row whose label is `padding_value` (-1) is
      padding, whatever its mask and box hold.

    A real row breaks a rule if it has

    - a non-finite value (`NaN`, `inf`) in any channel, label or box;
    - a box of negative width or height (`x2 < x1` or `y2 < y1` in `"xyxy"`, a
      negative `w` or `h` in `"center_xywh"`); boxes of zero size are legal;
    - a mask with a non-finite value, or with values outside `[0, 1]` (such as 255 of
      an 8-bit image); empty (all-zero) masks are legal, and counted;
    - a class id that is not an integer in `0..num_classes - 1` (any integer `>= 0`
      when `num_classes` is `None`): a fractional id, a negative one on a real row
      (`-1` on a row whose box is real), an id out of range such as COCO's category
      id 90 with 80 classes.

    Samples without targets are legal, and counted. `HungarianLoss` and `DETRLoss`
    make the loss of a sample with such a row `NaN` during training; this finds the
    row before training, eagerly and in NumPy (it imports TensorFlow only to iterate a
    `tf.data` dataset, which is given already).

    Args:
        y_true: The targets: a NumPy array or a tensor of any backend, `[samples, M, D]`
            (or `[M, D]`, one sample), or a dict of them (`[M]`, `[M, H, W]`, `[M, 4]`
            for one sample); or a `tf.data.Dataset` yielding batches of them
            (`padded_batch`), single samples, or `(x, y)` / `(x, y, sample_weight)`
            tuples as `model.fit` takes them, whose `y` is checked. The dataset must
            be finite (`take` a repeated one).
        num_classes: K, the number of classes: class ids must be in `0..K-1`. `None`
            checks only that they are integers `>= 0`.
        box_format: The format of the boxes: `"xyxy"` (`HungarianLoss`'s default),
            `"yxyx"`, `"xywh"`, `"center_xywh"` (`DETRLoss`'s default) or
            `"center_yxhw"`.
        padding_value: The value that fills padding rows (the labels of padding rows
            of dict targets), or `None` when every row is a target.
        target_key: When the dataset's `y` is a dict of several outputs, the key of the
            targets; `None` takes `y` itself when it is dict targets (it has
            `"labels"`), or the only entry of a one-entry dict.
        verbose: 1 shows a progress bar while a dataset is iterated, 0 does not.

    Returns:
        A `TargetSummary`: the numbers of samples and targets, the class histogram, the
        range of box sizes, and the empty masks.

    Raises:
        ValueError: for the first row that breaks a rule, naming the sample (its index
            in the whole data), the row, its values and the rule; or for arguments or
            data of the wrong kind or shape.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss import check_targets
        >>> y_true = np.array([[[0.5, 0.5, 0.2, 0.2, 1.0], [-1, -1, -1, -1, -1]],
        ...                    [[0.3, 0.6, 0.1, 0.4, 0.0], [0.7, 0.2, 0.3, 0.0, 1.0]]])
        >>> check_targets(y_true, num_classes=2, box_format="center_xywh")
        TargetSummary: 2 samples, 3 targets (at most 2 per sample)
          class ids (num_classes=2): 0: 1, 1: 2
          box width 0.1 to 0.3, height 0 to 0.4 (center_xywh)
        >>> y_true[1, 1, 4] = 2.0
        >>> check_targets(y_true, num_classes=2, box_format="center_xywh")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Sample 1, row 1 of the targets: class id 2 is not in 0..1 (num_classes=2). Received: [0.7, 0.2, 0.3, 0, 2]. ...

        Mask targets: two images of 2 x 2 pixels, up to two targets each.

        >>> masks = np.zeros((2, 2, 2, 2), dtype="float32")
        >>> masks[0, 0, 0] = 1.0  # image 0: a mask on the top row, and a padding row
        >>> y_true = {"labels": np.array([[1, -1], [0, 1]]), "masks": masks}
        >>> check_targets(y_true, num_classes=2)  # image 1: two empty masks
        TargetSummary: 2 samples, 3 targets (at most 2 per sample)
          class ids (num_classes=2): 0: 1, 1: 2
          masks: 3, empty masks: 2
        >>> masks[1, 1, 1, 0] = 255.0
        >>> check_targets(y_true, num_classes=2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Sample 1, row 1 of the targets: mask values outside [0, 1] (0 to 255). Received: label 1, mask 2 x 2. ...
    """  # noqa: E501
    box_format = box_lib.standardize_box_format(box_format)
    if num_classes is not None and (
        not isinstance(num_classes, numbers.Integral)
        or isinstance(num_classes, bool)
        or num_classes < 1
    ):
        raise ValueError(
            "Expected `num_classes` to be an int >= 1 or None. "
            f"Received: num_classes={num_classes!r}"
        )
    if padding_value is not None and (
        not isinstance(padding_value, numbers.Real) or isinstance(padding_value, bool)
    ):
        raise ValueError(
            "Expected `padding_value` to be a number or None. "
            f"Received: padding_value={padding_value!r}"
        )
    checker = _Checker(
        None if num_classes is None else int(num_classes),
        box_format,
        None if padding_value is None else float(padding_value),
    )
    if hasattr(y_true, "element_spec"):  # a tf.data.Dataset
        for element, batch in enumerate(_dataset_batches(y_true, target_key, verbose)):
            checker.add(batch, element)
    else:
        checker.add(_batched(_pick_targets(y_true, target_key)))
    return checker.summary()


class _Checker:
    """Checks batches (packed `[S, M, D]` or dicts) in order and accumulates the summary."""

    def __init__(self, num_classes: int | None, box_format: str, padding: float | None):
        self.num_classes = num_classes
        self.box_format = box_format
        self.padding = padding
        self.samples = 0
        self.targets = 0
        self.max_targets = 0
        self.without_targets = 0
        self.empty_masks: int | None = None
        self.class_counts: dict[int, int] = {}
        self.sizes: list[tuple[float, float, float, float]] = []  # w min, w max, h min, h max

    def add(self, batch: Targets, element: int | None = None) -> None:
        """Checks the next batch; `element` is its index in a dataset, for the message."""
        read = self._dict_batch(batch) if isinstance(batch, dict) else self._packed_batch(batch)
        real = read.real
        bad = np.zeros(real.shape, dtype=bool)
        for mask, _, _ in read.rules:
            bad |= mask
        bad &= real
        if bad.any():
            sample, row = (int(i) for i in np.argwhere(bad)[0])
            describe, fix = next((d, f) for mask, d, f in read.rules if mask[sample, row])
            where = "" if element is None else f" (dataset element {element}, item {sample})"
            raise ValueError(
                f"Sample {self.samples + sample}, row {row} of the targets{where}: "
                f"{describe(sample, row)}. Received: {read.shown(sample, row)}. {fix}"
            )
        counts = real.sum(axis=1)  # [S]
        self.samples += len(real)
        self.targets += int(counts.sum())
        self.max_targets = max(self.max_targets, int(counts.max(initial=0)))
        self.without_targets += int(np.sum(counts == 0))
        if read.ids is not None:
            found_ids, found = np.unique(read.ids[real].astype("int64"), return_counts=True)
            for class_id, count in zip(found_ids.tolist(), found.tolist(), strict=True):
                self.class_counts[class_id] = self.class_counts.get(class_id, 0) + count
        if read.boxes is not None and real.any():
            width, height = _sizes(read.boxes[real], self.box_format)  # [T] each
            self.sizes.append((width.min(), width.max(), height.min(), height.max()))
        if read.empty_masks is not None:
            empty = int(np.sum(read.empty_masks & real))
            self.empty_masks = (self.empty_masks or 0) + empty

    def _packed_batch(self, batch: np.ndarray) -> _Batch:
        """Real rows, class ids, boxes, rules and how to show a row, of packed targets."""
        if batch.ndim != 3 or batch.shape[-1] < 4:
            raise ValueError(
                "Expected targets of shape [samples, M, D] (or [M, D] for one sample) with "
                "D >= 4: a box in channels 0-3, then optionally a class id; or a dict of "
                f"'labels', 'masks' and 'boxes'. Received: shape={batch.shape}"
            )
        _check_numeric(batch, "targets")
        values = batch.astype("float64")  # [S, M, D]
        real = self._is_real(values, axis=-1)  # [S, M]
        finite = np.all(np.isfinite(values), axis=-1)  # [S, M]
        ids = values[..., _CLASS_INDEX] if values.shape[-1] > _CLASS_INDEX else None
        rules = [_non_finite_rule(finite, "any channel")]
        rules += self._box_rules(values[..., :4], finite)
        if ids is not None:
            rules += self._class_rules(
                ids,
                finite,
                "on a row whose box is real",
                "A padding row is `padding_value` in every channel; a real box needs a "
                "class id in 0..K-1.",
            )

        def shown(sample: int, row: int) -> str:
            return "[" + ", ".join(f"{value:g}" for value in values[sample, row]) + "]"

        return _Batch(real, ids, values[..., :4], rules, shown)

    def _dict_batch(self, batch: dict[str, np.ndarray]) -> _Batch:
        """Real rows, class ids, boxes, rules and how to show a row, of dict targets."""
        labels, masks, boxes = (batch.get(key) for key in _DICT_KEYS)
        assert labels is not None  # `_checked_dict` requires them
        ids = labels.astype("float64")  # [S, M]
        real = self._is_real(ids[..., None], axis=-1)  # [S, M]: padding by the label
        finite_ids = np.isfinite(ids)  # [S, M]
        rules = [_non_finite_rule(finite_ids, "the label")]
        if boxes is not None:
            boxes = boxes.astype("float64")  # [S, M, 4]
            finite_boxes = np.all(np.isfinite(boxes), axis=-1)
            rules.append(_non_finite_rule(finite_boxes, "the box"))
            rules += self._box_rules(boxes, finite_boxes)
        empty = None
        if masks is not None:
            low, high = _mask_ranges(masks)  # [S, M] each: the smallest and largest value
            rules += _mask_rules(masks, low, high)
            empty = high == 0.0  # legal values: the largest is 0 only where all are
        rules += self._class_rules(
            ids,
            finite_ids,
            f"(padding rows have the label {self.padding:g})"
            if self.padding is not None
            else "(no row is padding: padding_value=None)",
            "Give padding rows the label `padding_value` and real targets a class id in 0..K-1.",
        )

        def shown(sample: int, row: int) -> str:
            parts = [f"label {ids[sample, row]:g}"]
            if boxes is not None:
                parts.append("box [" + ", ".join(f"{v:g}" for v in boxes[sample, row]) + "]")
            if masks is not None:
                parts.append("mask " + " x ".join(str(n) for n in masks.shape[2:]))
            return ", ".join(parts)

        return _Batch(real, ids, boxes, rules, shown, empty)

    def _is_real(self, values: np.ndarray, axis: int) -> np.ndarray:
        """`[S, M]`: True for rows that are not padding (every value along `axis`)."""
        if self.padding is None:
            return np.ones(values.shape[:2], dtype=bool)
        padding = np.isnan(values) if math.isnan(self.padding) else values == self.padding
        real: np.ndarray = np.logical_not(np.all(padding, axis=axis))
        return real

    def _box_rules(self, boxes: np.ndarray, finite: np.ndarray) -> list[_Rule]:
        """The rule of boxes `[S, M, 4]` in `box_format`: no negative width or height."""
        with np.errstate(invalid="ignore", over="ignore"):
            width, height = _sizes(boxes, self.box_format)  # [S, M] each
            negative = finite & ((width < 0) | (height < 0))

        def describe(sample: int, row: int) -> str:
            return (
                f"a box of negative width or height in {self.box_format!r} "
                f"(width {width[sample, row]:g}, height {height[sample, row]:g})"
            )

        fix = (
            f"Check that the boxes are in {self.box_format!r} (pass `box_format` as the "
            "loss has it) and that no corner is swapped; zero size is legal."
        )
        return [(negative, describe, fix)]

    def _class_rules(
        self, ids: np.ndarray, finite: np.ndarray, negative_where: str, negative_fix: str
    ) -> list[_Rule]:
        """The rules of class ids `[S, M]`: integers in `0..num_classes - 1`."""
        with np.errstate(invalid="ignore"):
            rules: list[_Rule] = [
                (
                    finite & (ids != np.round(ids)),
                    lambda s, r: f"class id {ids[s, r]:g} is not an integer",
                    "Class ids are integers in 0..K-1.",
                ),
                (
                    finite & (ids < 0),
                    lambda s, r: f"class id {ids[s, r]:g} is negative {negative_where}",
                    negative_fix,
                ),
            ]
            if self.num_classes is not None:
                last = self.num_classes - 1
                rules.append(
                    (
                        finite & (ids > last),
                        lambda s, r: (
                            f"class id {ids[s, r]:g} is not in 0..{last} "
                            f"(num_classes={self.num_classes})"
                        ),
                        "Map the ids to 0..K-1 (COCO's category ids run from 1 to 90 with "
                        "gaps: see the guide 'DETR in Keras'), or build the model with more "
                        "classes.",
                    )
                )
        return rules

    def summary(self) -> TargetSummary:
        sizes = np.array(self.sizes).reshape(-1, 4)
        ranges = None if not len(sizes) else sizes
        return TargetSummary(
            samples=self.samples,
            targets=self.targets,
            max_targets=self.max_targets,
            class_counts=dict(sorted(self.class_counts.items())),
            num_classes=self.num_classes,
            box_format=self.box_format,
            width_range=None
            if ranges is None
            else (float(ranges[:, 0].min()), float(ranges[:, 1].max())),
            height_range=None
            if ranges is None
            else (float(ranges[:, 2].min()), float(ranges[:, 3].max())),
            samples_without_targets=self.without_targets,
            empty_masks=self.empty_masks,
        )


def _non_finite_rule(finite: np.ndarray, where: str) -> _Rule:
    """The rule that every value of a real target is finite (`finite [S, M]`)."""
    return (
        ~finite,
        lambda s, r: f"a non-finite value (NaN or inf) in {where}",
        "Every value of a real target must be finite; fix or drop the row.",
    )


def _mask_ranges(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest value of each mask `[S, M, H, W]`: `[S, M]` each, float64.

    Taken with 0 (the smallest is at most 0, the largest at least 0); `NaN` where a mask
    has one, `inf` or `-inf` where it has that.
    """
    if masks.dtype == bool:
        high = np.any(masks, axis=(2, 3)).astype("float64")
        return np.zeros_like(high), high
    low = np.min(masks, axis=(2, 3), initial=0).astype("float64")  # [S, M]
    high = np.max(masks, axis=(2, 3), initial=0).astype("float64")  # [S, M]
    return low, high


def _mask_rules(masks: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[_Rule]:
    """The rules of masks `[S, M, H, W]`: finite, and every value in `[0, 1]`."""
    finite = np.isfinite(low) & np.isfinite(high)  # NaN and inf reach the min or max

    def describe_non_finite(sample: int, row: int) -> str:
        mask = masks[sample, row]
        nan, inf = int(np.isnan(mask).sum()), int(np.isinf(mask).sum())
        return f"a mask with a non-finite value ({nan} NaN, {inf} inf)"

    def describe_range(sample: int, row: int) -> str:
        mask = masks[sample, row]
        return f"mask values outside [0, 1] ({mask.min():g} to {mask.max():g})"

    return [
        (
            ~finite,
            describe_non_finite,
            "Every value of a real target's mask must be finite; fix or drop the target.",
        ),
        (
            finite & ((low < 0) | (high > 1)),
            describe_range,
            "Masks are bool or in [0, 1] (an 8-bit image of 0 and 255: divide by 255, or "
            "compare it with 0).",
        ),
    ]


def _check_numeric(array: np.ndarray, name: str) -> None:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"Expected numeric {name}. Received: dtype={array.dtype}")


def _sizes(boxes: np.ndarray, box_format: str) -> tuple[np.ndarray, np.ndarray]:
    """Width and height of boxes `[..., 4]` (float64) in `box_format`."""
    if box_format == "xyxy":
        return boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    if box_format == "yxyx":
        return boxes[..., 3] - boxes[..., 1], boxes[..., 2] - boxes[..., 0]
    if box_format == "center_yxhw":
        return boxes[..., 3], boxes[..., 2]
    return boxes[..., 2], boxes[..., 3]  # xywh, center_xywh


def _size(row: np.ndarray, box_format: str) -> tuple[float, float]:
    width, height = _sizes(row[:4], box_format)
    return float(width), float(height)


def _to_numpy(x: Any) -> np.ndarray:
    """An array, a list or a tensor of any backend as NumPy, without importing a framework."""
    if type(x).__module__.startswith("torch"):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def _dataset_batches(dataset: Any, target_key: str | None, verbose: int) -> Iterator[Targets]:
    """The targets of each element of a `tf.data.Dataset`, as NumPy with a batch axis."""
    cardinality = int(dataset.cardinality())
    if cardinality == -1:  # tf.data.INFINITE_CARDINALITY
        raise ValueError(
            "Expected a finite dataset: check_targets reads every element. Received an "
            "infinite one (it repeats): check the dataset before `.repeat()`, or "
            "`.take(n)` of it."
        )
    progress = keras.utils.Progbar(cardinality if cardinality >= 0 else None) if verbose else None
    step = 0
    for step, element in enumerate(dataset.as_numpy_iterator(), start=1):
        y = element[1] if isinstance(element, tuple) else element
        yield _batched(_pick_targets(y, target_key))
        if progress is not None:
            progress.update(step)
    if progress is not None:
        progress.update(step, finalize=True)


def _pick_targets(y: Any, target_key: str | None) -> Targets:
    """The targets in `y`: by key if it is a dict of outputs; NumPy, or a dict of NumPy."""
    if isinstance(y, dict) and (target_key is not None or "labels" not in y):
        if target_key is None and len(y) == 1:
            y = next(iter(y.values()))
        elif target_key not in y:
            raise ValueError(
                "Expected `target_key` to name the targets among the dataset's outputs "
                f"{sorted(y)}. Received: target_key={target_key!r}"
            )
        else:
            y = y[target_key]
    if isinstance(y, dict):
        return _checked_dict(y)
    return _to_numpy(y)


def _checked_dict(y: dict[str, Any]) -> dict[str, np.ndarray]:
    """Dict targets as NumPy, their keys, dtypes and shapes checked (one sample or a batch)."""
    if "labels" not in y or not {"masks", "boxes"} & set(y) or set(y) - set(_DICT_KEYS):
        raise ValueError(
            "Expected dict targets with the keys 'labels' and 'masks' or 'boxes' or both "
            f"(the keys {list(_DICT_KEYS)}). Received: keys={sorted(y)}"
        )
    arrays = {key: _to_numpy(value) for key, value in y.items()}
    for key, array in arrays.items():
        _check_numeric(array, key)
    labels = arrays["labels"]
    batched = labels.ndim == 2  # otherwise one sample, [M]
    expected = {"labels": 1, "masks": 3, "boxes": 2}
    shapes = {key: array.shape for key, array in arrays.items()}
    good = labels.ndim in (1, 2) and all(
        array.ndim == expected[key] + batched and array.shape[: 1 + batched] == labels.shape
        for key, array in arrays.items()
    )
    if not good or ("boxes" in arrays and arrays["boxes"].shape[-1] != 4):
        raise ValueError(
            "Expected dict targets of shapes labels [samples, M], masks [samples, M, H, W], "
            "boxes [samples, M, 4] (or without the samples axis, for one sample). Received: "
            + ", ".join(f"{key}.shape={shape}" for key, shape in shapes.items())
        )
    return arrays


def _batched(targets: Targets) -> Targets:
    """Targets with a samples axis: packed `[S, M, D]`, or dicts with `labels [S, M]`."""
    if isinstance(targets, dict):
        if targets["labels"].ndim == 1:
            return {key: array[None] for key, array in targets.items()}
        return targets
    return targets[None] if targets.ndim == 2 else targets
