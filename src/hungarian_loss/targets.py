"""`check_targets`: find the broken targets of a data set before training on them.

The loss makes a sample with a broken target `NaN` (the failure policy); this tells
which sample, row and value it was, in NumPy, before any training step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from hungarian_loss import boxes as box_lib

__all__ = ["TargetSummary", "check_targets"]

_CLASS_INDEX = 4  # [box (4 channels), class id, ...]


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
    """

    samples: int
    targets: int
    max_targets: int
    class_counts: dict[int, int]
    num_classes: int | None
    box_format: str
    width_range: tuple[float, float] | None
    height_range: tuple[float, float] | None

    def __repr__(self) -> str:
        lines = [
            f"TargetSummary: {self.samples} samples, {self.targets} targets "
            f"(at most {self.max_targets} per sample)"
        ]
        if self.class_counts:
            counts = ", ".join(f"{key}: {value}" for key, value in self.class_counts.items())
            of = "" if self.num_classes is None else f" (num_classes={self.num_classes})"
            lines.append(f"  class ids{of}: {counts}")
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

    Targets are laid out as the losses read them: `[samples, M, D]`, each row a box in
    `box_format` (channels 0-3), then, when `D >= 5`, a class id (channel 4), and
    rows whose every value equals `padding_value` are padding. A real row breaks a
    rule if it has

    - a non-finite value (`NaN`, `inf`) in any channel;
    - a box of negative width or height (`x2 < x1` or `y2 < y1` in `"xyxy"`, a
      negative `w` or `h` in `"center_xywh"`); boxes of zero size are legal;
    - a class id that is not an integer in `0..num_classes - 1` (any integer `>= 0`
      when `num_classes` is `None`): a fractional id, a `-1` on a row whose box is
      real, an id out of range such as COCO's category id 90 with 80 classes.

    `HungarianLoss` and `DETRLoss` make the loss of a sample with such a row `NaN`
    during training; this finds the row before training, eagerly and in NumPy (it
    imports TensorFlow only to iterate a `tf.data` dataset, which is given already).

    Args:
        y_true: The targets: a NumPy array or a tensor of any backend, `[samples, M, D]`
            (or `[M, D]`, one sample); or a `tf.data.Dataset` yielding batches of them
            (`padded_batch`), single samples `[m, D]`, or `(x, y)` / `(x, y,
            sample_weight)` tuples as `model.fit` takes them, whose `y` is checked. The
            dataset must be finite (`take` a repeated one).
        num_classes: K, the number of classes: class ids must be in `0..K-1`. `None`
            checks only that they are integers `>= 0`.
        box_format: The format of the boxes: `"xyxy"` (`HungarianLoss`'s default),
            `"yxyx"`, `"xywh"`, `"center_xywh"` (`DETRLoss`'s default) or
            `"center_yxhw"`.
        padding_value: The value that fills padding rows, or `None` when every row is a
            target.
        target_key: When the dataset's `y` is a dict (a model with several outputs),
            the key of the targets; `None` takes the only entry of a one-entry dict.
        verbose: 1 shows a progress bar while a dataset is iterated, 0 does not.

    Returns:
        A `TargetSummary`: the numbers of samples and targets, the class histogram and
        the range of box sizes.

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
        array = _to_numpy(y_true)
        checker.add(array[None] if array.ndim == 2 else array)
    return checker.summary()


class _Checker:
    """Checks batches `[S, M, D]` in order and accumulates the summary."""

    def __init__(self, num_classes: int | None, box_format: str, padding: float | None):
        self.num_classes = num_classes
        self.box_format = box_format
        self.padding = padding
        self.samples = 0
        self.targets = 0
        self.max_targets = 0
        self.class_counts: dict[int, int] = {}
        self.sizes: list[tuple[float, float, float, float]] = []  # w min, w max, h min, h max

    def add(self, batch: np.ndarray, element: int | None = None) -> None:
        """Checks the next batch; `element` is its index in a dataset, for the message."""
        if batch.ndim != 3 or batch.shape[-1] < 4:
            raise ValueError(
                "Expected targets of shape [samples, M, D] (or [M, D] for one sample) with "
                "D >= 4: a box in channels 0-3, then optionally a class id. Received: "
                f"shape={batch.shape}"
            )
        if not (np.issubdtype(batch.dtype, np.number) or batch.dtype == bool):
            raise ValueError(f"Expected numeric targets. Received: dtype={batch.dtype}")
        values = batch.astype("float64")  # [S, M, D]
        real = self._real_rows(values)  # [S, M]
        broken = self._first_broken(values, real)
        if broken is not None:
            sample, row, rule, fix = broken
            shown = ", ".join(f"{value:g}" for value in values[sample, row])
            where = "" if element is None else f" (dataset element {element}, item {sample})"
            raise ValueError(
                f"Sample {self.samples + sample}, row {row} of the targets{where}: {rule}. "
                f"Received: [{shown}]. {fix}"
            )
        counts = real.sum(axis=1)  # [S]
        self.samples += len(values)
        self.targets += int(counts.sum())
        self.max_targets = max(self.max_targets, int(counts.max(initial=0)))
        rows = values[real]  # [T, D]
        if rows.shape[-1] > _CLASS_INDEX:
            ids, found = np.unique(rows[:, _CLASS_INDEX].astype("int64"), return_counts=True)
            for class_id, count in zip(ids.tolist(), found.tolist(), strict=True):
                self.class_counts[class_id] = self.class_counts.get(class_id, 0) + count
        if len(rows):
            width, height = _sizes(rows[:, :4], self.box_format)  # [T] each
            self.sizes.append((width.min(), width.max(), height.min(), height.max()))

    def _real_rows(self, values: np.ndarray) -> np.ndarray:
        """`[S, M]`: True for rows that are not padding."""
        if self.padding is None:
            return np.ones(values.shape[:2], dtype=bool)
        padding = np.isnan(values) if math.isnan(self.padding) else values == self.padding
        real: np.ndarray = np.logical_not(np.all(padding, axis=-1))
        return real

    def _first_broken(
        self, values: np.ndarray, real: np.ndarray
    ) -> tuple[int, int, str, str] | None:
        """The first real row (in sample, then row order) that breaks a rule: where and why."""
        with np.errstate(invalid="ignore", over="ignore"):
            width, height = _sizes(values[..., :4], self.box_format)  # [S, M] each
            rules = self._rules(values, width, height)
        bad = np.zeros(real.shape, dtype=bool)
        for mask, _, _ in rules:
            bad |= mask
        bad &= real
        if not bad.any():
            return None
        sample, row = (int(i) for i in np.argwhere(bad)[0])
        for mask, describe, fix in rules:
            if mask[sample, row]:
                return sample, row, describe(values[sample, row]), fix
        raise AssertionError("unreachable")  # pragma: no cover

    def _rules(self, values: np.ndarray, width: np.ndarray, height: np.ndarray) -> list[Any]:
        """`(mask [S, M], describe(row) -> str, fix)` per rule, in the order they are named."""
        finite = np.all(np.isfinite(values), axis=-1)
        rules: list[Any] = [
            (
                ~finite,
                lambda row: "a non-finite value (NaN or inf)",
                "Every value of a real target must be finite; fix or drop the row.",
            ),
            (
                finite & ((width < 0) | (height < 0)),
                lambda row: (
                    f"a box of negative width or height in {self.box_format!r} "
                    f"(width {_size(row, self.box_format)[0]:g}, "
                    f"height {_size(row, self.box_format)[1]:g})"
                ),
                f"Check that the boxes are in {self.box_format!r} (pass `box_format` as the "
                "loss has it) and that no corner is swapped; zero size is legal.",
            ),
        ]
        if values.shape[-1] <= _CLASS_INDEX:
            return rules
        ids = values[..., _CLASS_INDEX]  # [S, M]
        rules.append(
            (
                finite & (ids != np.round(ids)),
                lambda row: f"class id {row[_CLASS_INDEX]:g} is not an integer",
                "Class ids are integers in 0..K-1, stored as floats in the target rows.",
            )
        )
        rules.append(
            (
                finite & (ids < 0),
                lambda row: (
                    f"class id {row[_CLASS_INDEX]:g} is negative on a row whose box is real"
                ),
                "A padding row is `padding_value` in every channel; a real box needs a class "
                "id in 0..K-1.",
            )
        )
        if self.num_classes is not None:
            last = self.num_classes - 1
            rules.append(
                (
                    finite & (ids > last),
                    lambda row: (
                        f"class id {row[_CLASS_INDEX]:g} is not in 0..{last} "
                        f"(num_classes={self.num_classes})"
                    ),
                    "Map the ids to 0..K-1 (COCO's category ids run from 1 to 90 with gaps: "
                    "see the guide 'DETR in Keras'), or build the model with more classes.",
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
        )


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


def _dataset_batches(dataset: Any, target_key: str | None, verbose: int) -> Iterator[np.ndarray]:
    """The targets of each element of a `tf.data.Dataset`, as NumPy `[S, M, D]`."""
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
        targets = _pick_targets(element, target_key)
        yield targets[None] if targets.ndim == 2 else targets
        if progress is not None:
            progress.update(step)
    if progress is not None:
        progress.update(step, finalize=True)


def _pick_targets(element: Any, target_key: str | None) -> np.ndarray:
    """The targets of one dataset element: `y` of `(x, y[, sample_weight])`, by key if a dict."""
    y = element[1] if isinstance(element, tuple) else element
    if isinstance(y, dict):
        if target_key is None and len(y) == 1:
            return np.asarray(next(iter(y.values())))
        if target_key not in y:
            raise ValueError(
                "Expected `target_key` to name the targets among the dataset's outputs "
                f"{sorted(y)}. Received: target_key={target_key!r}"
            )
        return np.asarray(y[target_key])
    return np.asarray(y)
