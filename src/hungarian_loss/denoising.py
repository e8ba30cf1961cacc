r"""Contrastive denoising queries (RT-DETR, D-FINE, DEIM), built in the graph.

RT-DETR (Zhao et al., 2024), after DINO (Zhang et al., 2023), gives its decoder, next to
the N queries that the matching assigns, noised copies of the ground truth: a *positive*
copy of each target, jittered a little, that must find its target again, and a
*negative* copy, jittered more, that must say "no object". Their assignment is fixed, so
they need no matching; they speed up and steady the training of the matched queries.

`contrastive_denoising` builds these queries from padded targets `y_true [B, M, 5]` with
static shapes (G groups and M targets fix them, whatever each image holds), as
`DETRLoss(denoising_groups=G)` reads them back. The layout of the query axis:

```
query               what it is
g*2M + i            group g's positive of target i   (0 <= g < G, 0 <= i < M)
g*2M + M + i        group g's negative of target i
2GM + j             the j-th matched query            (0 <= j < N)
```

Every denoising query of a padding target is a "no object" query (`valid` False).
Nothing here imports from the rest of the package but `boxes`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import keras
from keras import ops

from hungarian_loss import boxes as box_lib
from hungarian_loss.masks import _check_count, _is_real  # the same argument checks

__all__ = ["DenoisingQueries", "contrastive_denoising", "denoising_attention_mask"]

Tensor = Any

_RANDOM_CHANNELS = 10  # per query: 4 magnitudes, 4 signs, 1 flip draw, 1 class draw


class DenoisingQueries(NamedTuple):
    """The denoising queries of a batch, as `contrastive_denoising` returns them.

    The four fields are tensors (the tuple passes through `jax.jit` and `tf.function`
    as they do); the layout numbers are properties, read from their static shapes.
    `Q_dn = G * 2 * M` is the number of denoising queries and `N` the number of
    matched queries.

    Attributes:
        labels: int32 `[B, Q_dn]`: the noised class id of each denoising query, in
            `[0, num_classes)`; `num_classes` for the queries of padding targets, so an
            embedding table with `num_classes + 1` rows takes every label.
        boxes: `[B, Q_dn, 4]`: the noised boxes, in `box_format`, in `[0, 1]`; all
            zeros for the queries of padding targets.
        valid: bool `[B, Q_dn]`: True for the queries of real targets.
        attention_mask: bool `[Q_dn + N, Q_dn + N]`: which query may attend to which,
            in Keras's convention (True: may attend), see `denoising_attention_mask`.
    """

    labels: Tensor
    boxes: Tensor
    valid: Tensor
    attention_mask: Tensor

    @property
    def num_denoising(self) -> int:
        """The number of denoising queries, `G * 2 * M`: the first queries of the axis."""
        return int(self.labels.shape[-1])

    @property
    def num_queries(self) -> int:
        """All queries of the decoder, `G * 2 * M + N`."""
        return int(self.attention_mask.shape[-1])

    @property
    def num_matched(self) -> int:
        """The number of matched queries `N`, which follow the denoising ones."""
        return self.num_queries - self.num_denoising


def denoising_attention_mask(num_groups: int, num_targets: int, num_queries: int) -> Tensor:
    r"""The decoder's self-attention mask for denoising queries followed by matched ones.

    With `Q_dn = 2 * G * M` denoising queries first and `N` matched queries after them,
    query `i` may attend to query `j` when

    ```
    mask[i, j] = (j >= Q_dn) or (i < Q_dn and j < Q_dn and i // 2M == j // 2M)
    ```

    that is: the matched queries see only each other (they never learn from the
    ground truth that the denoising queries carry, so the model works without them at
    inference); a denoising query sees its own group and the matched queries, not the
    other groups (each group is an independent noising of the targets). This is
    RT-DETR's mask, in Keras's convention: True means "may attend", as
    `keras.layers.MultiHeadAttention`'s `attention_mask` (RT-DETR's PyTorch mask is
    the opposite, True where attention is blocked).

    Args:
        num_groups: G, the number of denoising groups (0 for none).
        num_targets: M, the padded number of targets per image (0 for none).
        num_queries: N, the number of matched queries.

    Returns:
        bool tensor `[Q_dn + N, Q_dn + N]`; all True (`[N, N]`) when `G * M == 0`.
        Pass it as `attention_mask` to `keras.layers.MultiHeadAttention`: it broadcasts
        over the batch and the heads.

    Raises:
        ValueError: if an argument is not a non-negative integer.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.denoising import denoising_attention_mask
        >>> mask = denoising_attention_mask(num_groups=2, num_targets=1, num_queries=2)
        >>> print(np.asarray(mask).astype("int32"))
        [[1 1 0 0 1 1]
         [1 1 0 0 1 1]
         [0 0 1 1 1 1]
         [0 0 1 1 1 1]
         [0 0 0 0 1 1]
         [0 0 0 0 1 1]]
    """
    num_groups = _check_count(num_groups, "num_groups")
    num_targets = _check_count(num_targets, "num_targets")
    num_queries = _check_count(num_queries, "num_queries")
    num_denoising = 2 * num_groups * num_targets
    total = num_denoising + num_queries
    if num_denoising == 0:
        return ops.ones((total, total), dtype="bool")
    index = ops.arange(total, dtype="int32")  # [Q]
    is_matched = ops.greater_equal(index, num_denoising)  # [Q]
    # The matched queries form one more group, G, of their own.
    group = ops.where(is_matched, num_groups, ops.floor_divide(index, 2 * num_targets))  # [Q]
    same_group = ops.equal(group[:, None], group[None, :])  # [Q, Q]
    return ops.logical_or(same_group, is_matched[None, :])


def contrastive_denoising(
    y_true: Tensor,
    num_classes: int,
    num_groups: int,
    num_queries: int,
    *,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    box_format: str = "center_xywh",
    padding_value: float | None = -1.0,
    seed: int | keras.random.SeedGenerator | None = None,
) -> DenoisingQueries:
    r"""Builds RT-DETR's contrastive denoising queries from padded targets, in the graph.

    Each of the G groups holds a positive and a negative copy of each of the M
    targets (positives first, see the module's layout), noised independently. For a
    target box with corners `(x1, y1, x2, y2)`, width `w` and height `h`, each corner
    coordinate moves by a random fraction of half the box's side:

    ```
    x1' = x1 + s * u * (w / 2) * box_noise_scale        (likewise x2' with w, y1', y2' with h)
    s ~ uniform{-1, +1}
    u ~ U[0, 1)   for positives  (|shift| < half the box noise scale)
    u ~ U[1, 2)   for negatives  (half the box noise scale <= |shift| < the whole)
    ```

    each draw independent per query and coordinate; the corners are then clipped to
    `[0, 1]` and put back in order (a negative's corners may cross: RT-DETR takes the
    absolute value of the width and height, which is the same). Each label is replaced
    by a class drawn uniformly from `[0, num_classes)` (possibly its own) with
    probability `label_noise_ratio / 2`, for positives and negatives alike:

    ```
    P(label replaced) = label_noise_ratio / 2
    P(label changed)  = label_noise_ratio / 2 * (num_classes - 1) / num_classes
    ```

    This is RT-DETR's definition (its `label_noise_ratio` with the same default, 0.5,
    replaces a quarter of the labels), so the values of RT-DETR's, D-FINE's and DEIM's
    configurations carry over unchanged. RT-DETR's defaults are `num_denoising=100`
    queries split into `100 // M_max` groups; here the number of groups is fixed, so the
    shapes are static: with `G` groups and `M` padded targets there are always
    `G * 2 * M` denoising queries.

    The boxes come out in `[0, 1]` in `box_format` (targets must be normalized by the
    image size); a model usually feeds them through an inverse sigmoid and embeds the
    labels with a table of `num_classes + 1` rows (the last for padding targets).

    Args:
        y_true: Padded targets `[B, M, 5]`: a box (in `box_format`, normalized to
            `[0, 1]`) and a class id; rows whose every value equals `padding_value` are
            padding. M must be known (static); B may be unknown.
        num_classes: K, the number of classes (ids in `[0, K)`; ids outside are
            clipped into it, as `DETRLoss` does).
        num_groups: G, the number of denoising groups (0: no denoising queries).
        num_queries: N, the number of matched queries that follow the denoising
            queries (it sizes the attention mask).
        label_noise_ratio: In `[0, 1]`: twice the probability that a label is
            replaced by a uniformly random class (RT-DETR's parameter, see above).
        box_noise_scale: Non-negative scale of the box noise (RT-DETR's
            `box_noise_scale`, default 1.0; 0 leaves the boxes as they are, clipped).
        box_format: The format of the boxes of `y_true` and of the returned boxes,
            one of `hungarian_loss.boxes.BOX_FORMATS`.
        padding_value: The value that fills padding rows of `y_true` (`NaN`: rows of
            NaN), or `None` when every row is a target.
        seed: An int (the same noise at each call: reproducible), a
            `keras.random.SeedGenerator` (new noise at each call, as a Keras layer's
            dropout: create it in the layer's `__init__` so that Keras tracks its
            state under `jit_compile`), or None (Keras's global generator: not usable
            inside `jax.jit`).

    Returns:
        A `DenoisingQueries`: `labels` int32 `[B, Q_dn]`, `boxes` `[B, Q_dn, 4]`
        (the dtype of `y_true`, or `floatx` for integers), `valid` bool `[B, Q_dn]`
        and `attention_mask` bool `[Q_dn + N, Q_dn + N]`, with `Q_dn = G * 2 * M`,
        and the layout numbers `num_denoising`, `num_matched`, `num_queries`. With
        `G * M == 0` the first three are empty and the mask is all True `[N, N]`.

    Raises:
        ValueError: if an argument is out of its range, `y_true` is not `[B, M, 5]` or
            M is unknown.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.denoising import contrastive_denoising
        >>> y_true = np.array(  # one image: a box of class 2, then a padding row
        ...     [[[0.5, 0.5, 0.2, 0.4, 2.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]], "float32"
        ... )
        >>> dn = contrastive_denoising(
        ...     y_true, num_classes=3, num_groups=2, num_queries=4,
        ...     label_noise_ratio=0.0, seed=1,
        ... )
        >>> dn.num_denoising, dn.num_queries, tuple(dn.boxes.shape)
        (8, 12, (1, 8, 4))
        >>> print(np.asarray(dn.labels))  # positives 0, 1 then negatives 2, 3 of group 0
        [[2 3 2 3 2 3 2 3]]
        >>> print(np.asarray(dn.valid))
        [[ True False  True False  True False  True False]]
        >>> shift = np.abs(np.asarray(dn.boxes)[0, 0, :2] - [0.5, 0.5])  # a positive
        >>> bool(np.all(shift < [0.1, 0.2]))  # its center moves by less than w/2, h/2
        True
    """
    num_classes = _check_count(num_classes, "num_classes")
    if num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be at least 1. Received: {num_classes=}")
    num_groups = _check_count(num_groups, "num_groups")
    num_queries = _check_count(num_queries, "num_queries")
    if not _is_real(label_noise_ratio) or not 0.0 <= label_noise_ratio <= 1.0:
        raise ValueError(
            "Expected `label_noise_ratio` to be a number in [0, 1]. "
            f"Received: label_noise_ratio={label_noise_ratio!r}"
        )
    if not _is_real(box_noise_scale) or not 0.0 <= box_noise_scale < math.inf:
        raise ValueError(
            "Expected `box_noise_scale` to be a finite number >= 0. "
            f"Received: box_noise_scale={box_noise_scale!r}"
        )
    box_format = box_lib.standardize_box_format(box_format)
    if padding_value is not None and not _is_real(padding_value):
        raise ValueError(
            f"Expected `padding_value` to be a number or None. Received: {padding_value=}"
        )
    if not (
        seed is None
        or isinstance(seed, keras.random.SeedGenerator)
        or (isinstance(seed, int) and not isinstance(seed, bool))
    ):
        raise ValueError(
            "Expected `seed` to be an int, a `keras.random.SeedGenerator` or None. "
            f"Received: seed={seed!r}"
        )
    y_true = _as_float_tensor(y_true)
    num_targets = _check_targets(y_true)
    num_denoising = 2 * num_groups * num_targets
    dtype = keras.backend.standardize_dtype(y_true.dtype)
    attention_mask = denoising_attention_mask(num_groups, num_targets, num_queries)

    # Query q of the layout copies target q % M: tiling the targets 2G times lays them out.
    targets = ops.tile(y_true, [1, 2 * num_groups, 1])  # [B, Q_dn, 5]
    valid = ops.tile(_target_mask(y_true, padding_value), [1, 2 * num_groups])  # [B, Q_dn]
    if num_denoising == 0:  # no noise to draw; the seed generator is left as it is
        empty_labels = ops.zeros_like(targets[:, :, 0], dtype="int32")  # [B, 0]
        return DenoisingQueries(empty_labels, targets[:, :, :4], valid, attention_mask)

    compute_dtype = "float32" if dtype in ("float16", "bfloat16") else dtype
    batch_size = ops.shape(y_true)[0]
    # One draw per call (one step of a SeedGenerator), every random number of the call.
    draws = keras.random.uniform(
        (batch_size, num_denoising, _RANDOM_CHANNELS), dtype=compute_dtype, seed=seed
    )  # [B, Q_dn, 10]
    query = ops.arange(num_denoising, dtype="int32")  # [Q_dn]
    negative = ops.equal(ops.mod(ops.floor_divide(query, num_targets), 2), 1)  # [Q_dn]
    boxes = _noised_boxes(
        targets[:, :, :4], draws[:, :, :8], valid, negative, box_noise_scale, box_format
    )
    labels = _noised_labels(
        targets[:, :, 4], draws[:, :, 8:], valid, num_classes, label_noise_ratio
    )
    return DenoisingQueries(labels, ops.cast(boxes, dtype), valid, attention_mask)


def _noised_boxes(
    boxes: Tensor, draws: Tensor, valid: Tensor, negative: Tensor, scale: float, box_format: str
) -> Tensor:
    """The boxes `[B, Q_dn, 4]` moved corner by corner (see `contrastive_denoising`).

    `draws [B, Q_dn, 8]` are uniform in `[0, 1)`: 4 magnitudes, then 4 signs;
    `negative [Q_dn]` says which queries take the larger noise.
    """
    compute_dtype = keras.backend.standardize_dtype(draws.dtype)
    corners = box_lib.to_xyxy(ops.cast(boxes, compute_dtype), box_format)  # [B, Q_dn, 4]
    half_size = 0.5 * (corners[:, :, 2:] - corners[:, :, :2])  # [B, Q_dn, 2]
    half_size = ops.concatenate([half_size, half_size], axis=-1) * scale  # [B, Q_dn, 4]
    magnitude = draws[:, :, :4] + ops.cast(negative, compute_dtype)[None, :, None]  # [0,1)|[1,2)
    sign = ops.where(draws[:, :, 4:8] < 0.5, -1.0, 1.0)  # [B, Q_dn, 4]
    moved = ops.clip(corners + ops.cast(sign, compute_dtype) * magnitude * half_size, 0.0, 1.0)
    low = ops.minimum(moved[:, :, :2], moved[:, :, 2:])  # [B, Q_dn, 2]
    high = ops.maximum(moved[:, :, :2], moved[:, :, 2:])  # [B, Q_dn, 2]
    moved = ops.concatenate([low, high], axis=-1)  # [B, Q_dn, 4]
    moved = ops.where(valid[:, :, None], moved, ops.zeros_like(moved))
    return box_lib.convert_format(moved, "xyxy", box_format)


def _noised_labels(
    classes: Tensor, draws: Tensor, valid: Tensor, num_classes: int, ratio: float
) -> Tensor:
    """The class ids `[B, Q_dn]`, a random class at rate `ratio / 2`, K for padding."""
    classes = ops.clip(ops.cast(ops.round(classes), "int32"), 0, num_classes - 1)  # [B, Q_dn]
    replaced = ops.less(draws[:, :, 0], 0.5 * ratio)  # [B, Q_dn]
    random_classes = ops.cast(ops.floor(draws[:, :, 1] * num_classes), "int32")
    random_classes = ops.minimum(random_classes, num_classes - 1)  # [B, Q_dn]
    labels = ops.where(replaced, random_classes, classes)
    return ops.where(valid, labels, num_classes)


def _target_mask(y_true: Tensor, padding_value: float | None) -> Tensor:
    """The mask `[B, M]` of bool: True for real targets (as `HungarianLoss.target_mask`)."""
    if padding_value is None:
        return ops.ones_like(y_true[:, :, 0], dtype="bool")
    if math.isnan(padding_value):
        return ops.logical_not(ops.all(ops.isnan(y_true), axis=2))
    return ops.logical_not(ops.all(ops.equal(y_true, padding_value), axis=2))


def _check_targets(y_true: Tensor) -> int:
    """Checks that `y_true` is `[B, M, 5]` with a known M; returns M."""
    shape = tuple(y_true.shape)
    if len(shape) != 3 or shape[2] not in (5, None) or shape[1] is None:
        raise ValueError(
            "Expected `y_true` of shape [B, M, 5] (box, class id) with a known M "
            f"(pad the targets to a fixed M). Received: y_true.shape={shape}"
        )
    return int(shape[1])


def _as_float_tensor(x: Tensor) -> Tensor:
    """Converts `x` to a tensor; non-float values are cast to `keras.config.floatx()`."""
    x = ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    return x
