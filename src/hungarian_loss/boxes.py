"""Box formats and pairwise and elementwise box geometry made of `keras.ops`.

Boxes are the last axis of a tensor, four numbers in one of Keras's absolute formats:

```
"xyxy"         [left, top, right, bottom]
"yxyx"         [top, left, bottom, right]
"xywh"         [left, top, width, height]
"center_xywh"  [center_x, center_y, width, height]
"center_yxhw"  [center_y, center_x, height, width]
```

The geometry works on batches of sets of boxes: `[B, M, 4]` and `[B, N, 4]` give
`[B, M, N]`, one value per pair (an unbatched `[M, 4]` and `[N, 4]` give `[M, N]`).
The `elementwise_*` functions give the same values on the pairs of boxes at the same
place in two tensors of one shape (`[..., 4]` and `[..., 4]` give `[...]`): what a loss
needs on matched pairs, without the matrix.
It never asserts on tensor values: boxes with zero area or with `right < left`
(or `bottom < top`) have their width or height clamped to zero, and a ratio (of areas,
or of squared distances) whose denominator is at most `epsilon = keras.config.epsilon()`
is 0, with gradient 0, so values and gradients stay finite for finite boxes, up to the largest float
(huge coordinates are scaled down before areas are taken). A pair that holds a box
with a non-finite coordinate (`inf`, `-inf`, `NaN`) has the value `NaN`, and no
gradient flows from it to the other box of the pair.
Nothing here imports from the rest of the package.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = [
    "BOX_FORMATS",
    "convert_format",
    "elementwise_ciou",
    "elementwise_diou",
    "elementwise_giou",
    "elementwise_iou",
    "pairwise_ciou",
    "pairwise_diou",
    "pairwise_giou",
    "pairwise_iou",
    "standardize_box_format",
    "to_xyxy",
]

Tensor = Any

BOX_FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw")
"""The box format names understood here (Keras's names for absolute coordinates)."""

_HALF_DTYPES = ("float16", "bfloat16")
_INVERSE_SAFE_COORDINATE = 2.0**-60  # see `_box_scale`


def standardize_box_format(box_format: str, name: str = "box_format") -> str:
    """Checks a box format name and returns it in lower case.

    Args:
        box_format: One of `BOX_FORMATS`, in any case.
        name: The argument name to use in the error message.

    Returns:
        The format name in lower case.

    Raises:
        ValueError: if `box_format` is not one of `BOX_FORMATS`. The relative formats
            of Keras (`"rel_xyxy"`, ...) are not accepted: they need the image size.

    Examples:
        >>> from hungarian_loss.boxes import standardize_box_format
        >>> standardize_box_format("CENTER_XYWH")
        'center_xywh'
    """
    standardized = box_format.lower() if isinstance(box_format, str) else box_format
    if standardized not in BOX_FORMATS:
        raise ValueError(
            f"Expected `{name}` to be one of {', '.join(map(repr, BOX_FORMATS))}. "
            f"Received: {name}={box_format!r}"
        )
    return str(standardized)


def convert_format(boxes: Tensor, source: str, target: str) -> Tensor:
    """Converts boxes from one format to another.

    Args:
        boxes: Float tensor `[..., 4]` of boxes in the `source` format.
        source: The format of `boxes`, one of `BOX_FORMATS`.
        target: The format to convert to, one of `BOX_FORMATS`.

    Returns:
        Tensor of the shape and dtype of `boxes` (integer boxes become `floatx`), in
        the `target` format.

    Raises:
        ValueError: if a format name is unknown or the last dimension is not 4.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import convert_format
        >>> boxes = np.array([[10.0, 20.0, 30.0, 60.0]], dtype="float32")
        >>> print(np.asarray(convert_format(boxes, "xyxy", "center_xywh")))
        [[20. 40. 20. 40.]]
    """
    source = standardize_box_format(source, "source")
    target = standardize_box_format(target, "target")
    boxes = _as_float_tensor(boxes)
    _check_box_channels(boxes, "boxes")
    if source == target:
        return boxes
    # Keras's converter serves as is for the absolute formats: it works on any rank and
    # on an unknown batch, eagerly and traced, on every backend. We only pass the dtype,
    # since it otherwise casts to float32.
    dtype = keras.backend.standardize_dtype(boxes.dtype)
    return keras.utils.bounding_boxes.convert_format(
        boxes, source=source, target=target, dtype=dtype
    )


def to_xyxy(boxes: Tensor, box_format: str) -> Tensor:
    """Converts boxes to the `"xyxy"` format, `[left, top, right, bottom]`.

    Args:
        boxes: Float tensor `[..., 4]` of boxes in `box_format`.
        box_format: The format of `boxes`, one of `BOX_FORMATS`.

    Returns:
        Tensor of the shape and dtype of `boxes`, in the `"xyxy"` format.

    Raises:
        ValueError: if `box_format` is unknown or the last dimension is not 4.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import to_xyxy
        >>> boxes = np.array([[20.0, 40.0, 20.0, 40.0]], dtype="float32")
        >>> print(np.asarray(to_xyxy(boxes, "center_xywh")))
        [[10. 20. 30. 60.]]
    """
    return convert_format(boxes, source=box_format, target="xyxy")


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    r"""Intersection over union of every pair of boxes.

    ```
    iou(a, b) = |a n b| / |a u b|    where |a u b| > epsilon, else 0
    ```

    Preconditions: none on values. A box with `right < left` or `bottom < top` counts
    as empty (its width or height is clamped to 0); two empty boxes have IoU 0, with
    gradient 0. A pair with a non-finite coordinate has IoU `NaN`; finite coordinates
    up to the float maximum do not overflow.
    Half-precision inputs (`float16`, `bfloat16`) are computed in float32 (their areas
    would overflow) and the result is cast back.

    Args:
        boxes1: Float tensor `[B, M, 4]` (or `[M, 4]`) in `box_format`.
        boxes2: Float tensor `[B, N, 4]` (or `[N, 4]`) in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[B, M, N]` (or `[M, N]`) of values in `[0, 1]` (`NaN` for pairs with a
        non-finite coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            ranks differ or are not 2 or 3.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import pairwise_iou
        >>> a = np.array([[0.0, 0.0, 100.0, 100.0]], dtype="float32")
        >>> b = np.array([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 50.0, 50.0],
        ...               [100.0, 0.0, 200.0, 100.0]], dtype="float32")
        >>> print(np.round(np.asarray(pairwise_iou(a, b)), 4))
        [[1.   0.25 0.  ]]
    """
    boxes1, boxes2, invalid, dtype = _prepare_pair(boxes1, boxes2, box_format)
    return _finish(_iou_of_pairs(boxes1, boxes2), invalid, dtype)


def pairwise_giou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    r"""Generalized intersection over union (Rezatofighi et al., 2019) of every pair.

    With `C` the smallest box enclosing both `a` and `b`:

    ```
    giou(a, b) = iou(a, b) - (|C| - |a u b|) / |C|    where |C| > epsilon, else iou(a, b)
    ```

    Preconditions: none on values; empty and inverted boxes are handled as in
    `pairwise_iou`, and half precision is computed in float32.

    Args:
        boxes1: Float tensor `[B, M, 4]` (or `[M, 4]`) in `box_format`.
        boxes2: Float tensor `[B, N, 4]` (or `[N, 4]`) in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[B, M, N]` (or `[M, N]`) of values in `[-1, 1]` (`NaN` for pairs with a
        non-finite coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            ranks differ or are not 2 or 3.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import pairwise_giou
        >>> a = np.array([[0.0, 0.0, 100.0, 100.0]], dtype="float32")
        >>> b = np.array([[0.0, 0.0, 50.0, 50.0], [100.0, 0.0, 200.0, 100.0],
        ...               [100.0, 100.0, 200.0, 200.0]], dtype="float32")
        >>> print(np.round(np.asarray(pairwise_giou(a, b)), 4))
        [[ 0.25  0.   -0.5 ]]
    """
    boxes1, boxes2, invalid, dtype = _prepare_pair(boxes1, boxes2, box_format)
    return _finish(_giou_of_pairs(boxes1, boxes2), invalid, dtype)


def pairwise_diou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    r"""Distance intersection over union (Zheng et al., 2020) of every pair of boxes.

    With `d` the distance between the centers of `a` and `b` and `c` the diagonal of the
    smallest box `C` enclosing both:

    ```
    diou(a, b) = iou(a, b) - d^2 / c^2    where c^2 > epsilon, else iou(a, b)
    ```

    Unlike GIoU, the penalty keeps pulling the centers together when one box holds the
    other. Preconditions: none on values; empty and inverted boxes count as empty in
    the IoU, as in `pairwise_iou`. `C` spans all the corners of both boxes, so that it
    holds both centers even for inverted boxes and `d^2 <= c^2`. Half precision is
    computed in float32.

    Args:
        boxes1: Float tensor `[B, M, 4]` (or `[M, 4]`) in `box_format`.
        boxes2: Float tensor `[B, N, 4]` (or `[N, 4]`) in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[B, M, N]` (or `[M, N]`) of values in `[-1, 1]` (`NaN` for pairs with a
        non-finite coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            ranks differ or are not 2 or 3.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import pairwise_diou
        >>> a = np.array([[0.0, 0.0, 1.0, 1.0]], dtype="float32")
        >>> b = np.array([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]], dtype="float32")
        >>> print(np.round(np.asarray(pairwise_diou(a, b)), 4))  # 0 - 2^2 / (3^2 + 1^2)
        [[ 1.  -0.4]]
    """
    boxes1, boxes2, invalid, dtype = _prepare_pair(boxes1, boxes2, box_format)
    return _finish(_diou_of_pairs(boxes1, boxes2), invalid, dtype)


def pairwise_ciou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    r"""Complete intersection over union (Zheng et al., 2020) of every pair of boxes.

    DIoU (see `pairwise_diou`) minus a penalty for different aspect ratios, with `w`
    and `h` the width and height of a box:

    ```
    ciou(a, b) = diou(a, b) - alpha * v
    v          = (4 / pi^2) * (atan(w_a / h_a) - atan(w_b / h_b))^2
    alpha      = v / (1 - iou(a, b) + v)    where 1 - iou(a, b) + v > epsilon, else 0
    ```

    The values are those of `keras.utils.bounding_boxes.compute_ciou` (which adds
    `epsilon` to heights and denominators; here the divisions are guarded instead).
    `alpha` is a constant for the gradient, as in the paper (and torchvision's CIoU
    loss); `compute_ciou` differentiates through it, so gradients differ slightly.

    Preconditions: none on values; empty and inverted boxes are handled as in
    `pairwise_diou`. `atan(w / h)` is taken as `atan2(w, h)` on sides clamped to
    `>= 0`: `pi / 2` for `h = 0`, and 0 (with gradient 0) for a box whose sides are both
    at most `epsilon`. Half precision is computed in float32.

    Args:
        boxes1: Float tensor `[B, M, 4]` (or `[M, 4]`) in `box_format`.
        boxes2: Float tensor `[B, N, 4]` (or `[N, 4]`) in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[B, M, N]` (or `[M, N]`) of values in `[-1.5, 1]` (`NaN` for pairs with
        a non-finite coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            ranks differ or are not 2 or 3.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import pairwise_ciou
        >>> a = np.array([[0.0, 0.0, 2.0, 2.0]], dtype="float32")
        >>> b = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]], dtype="float32")
        >>> print(np.round(np.asarray(pairwise_ciou(a, b)), 4))
        [[1.     0.4655]]
    """
    boxes1, boxes2, invalid, dtype = _prepare_pair(boxes1, boxes2, box_format)
    return _finish(_ciou_of_pairs(boxes1, boxes2), invalid, dtype)


def elementwise_iou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Intersection over union of each box with the box at the same place in the other tensor.

    The values of `pairwise_iou` on the pairs `(boxes1[..., i, :], boxes2[..., i, :])`
    only, computed without the `[B, M, N]` matrix: what a loss needs on matched pairs.
    The same preconditions, safety and half-precision handling as `pairwise_iou`.

    Args:
        boxes1: Float tensor `[..., 4]` in `box_format`.
        boxes2: Float tensor of the same shape, in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[...]` of values in `[0, 1]` (`NaN` for pairs with a non-finite
        coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import elementwise_iou
        >>> a = np.array([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 100.0]], dtype="float32")
        >>> b = np.array([[0.0, 0.0, 50.0, 50.0], [100.0, 0.0, 200.0, 100.0]], dtype="float32")
        >>> print(np.round(np.asarray(elementwise_iou(a, b)), 4))
        [0.25 0.  ]
    """
    boxes1, boxes2, invalid, dtype = _prepare_elementwise(boxes1, boxes2, box_format)
    return _finish(_iou_of_pairs(boxes1, boxes2), invalid, dtype)


def elementwise_giou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Generalized IoU of each box with the box at the same place in the other tensor.

    The values of `pairwise_giou` on the pairs `(boxes1[..., i, :], boxes2[..., i, :])`
    only (see `elementwise_iou`).

    Args:
        boxes1: Float tensor `[..., 4]` in `box_format`.
        boxes2: Float tensor of the same shape, in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[...]` of values in `[-1, 1]` (`NaN` for pairs with a non-finite
        coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import elementwise_giou
        >>> a = np.array([[0.0, 0.0, 100.0, 100.0]] * 3, dtype="float32")
        >>> b = np.array([[0.0, 0.0, 50.0, 50.0], [100.0, 0.0, 200.0, 100.0],
        ...               [100.0, 100.0, 200.0, 200.0]], dtype="float32")
        >>> print(np.round(np.asarray(elementwise_giou(a, b)), 4))
        [ 0.25  0.   -0.5 ]
    """
    boxes1, boxes2, invalid, dtype = _prepare_elementwise(boxes1, boxes2, box_format)
    return _finish(_giou_of_pairs(boxes1, boxes2), invalid, dtype)


def elementwise_diou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Distance IoU of each box with the box at the same place in the other tensor.

    The values of `pairwise_diou` on the pairs `(boxes1[..., i, :], boxes2[..., i, :])`
    only (see `elementwise_iou`).

    Args:
        boxes1: Float tensor `[..., 4]` in `box_format`.
        boxes2: Float tensor of the same shape, in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[...]` of values in `[-1, 1]` (`NaN` for pairs with a non-finite
        coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import elementwise_diou
        >>> a = np.array([[0.0, 0.0, 1.0, 1.0]], dtype="float32")
        >>> b = np.array([[2.0, 0.0, 3.0, 1.0]], dtype="float32")
        >>> print(np.round(np.asarray(elementwise_diou(a, b)), 4))  # 0 - 2^2 / (3^2 + 1^2)
        [-0.4]
    """
    boxes1, boxes2, invalid, dtype = _prepare_elementwise(boxes1, boxes2, box_format)
    return _finish(_diou_of_pairs(boxes1, boxes2), invalid, dtype)


def elementwise_ciou(boxes1: Tensor, boxes2: Tensor, box_format: str = "xyxy") -> Tensor:
    """Complete IoU of each box with the box at the same place in the other tensor.

    The values of `pairwise_ciou` on the pairs `(boxes1[..., i, :], boxes2[..., i, :])`
    only (see `elementwise_iou`); equal to `keras.utils.bounding_boxes.compute_ciou`.

    Args:
        boxes1: Float tensor `[..., 4]` in `box_format`.
        boxes2: Float tensor of the same shape, in `box_format`.
        box_format: The format of both, one of `BOX_FORMATS`.

    Returns:
        Tensor `[...]` of values in `[-1.5, 1]` (`NaN` for pairs with a non-finite
        coordinate), of the inputs' dtype.

    Raises:
        ValueError: if `box_format` is unknown, a last dimension is not 4, or the
            shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.boxes import elementwise_ciou
        >>> a = np.array([[0.0, 0.0, 2.0, 2.0]], dtype="float32")
        >>> b = np.array([[0.0, 0.0, 2.0, 1.0]], dtype="float32")
        >>> print(np.round(np.asarray(elementwise_ciou(a, b)), 4))
        [0.4655]
    """
    boxes1, boxes2, invalid, dtype = _prepare_elementwise(boxes1, boxes2, box_format)
    return _finish(_ciou_of_pairs(boxes1, boxes2), invalid, dtype)


def _iou_of_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of the pairs `boxes1 [..., 4]`, `boxes2 [..., 4]` (prepared, `"xyxy"`): `[...]`."""
    intersection, union = _intersection_and_union(boxes1, boxes2)  # [...] each
    return _safe_divide(intersection, union)


def _giou_of_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of the pairs `boxes1 [..., 4]`, `boxes2 [..., 4]` (prepared, `"xyxy"`): `[...]`."""
    intersection, union = _intersection_and_union(boxes1, boxes2)  # [...] each
    iou = _safe_divide(intersection, union)  # [...]
    top_left = ops.minimum(boxes1[..., :2], boxes2[..., :2])  # [..., 2]
    bottom_right = ops.maximum(boxes1[..., 2:], boxes2[..., 2:])  # [..., 2]
    enclosing = _area_between(top_left, bottom_right)  # [...]
    return iou - _safe_divide(enclosing - union, enclosing)


def _diou_of_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """DIoU of the pairs `boxes1 [..., 4]`, `boxes2 [..., 4]` (prepared, `"xyxy"`): `[...]`."""
    return _iou_of_pairs(boxes1, boxes2) - _center_distance_ratio(boxes1, boxes2)


def _ciou_of_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """CIoU of the pairs `boxes1 [..., 4]`, `boxes2 [..., 4]` (prepared, `"xyxy"`): `[...]`."""
    iou = _iou_of_pairs(boxes1, boxes2)  # [...]
    angle1, angle2 = _aspect_angle(boxes1), _aspect_angle(boxes2)  # [...] each
    v = (4.0 / math.pi**2) * ops.square(angle1 - angle2)  # [...], in [0, 1]
    alpha = ops.stop_gradient(_safe_divide(v, 1.0 - iou + v))  # [...], in [0, 1]
    return iou - _center_distance_ratio(boxes1, boxes2) - alpha * v


def _intersection_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Areas of the intersection and of the union of every pair of `"xyxy"` boxes.

    Preconditions: `boxes1` and `boxes2` `[B, M, N, 4]`, the two boxes of each pair, in
    `"xyxy"`, same dtype. Returns two tensors `[B, M, N]`, both >= 0, with
    `intersection <= union`.
    """
    area1 = _area_between(boxes1[..., :2], boxes1[..., 2:])  # [B, M, N]
    area2 = _area_between(boxes2[..., :2], boxes2[..., 2:])  # [B, M, N]
    top_left = ops.maximum(boxes1[..., :2], boxes2[..., :2])  # [B, M, N, 2]
    bottom_right = ops.minimum(boxes1[..., 2:], boxes2[..., 2:])  # [B, M, N, 2]
    intersection = _area_between(top_left, bottom_right)  # [B, M, N]
    union = area1 + area2 - intersection  # [B, M, N]
    return intersection, union


def _center_distance_ratio(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """`d^2 / c^2` of every pair: squared distance of the centers over squared diagonal.

    Preconditions: `boxes1` and `boxes2` `[B, M, N, 4]` in `"xyxy"`. The enclosing box
    spans all eight corner coordinates, so it holds both centers and the ratio is in
    `[0, 1]`; it is 0, with gradient 0, where `c^2 <= epsilon`.
    """
    centers1 = (boxes1[..., :2] + boxes1[..., 2:]) / 2.0  # [B, M, N, 2]
    centers2 = (boxes2[..., :2] + boxes2[..., 2:]) / 2.0  # [B, M, N, 2]
    lowest = ops.minimum(
        ops.minimum(boxes1[..., :2], boxes1[..., 2:]), ops.minimum(boxes2[..., :2], boxes2[..., 2:])
    )  # [B, M, N, 2]
    highest = ops.maximum(
        ops.maximum(boxes1[..., :2], boxes1[..., 2:]), ops.maximum(boxes2[..., :2], boxes2[..., 2:])
    )  # [B, M, N, 2]
    distance = ops.sum(ops.square(centers1 - centers2), axis=-1)  # [B, M, N]
    diagonal = ops.sum(ops.square(highest - lowest), axis=-1)  # [B, M, N]
    return _safe_divide(distance, diagonal)


def _aspect_angle(boxes: Tensor) -> Tensor:
    """`atan(width / height)` of boxes `[..., 4]` in `"xyxy"`: `[...]`, in `[0, pi / 2]`.

    Sides are clamped to `>= 0`; `atan2` makes `height = 0` safe (`pi / 2`). A box whose
    sides are both at most `epsilon` has the angle 0 with gradient 0 (the gradient of
    `atan2` divides by `width^2 + height^2`).
    """
    sides = ops.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)  # [..., 2]: width, height
    defined = ops.maximum(sides[..., 0], sides[..., 1]) > keras.config.epsilon()  # [...]
    width = ops.where(defined, sides[..., 0], 0.0)  # [...]
    height = ops.where(defined, sides[..., 1], 1.0)  # [...]
    return ops.where(defined, ops.arctan2(width, height), 0.0)


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """`numerator / denominator` where `denominator > epsilon`, else 0 with gradient 0.

    Preconditions: `0 <= numerator <= denominator` (an area and a larger area, or a
    squared distance and a larger one), so the quotient is in `[0, 1]` and its
    gradients are bounded by `1 / epsilon`; both tensors of one shape and dtype.
    """
    defined = denominator > keras.config.epsilon()  # [B, M, N]
    quotient = numerator / ops.where(defined, denominator, 1.0)  # [B, M, N]
    return ops.where(defined, quotient, 0.0)


def _area_between(top_left: Tensor, bottom_right: Tensor) -> Tensor:
    """Area of the boxes spanned by corners `[..., 2]`; negative sides count as 0."""
    sides = ops.maximum(bottom_right - top_left, 0.0)  # [..., 2]
    return sides[..., 0] * sides[..., 1]  # [...]


def _prepare_pair(
    boxes1: Tensor, boxes2: Tensor, box_format: str
) -> tuple[Tensor, Tensor, Tensor, str]:
    """Checks two sets of boxes and makes every pair safe to compute with.

    Returns the two boxes of every pair, `[B, M, N, 4]` each, in `"xyxy"` and the
    compute dtype, scaled alike (see `_box_scale`) and with non-finite boxes replaced
    by zeros; the mask `[B, M, N]` of the pairs that hold a non-finite box; and the
    dtype of the result.
    """
    boxes1, boxes2, dtype = _as_box_tensors(boxes1, boxes2)
    rank1, rank2 = len(boxes1.shape), len(boxes2.shape)
    if rank1 not in (2, 3) or rank1 != rank2:
        raise ValueError(
            "Expected `boxes1` and `boxes2` of the same rank, 3 ([batch, boxes, 4]) or 2 "
            f"([boxes, 4]). Received: boxes1.shape={tuple(boxes1.shape)}, "
            f"boxes2.shape={tuple(boxes2.shape)}"
        )
    boxes1, finite1, scale1 = _safe_xyxy(boxes1, box_format)  # [B, M, 4], [B, M], [B, M]
    boxes2, finite2, scale2 = _safe_xyxy(boxes2, box_format)  # [B, N, 4], [B, N], [B, N]
    pairs1, pairs2, invalid = _scaled_alike(
        (boxes1[..., :, None, :], finite1[..., :, None], scale1[..., :, None]),  # [B, M, 1, ...]
        (boxes2[..., None, :, :], finite2[..., None, :], scale2[..., None, :]),  # [B, 1, N, ...]
    )  # [B, M, N, 4], [B, M, N, 4], [B, M, N]
    return pairs1, pairs2, invalid, dtype


def _prepare_elementwise(
    boxes1: Tensor, boxes2: Tensor, box_format: str
) -> tuple[Tensor, Tensor, Tensor, str]:
    """`_prepare_pair` for the pairs `(boxes1[..., i, :], boxes2[..., i, :])` only.

    Returns both `[..., 4]` in `"xyxy"`, each pair scaled alike, non-finite boxes zeroed;
    the mask `[...]` of the pairs that hold a non-finite box; the dtype of the result.
    """
    boxes1, boxes2, dtype = _as_box_tensors(boxes1, boxes2)
    shape1, shape2 = tuple(boxes1.shape), tuple(boxes2.shape)
    if len(shape1) != len(shape2) or not all(
        a is None or b is None or a == b for a, b in zip(shape1, shape2, strict=True)
    ):
        raise ValueError(
            "Expected `boxes1` and `boxes2` of the same shape [..., 4] (one pair per "
            f"box). Received: boxes1.shape={shape1}, boxes2.shape={shape2}"
        )
    pairs1, pairs2, invalid = _scaled_alike(
        _safe_xyxy(boxes1, box_format), _safe_xyxy(boxes2, box_format)
    )  # [..., 4], [..., 4], [...]
    return pairs1, pairs2, invalid, dtype


def _scaled_alike(
    safe1: tuple[Tensor, Tensor, Tensor], safe2: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """The two boxes of each pair scaled alike, and the mask of pairs with a non-finite box.

    `safe1` and `safe2` are `_safe_xyxy`'s (boxes `[..., 4]`, finite `[...]`, scale `[...]`),
    of shapes that broadcast to the pairs. The two boxes of a pair share the larger of
    their scales. Returns both boxes `[..., 4]` and the mask `[...]`, broadcast.
    """
    (boxes1, finite1, scale1), (boxes2, finite2, scale2) = safe1, safe2
    pair_scale = ops.maximum(scale1, scale2)  # [...]
    pairs1 = boxes1 * (scale1 / pair_scale)[..., None]  # [..., 4], factor in (0, 1]
    pairs2 = boxes2 * (scale2 / pair_scale)[..., None]  # [..., 4]
    return pairs1, pairs2, ops.logical_not(ops.logical_and(finite1, finite2))


def _as_box_tensors(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, str]:
    """Both as float tensors of 4 channels in the compute dtype, and the result's dtype.

    Half precision (`float16`, `bfloat16`) is computed in float32: its areas would overflow.
    """
    boxes1 = _as_float_tensor(boxes1)
    boxes2 = ops.cast(_as_float_tensor(boxes2), boxes1.dtype)
    _check_box_channels(boxes1, "boxes1")
    _check_box_channels(boxes2, "boxes2")
    dtype = keras.backend.standardize_dtype(boxes1.dtype)
    compute_dtype = "float32" if dtype in _HALF_DTYPES else dtype
    return ops.cast(boxes1, compute_dtype), ops.cast(boxes2, compute_dtype), dtype


def _safe_xyxy(boxes: Tensor, box_format: str) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes `[..., 4]` made safe: in `"xyxy"`, divided by their scale, non-finite ones zeroed.

    Returns the boxes `[..., 4]`, the mask `[...]` of the finite ones and the scale
    `[...]` they were divided by (`_box_scale`).
    """
    finite = ops.all(ops.isfinite(boxes), axis=-1)  # [...]
    # Non-finite boxes are computed as zeros and their pairs set to NaN in `_finish`:
    # a `where` on the inputs too, so that no NaN reaches the gradients of finite boxes.
    boxes = ops.where(finite[..., None], boxes, 0.0)  # [..., 4]
    scale = _box_scale(boxes)  # [...]
    return to_xyxy(boxes / scale[..., None], box_format), finite, scale


def _box_scale(boxes: Tensor) -> Tensor:
    """A divisor `[B, K]` of the coordinates of each box that keeps areas from overflowing.

    IoU, GIoU, DIoU and CIoU do not change when both boxes of a pair are scaled alike. Coordinates
    up to `2**60` in absolute value give areas up to `2**124`, finite in float32; a box
    with larger coordinates is divided by `max|coordinate| / 2**60`, every other box by
    1 (exactly unchanged, so ordinary boxes give the same values as without scaling).
    The divisor is a constant for the gradient, which stays exact since the ratios do
    not depend on it.
    """
    if 0 in boxes.shape:  # no boxes (Keras's max refuses empty tensors; `initial=` is
        largest = ops.zeros_like(boxes[..., 0])  # a CPU tensor on torch, whatever the device)
    else:
        largest = ops.amax(ops.abs(boxes), axis=-1)  # [B, K]
    return ops.maximum(ops.stop_gradient(largest) * _INVERSE_SAFE_COORDINATE, 1.0)  # [B, K]


def _finish(ratio: Tensor, invalid: Tensor, dtype: str) -> Tensor:
    """`ratio [B, M, N]` with NaN on the pairs that hold a non-finite box, cast to `dtype`."""
    return ops.cast(ops.where(invalid, float("nan"), ratio), dtype)


def _as_float_tensor(x: Tensor) -> Tensor:
    """Converts `x` to a tensor; non-float values are cast to `keras.config.floatx()`."""
    x = ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    return x


def _check_box_channels(boxes: Tensor, name: str) -> None:
    """Raises a `ValueError` unless the last dimension of `boxes` is 4 (or unknown)."""
    if len(boxes.shape) == 0 or boxes.shape[-1] not in (4, None):
        raise ValueError(
            f"Expected `{name}` with a last dimension of 4 (one box). "
            f"Received: {name}.shape={tuple(boxes.shape)}"
        )
