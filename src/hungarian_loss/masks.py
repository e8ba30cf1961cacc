"""Mask geometry made of `keras.ops`: reading masks at points, and mask costs over points.

The twin of `hungarian_loss.boxes` for segmentation set prediction (MaskFormer,
Mask2Former): masks are compared at points rather than pixel by pixel, so that
predictions and targets of different resolutions meet at the same places and the costs
of every (query, target) pair are matrix products over the points.

Points are normalized `(x, y)` in `[0, 1]`, across and down the image. A mask
`[H, W]` is read at a point bilinearly with the convention of `grid_sample`'s
`align_corners=False`: pixel `(i, j)` covers `[j / W, (j + 1) / W] x [i / H, (i + 1) / H]`
and its value sits at its centre,

```
x = (j + 0.5) / W        y = (i + 0.5) / H
```

and outside the image the mask is 0 (zero padding: a point at `x = 0` reads half of
the first column). A mask at twice the resolution read at the same points gives the
same values where it is the upsampled mask.

- `point_sample` reads masks `[B, M, H, W]` at points shared by the masks of an
  image `[B, P, 2]` or at points of each mask `[B, M, P, 2]`, giving `[B, M, P]`.
- `uniform_points` and `importance_points` draw the points: uniform, or Mask2Former's
  (PointRend's) uncertainty importance sampling from the predicted logits.
- `pairwise_*` give the cost of every pair of a prediction `[B, Q, P]` and a target
  `[B, M, P]`: `[B, Q, M]`, as matrix products over the points (never a
  `[B, Q, M, P]` tensor). `elementwise_*` give the same on the pairs at the same place
  in two tensors of one shape `[..., P]`: `[...]`, what a loss needs on matched pairs.

Predictions are logits; targets are in `[0, 1]` (bool, int or float; soft values
where a target mask was read between pixels). The costs are computed in float32 for
half-precision inputs (`float16`, `bfloat16`: sums over thousands of points overflow
them) and returned in float32; other float dtypes are kept. They are written with
`softplus` and `log_sigmoid`, so that values and gradients are finite for every finite
logit. Nothing here asserts on tensor values, and nothing imports from the rest of the
package.
"""

from __future__ import annotations

import numbers
from typing import Any

import keras
from keras import ops

__all__ = [
    "elementwise_dice",
    "elementwise_sigmoid_bce",
    "elementwise_sigmoid_focal",
    "importance_points",
    "pairwise_dice",
    "pairwise_sigmoid_bce",
    "pairwise_sigmoid_focal",
    "point_sample",
    "uniform_points",
]

Tensor = Any

_HALF_DTYPES = ("float16", "bfloat16")


# ----------------------------------------------------------------------------- points


def point_sample(masks: Tensor, points: Tensor) -> Tensor:
    """Reads masks at normalized points, bilinearly, zeros outside the image.

    With `(x, y)` a point and `u = x * W - 0.5`, `v = y * H - 0.5` its position in
    pixel centres (pixel `(i, j)` has its centre at `u = j`, `v = i`):

    ```
    value = sum over the 4 pixels (i, j) around (v, u) of
            (1 - |v - i|) * (1 - |u - j|) * mask[i, j]      (0 for (i, j) outside the mask)
    ```

    the values of `torch.nn.functional.grid_sample(mask, 2 * points - 1,
    mode="bilinear", padding_mode="zeros", align_corners=False)`. Each value is a gather
    of 4 pixels: no `[P, H * W]` interpolation matrix is built. The gradient flows to
    `masks` (and to `points`, inside each pixel cell).

    Masks of more axes (`[B, S, Q, h, w]`: sets of predictions) are reshaped by the
    caller to `[B, S * Q, h, w]` (with shared points) or `[B * S, Q, h, w]`.

    Args:
        masks: Tensor `[B, M, H, W]` (bool, int or float) with known `H` and `W`.
        points: Float tensor of normalized `(x, y)` points in `[0, 1]`, either
            `[B, P, 2]` (the same points for all masks of an image) or `[B, M, P, 2]`
            (points of each mask). Points outside `[0, 1]` are allowed (they read zeros
            beyond half a pixel out).

    Returns:
        Tensor `[B, M, P]`, of the dtype of float `masks` (computed in float32 for
        half precision), `floatx` for bool and int masks.

    Raises:
        ValueError: if `masks` is not of rank 4 with known `H` and `W`, or `points` is
            not `[B, P, 2]` or `[B, M, P, 2]`.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import point_sample
        >>> masks = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], "float32")  # [1, 1, 2, 2]
        >>> # A pixel centre, the middle, the top edge (half of it the zero padding above)
        >>> # and the bottom-right corner (three quarters of it padding):
        >>> points = np.array([[[0.25, 0.25], [0.5, 0.5], [0.5, 0.0], [1.0, 1.0]]], "float32")
        >>> print(np.round(np.asarray(point_sample(masks, points)), 4))
        [[[0.   1.5  0.25 0.75]]]
    """
    masks = ops.convert_to_tensor(masks)
    points = ops.convert_to_tensor(points)
    shape = tuple(masks.shape)
    if len(shape) != 4 or shape[2] is None or shape[3] is None:
        raise ValueError(
            "Expected `masks` of shape [B, M, H, W] with known H and W. "
            f"Received: masks.shape={shape}"
        )
    points_shape = tuple(points.shape)
    if len(points_shape) not in (3, 4) or points_shape[-1] not in (2, None):
        raise ValueError(
            "Expected `points` of shape [B, P, 2] (shared by the masks of an image) or "
            f"[B, M, P, 2] (points of each mask). Received: points.shape={points_shape}"
        )
    height, width = int(shape[2]), int(shape[3])
    dtype = keras.backend.standardize_dtype(masks.dtype)
    if not keras.backend.is_float_dtype(dtype):
        dtype = keras.config.floatx()
    compute_dtype = "float32" if dtype in _HALF_DTYPES else dtype
    flat = ops.cast(ops.reshape(masks, (*ops.shape(masks)[:2], height * width)), compute_dtype)
    if len(points_shape) == 3:
        points = points[:, None]  # [B, 1, P, 2]
    points = ops.cast(points, compute_dtype)  # [B, M or 1, P, 2]
    u = points[..., 0] * width - 0.5  # [B, M or 1, P], in pixel centres
    v = points[..., 1] * height - 0.5  # [B, M or 1, P]
    u0, v0 = ops.floor(u), ops.floor(v)  # [B, M or 1, P] each
    du, dv = u - u0, v - v0  # [B, M or 1, P] each, in [0, 1)
    column0, row0 = ops.cast(u0, "int32"), ops.cast(v0, "int32")  # [B, M or 1, P] each
    target_shape = (*ops.shape(flat)[:2], ops.shape(points)[2])  # [B, M, P]
    value = None
    for row, row_weight in ((row0, 1.0 - dv), (row0 + 1, dv)):
        for column, column_weight in ((column0, 1.0 - du), (column0 + 1, du)):
            inside = ops.logical_and(
                ops.logical_and(row >= 0, row < height),
                ops.logical_and(column >= 0, column < width),
            )  # [B, M or 1, P]
            index = ops.clip(row, 0, height - 1) * width + ops.clip(column, 0, width - 1)
            index = ops.broadcast_to(index, target_shape)  # [B, M, P]
            pixel = ops.take_along_axis(flat, index, axis=2)  # [B, M, P]
            weight = ops.where(inside, row_weight * column_weight, 0.0)  # [B, M or 1, P]
            term = pixel * weight  # [B, M, P]
            value = term if value is None else value + term
    return ops.cast(value, dtype)


def uniform_points(
    batch_size: int, num_points: int, seed: int | keras.random.SeedGenerator | None = None
) -> Tensor:
    """Draws points uniformly in the image: `(x, y)` in `[0, 1)`.

    Args:
        batch_size: B, an int (or a scalar tensor: `ops.shape(x)[0]`).
        num_points: P, an integer >= 0.
        seed: An int (the same points at each call: reproducible), a
            `keras.random.SeedGenerator` (new points at each call; create it in a
            layer's `__init__` so that Keras tracks its state under `jit_compile`),
            None (Keras's global generator: not usable inside `jax.jit`), or an
            integer tensor of shape `[2]`: a stateless seed computed in the graph (new
            points wherever it changes; what `DETRLoss` uses inside `fit`).

    Returns:
        Float32 tensor `[B, P, 2]`.

    Raises:
        ValueError: if `num_points` is not an integer >= 0 or `seed` is of another type.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import uniform_points
        >>> points = np.asarray(uniform_points(2, 5, seed=0))
        >>> points.shape, bool(np.all((points >= 0.0) & (points < 1.0)))
        ((2, 5, 2), True)
        >>> bool(np.all(points == np.asarray(uniform_points(2, 5, seed=0))))
        True
    """
    num_points = _check_count(num_points, "num_points")
    seed = _keras_seed(seed)
    return keras.random.uniform((batch_size, num_points, 2), dtype="float32", seed=seed)


def importance_points(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    seed: int | keras.random.SeedGenerator | None = None,
) -> Tensor:
    """Draws points of each mask where its prediction is uncertain (PointRend, Mask2Former).

    For each mask: `C = int(oversample_ratio * P)` uniform candidates; the mask's logits
    read there (`point_sample`); of those, the `K = int(importance_ratio * P)` most
    uncertain ones, uncertainty being

    ```
    uncertainty(x) = -|logit(x)|
    ```

    then `P - K` fresh uniform points (coverage of the whole image). The points are
    constants for the gradient (the choice is not differentiable). All the random
    numbers of a call come from one draw (one step of a `SeedGenerator`): the
    candidates are its first `C` points of each mask, the fresh points its last `P - K`.

    Args:
        mask_logits: Float tensor `[B, M, h, w]` of predicted mask logits (known h, w).
        num_points: P, an integer >= 0.
        oversample_ratio: At least 1: candidates drawn per point.
        importance_ratio: In `[0, 1]`: the fraction of the points chosen by uncertainty.
        seed: An int, a `keras.random.SeedGenerator`, None or an integer tensor `[2]`,
            as in `uniform_points`.

    Returns:
        Float32 tensor `[B, M, P, 2]` of points in `[0, 1)`: the `K` chosen candidates
        (in the order they were drawn; among equally uncertain candidates the first
        drawn are chosen), then the `P - K` fresh points.

    Raises:
        ValueError: if an argument is out of its range or `mask_logits` is not of rank 4
            with known h and w.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import importance_points, point_sample
        >>> logits = np.full((1, 1, 8, 8), 10.0, "float32")  # confident everywhere,
        >>> logits[..., 4:] = 0.0  # but on the right half
        >>> points = importance_points(logits, num_points=8, seed=3)
        >>> tuple(points.shape)
        (1, 1, 8, 2)
        >>> bool(np.all(np.asarray(points)[0, 0, :6, 0] > 0.5))  # the 6 chosen: on the right
        True
    """
    num_points = _check_count(num_points, "num_points")
    if not _is_real(oversample_ratio) or not oversample_ratio >= 1.0:
        raise ValueError(
            "Expected `oversample_ratio` to be a number >= 1. "
            f"Received: oversample_ratio={oversample_ratio!r}"
        )
    if not _is_real(importance_ratio) or not 0.0 <= importance_ratio <= 1.0:
        raise ValueError(
            "Expected `importance_ratio` to be a number in [0, 1]. "
            f"Received: importance_ratio={importance_ratio!r}"
        )
    seed = _keras_seed(seed)
    mask_logits = ops.stop_gradient(ops.convert_to_tensor(mask_logits))
    shape = tuple(mask_logits.shape)
    if len(shape) != 4 or shape[2] is None or shape[3] is None:
        raise ValueError(
            "Expected `mask_logits` of shape [B, M, h, w] with known h and w. "
            f"Received: mask_logits.shape={shape}"
        )
    num_candidates = int(oversample_ratio * num_points)
    num_important = min(int(importance_ratio * num_points), num_candidates)
    num_fresh = num_points - num_important
    batch_size, num_masks = ops.shape(mask_logits)[:2]
    draws = keras.random.uniform(
        (batch_size, num_masks, num_candidates + num_fresh, 2), dtype="float32", seed=seed
    )  # [B, M, C + P - K, 2]
    candidates = draws[:, :, :num_candidates]  # [B, M, C, 2]
    fresh = draws[:, :, num_candidates:]  # [B, M, P - K, 2]
    if num_important == 0:
        return ops.stop_gradient(fresh)
    logits = ops.cast(point_sample(mask_logits, candidates), "float32")  # [B, M, C]
    uncertain = ops.reshape(ops.abs(logits), (-1, num_candidates))  # [B * M, C]
    chosen = ops.reshape(
        _smallest(uncertain, num_important), (batch_size, num_masks, num_important)
    )  # [B, M, K]
    chosen = ops.broadcast_to(chosen[..., None], (*ops.shape(chosen), 2))  # [B, M, K, 2]
    important = ops.take_along_axis(candidates, chosen, axis=2)  # [B, M, K, 2]
    return ops.stop_gradient(ops.concatenate([important, fresh], axis=2))


def _smallest(values: Tensor, k: int) -> Tensor:
    """Indices `[R, k]` of the k smallest of each row of `values [R, C]` (float32, >= 0).

    In increasing index order; among equal values the first ones. On JAX and
    TensorFlow, XLA's `TopK` for a k this large sorts each row (2.8 s for the
    Mask2Former benchmark's 1200 rows of 37632 candidates on 2 CPU cores). A
    selection is cheaper: the float32 bits of a value >= 0, read as int32, order like
    the value, so 31 bisection steps over the bit patterns (each a comparison and a
    count per row) find the k-th smallest exactly; the chosen ones are then written
    to their slots (1.1 s in all). torch runs eagerly and its `topk` is a selection
    already (31 eager steps would take 7.8 s): it gives the k-th smallest there. The
    ties at the k-th value are resolved in index order on every backend.
    """
    rows, count = ops.shape(values)[0], values.shape[1]
    bits = ops.view(values, "int32")  # [R, C], ordered like values (NaN last)
    if keras.backend.backend() == "torch":
        kth = -ops.top_k(-values, k=k)[0][:, -1:]  # [R, 1]: the k-th smallest value
        threshold = ops.view(kth, "int32")[:, 0]  # [R]
    else:

        def step(_: Any, bounds: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            low, high = bounds  # invariant: at most k patterns below low, more below high
            middle = low + (high - low) // 2
            fits = ops.sum(ops.cast(bits < middle[:, None], "int32"), axis=1) <= k  # [R]
            return ops.where(fits, middle, low), ops.where(fits, high, middle)

        start = (ops.zeros((rows,), "int32"), ops.full((rows,), 2**31 - 1, "int32"))
        threshold, _ = ops.fori_loop(0, 31, step, start)  # [R]: the k-th smallest pattern
    below = bits < threshold[:, None]  # [R, C]: fewer than k
    tied = bits == threshold[:, None]  # [R, C]
    room = k - ops.sum(ops.cast(below, "int32"), axis=1, keepdims=True)  # [R, 1]
    first_tied = ops.cumsum(ops.cast(tied, "int32"), axis=1) <= room  # [R, C]
    chosen = ops.logical_or(below, ops.logical_and(tied, first_tied))  # [R, C]: k per row
    slot = ops.where(chosen, ops.cumsum(ops.cast(chosen, "int32"), axis=1) - 1, k)  # k: unused
    slot = slot + ops.arange(rows, dtype="int32")[:, None] * (k + 1)  # [R, C], flat
    index = ops.broadcast_to(ops.arange(count, dtype="int32")[None, :], ops.shape(slot))
    flat = ops.scatter_update(
        ops.zeros((rows * (k + 1),), "int32"),
        ops.reshape(slot, (-1, 1)),
        ops.reshape(index, (-1,)),
    )  # [R * (k + 1)]
    return ops.reshape(flat, (rows, k + 1))[:, :k]


# ----------------------------------------------------------------------------- costs


def pairwise_sigmoid_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Sigmoid binary cross-entropy of every (prediction, target) pair, mean over points.

    With `x` the logits of a prediction and `y` a target at the P points:

    ```
    bce(x, y) = (1 / P) sum_p [softplus(x_p) - x_p y_p]
              = (1 / P) sum_p [y_p softplus(-x_p) + (1 - y_p) softplus(x_p)]
    ```

    computed in the second form, two matrix products over the points
    (`[B, Q, P] x [B, P, M]`), whose terms are all >= 0: no cancellation between large
    sums. Mask2Former's matching cost `batch_sigmoid_ce_loss`.

    Args:
        logits: Float tensor `[B, Q, P]` (or `[Q, P]`): predicted mask logits at the points.
        targets: Tensor `[B, M, P]` (or `[M, P]`) in `[0, 1]` (bool, int or float): the
            target masks at the same points.

    Returns:
        Tensor `[B, Q, M]` (or `[Q, M]`) of values >= 0, float32 for half-precision
        logits, else of the logits' dtype.

    Raises:
        ValueError: if the ranks differ or are not 2 or 3, or the numbers of points differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import pairwise_sigmoid_bce
        >>> logits = np.array([[[10.0, -10.0], [0.0, 0.0]]], "float32")  # [1, 2, 2]
        >>> targets = np.array([[[1.0, 0.0], [0.0, 1.0]]], "float32")  # [1, 2, 2]
        >>> print(np.round(np.asarray(pairwise_sigmoid_bce(logits, targets)), 4))
        [[[ 0.     10.    ]
          [ 0.6931  0.6931]]]
    """
    logits, targets = _prepare_pairwise(logits, targets)
    positive = ops.softplus(-logits)  # [B, Q, P]: -log(p)
    negative = ops.softplus(logits)  # [B, Q, P]: -log(1 - p)
    return _mean_of_products(positive, negative, targets)


def pairwise_sigmoid_focal(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss (Lin et al., 2017) of every pair, mean over points (MaskFormer).

    With `p = sigmoid(x)` at the P points:

    ```
    pos_p = alpha       (1 - p_p)^gamma  softplus(-x_p)      (-log p, weighted)
    neg_p = (1 - alpha) p_p^gamma        softplus(x_p)       (-log(1 - p), weighted)
    focal(x, y) = (1 / P) sum_p [pos_p y_p + neg_p (1 - y_p)]
    ```

    two matrix products over the points: MaskFormer's matching cost
    (`batch_sigmoid_focal_loss`). It is linear in `y`: for binary targets it equals
    `elementwise_sigmoid_focal` on each pair; for soft targets it interpolates the
    binary values. The powers are taken as `exp(gamma * log_sigmoid(.))`, finite with
    finite gradients for every logit and every `gamma >= 0`.

    Args:
        logits: Float tensor `[B, Q, P]` (or `[Q, P]`): predicted mask logits at the points.
        targets: Tensor `[B, M, P]` (or `[M, P]`) in `[0, 1]`: the target masks there.
        alpha: Weight of the positive term, in `[0, 1]`.
        gamma: Focusing exponent, >= 0.

    Returns:
        Tensor `[B, Q, M]` (or `[Q, M]`) of values >= 0, float32 for half-precision
        logits, else of the logits' dtype.

    Raises:
        ValueError: if `alpha` or `gamma` is out of range, the ranks differ or are not
            2 or 3, or the numbers of points differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import pairwise_sigmoid_focal
        >>> logits = np.array([[[0.0, 0.0]]], "float32")  # p = 0.5 at both points
        >>> targets = np.array([[[1.0, 1.0], [0.0, 0.0]]], "float32")
        >>> print(np.round(np.asarray(pairwise_sigmoid_focal(logits, targets)), 4))
        [[[0.0433 0.13  ]]]
    """
    alpha, gamma = _check_focal(alpha, gamma)
    logits, targets = _prepare_pairwise(logits, targets)
    log_p, log_q = ops.log_sigmoid(logits), ops.log_sigmoid(-logits)  # [B, Q, P] each
    positive = alpha * ops.exp(gamma * log_q) * -log_p  # [B, Q, P]
    negative = (1.0 - alpha) * ops.exp(gamma * log_p) * -log_q  # [B, Q, P]
    return _mean_of_products(positive, negative, targets)


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every (prediction, target) pair, over the points (MaskFormer, Mask2Former).

    With `p = sigmoid(x)` at the P points:

    ```
    dice(x, y) = 1 - (2 sum_p p_p y_p + 1) / (sum_p p_p + sum_p y_p + 1)
    ```

    the `+ 1` smoothing makes an empty target against an empty prediction 0 and keeps
    the denominator >= 1. One matrix product over the points.

    Args:
        logits: Float tensor `[B, Q, P]` (or `[Q, P]`): predicted mask logits at the points.
        targets: Tensor `[B, M, P]` (or `[M, P]`) in `[0, 1]`: the target masks there.

    Returns:
        Tensor `[B, Q, M]` (or `[Q, M]`) of values in `[0, 1)`, float32 for
        half-precision logits, else of the logits' dtype.

    Raises:
        ValueError: if the ranks differ or are not 2 or 3, or the numbers of points differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import pairwise_dice
        >>> logits = np.array([[[20.0, 20.0, -20.0, -20.0]]], "float32")  # [1, 1, 4]
        >>> targets = np.array([[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]], "float32")
        >>> print(np.round(np.asarray(pairwise_dice(logits, targets)), 4))  # 0, 1 - 3/4, 1 - 1/3
        [[[0.     0.25   0.6667]]]
    """
    logits, targets = _prepare_pairwise(logits, targets)
    probabilities = ops.sigmoid(logits)  # [B, Q, P]
    overlap = ops.matmul(probabilities, ops.swapaxes(targets, -1, -2))  # [B, Q, M]
    total = ops.sum(probabilities, axis=-1)[..., :, None] + ops.sum(targets, axis=-1)[..., None, :]
    return 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)  # [B, Q, M]


def elementwise_sigmoid_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Sigmoid binary cross-entropy of matched pairs, mean over the points.

    The values of `pairwise_sigmoid_bce` on the pairs `(logits[..., :], targets[..., :])`
    at the same place only, without the matrix:

    ```
    bce(x, y) = (1 / P) sum_p [y_p softplus(-x_p) + (1 - y_p) softplus(x_p)]
    ```

    Args:
        logits: Float tensor `[..., P]`: predicted mask logits at the points.
        targets: Tensor of the same shape in `[0, 1]`: the matched targets there.

    Returns:
        Tensor `[...]` of values >= 0, float32 for half-precision logits, else of the
        logits' dtype.

    Raises:
        ValueError: if the shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import elementwise_sigmoid_bce
        >>> logits = np.array([[10.0, -10.0], [0.0, 0.0]], "float32")
        >>> targets = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
        >>> print(np.round(np.asarray(elementwise_sigmoid_bce(logits, targets)), 4))
        [0.     0.6931]
    """
    logits, targets = _prepare_elementwise(logits, targets)
    loss = targets * ops.softplus(-logits) + (1.0 - targets) * ops.softplus(logits)  # [..., P]
    return ops.mean(loss, axis=-1)


def elementwise_sigmoid_focal(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss of matched pairs, mean over the points (MaskFormer's criterion).

    With `p = sigmoid(x)` at the P points, as MaskFormer's `sigmoid_focal_loss`:

    ```
    ce_p      = y_p softplus(-x_p) + (1 - y_p) softplus(x_p)
    1 - pt_p  = p_p (1 - y_p) + (1 - p_p) y_p
    alpha_t_p = alpha y_p + (1 - alpha) (1 - y_p)
    focal(x, y) = (1 / P) sum_p alpha_t_p (1 - pt_p)^gamma ce_p
    ```

    For binary targets these are the values of `pairwise_sigmoid_focal` on the pairs;
    for soft targets (masks read between pixels) they follow MaskFormer's criterion,
    which is not linear in `y`. Where `1 - pt` is 0 the factor is 0 with gradient 0
    (1 for `gamma = 0`), so gradients stay finite for every `gamma >= 0`.

    Args:
        logits: Float tensor `[..., P]`: predicted mask logits at the points.
        targets: Tensor of the same shape in `[0, 1]`: the matched targets there.
        alpha: Weight of the positive term, in `[0, 1]`.
        gamma: Focusing exponent, >= 0.

    Returns:
        Tensor `[...]` of values >= 0, float32 for half-precision logits, else of the
        logits' dtype.

    Raises:
        ValueError: if `alpha` or `gamma` is out of range, or the shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import elementwise_sigmoid_focal
        >>> logits = np.array([[0.0, 0.0], [0.0, 0.0]], "float32")
        >>> targets = np.array([[1.0, 1.0], [0.0, 0.0]], "float32")
        >>> print(np.round(np.asarray(elementwise_sigmoid_focal(logits, targets)), 4))
        [0.0433 0.13  ]
    """
    alpha, gamma = _check_focal(alpha, gamma)
    logits, targets = _prepare_elementwise(logits, targets)
    ce = targets * ops.softplus(-logits) + (1.0 - targets) * ops.softplus(logits)  # [..., P]
    p, q = ops.sigmoid(logits), ops.sigmoid(-logits)  # [..., P] each, q = 1 - p
    miss = p * (1.0 - targets) + q * targets  # [..., P]: 1 - p_t, >= 0 with no cancellation
    if gamma == 0.0:
        modulation = ops.ones_like(miss)
    else:
        positive = miss > 0.0  # [..., P]
        safe = ops.where(positive, miss, 1.0)  # [..., P]
        modulation = ops.where(positive, ops.power(safe, gamma), 0.0)  # [..., P]
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)  # [..., P]
    return ops.mean(alpha_t * modulation * ce, axis=-1)


def elementwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of matched pairs, over the points (MaskFormer's and Mask2Former's criterion).

    The values of `pairwise_dice` on the pairs at the same place only:

    ```
    dice(x, y) = 1 - (2 sum_p p_p y_p + 1) / (sum_p p_p + sum_p y_p + 1),   p = sigmoid(x)
    ```

    Args:
        logits: Float tensor `[..., P]`: predicted mask logits at the points.
        targets: Tensor of the same shape in `[0, 1]`: the matched targets there.

    Returns:
        Tensor `[...]` of values in `[0, 1)`, float32 for half-precision logits, else of
        the logits' dtype.

    Raises:
        ValueError: if the shapes differ.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss.masks import elementwise_dice
        >>> logits = np.array([[20.0, 20.0, -20.0, -20.0]] * 2, "float32")
        >>> targets = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], "float32")
        >>> print(np.round(np.asarray(elementwise_dice(logits, targets)), 4))
        [0.   0.25]
    """
    logits, targets = _prepare_elementwise(logits, targets)
    probabilities = ops.sigmoid(logits)  # [..., P]
    overlap = ops.sum(probabilities * targets, axis=-1)  # [...]
    total = ops.sum(probabilities, axis=-1) + ops.sum(targets, axis=-1)  # [...]
    return 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)


# ----------------------------------------------------------------------------- helpers


def _mean_of_products(positive: Tensor, negative: Tensor, targets: Tensor) -> Tensor:
    """`(positive @ y^T + negative @ (1 - y)^T) / P`: `[B, Q, P]` twice and `[B, M, P]` in.

    Returns `[B, Q, M]` (P = 0 gives zeros).
    """
    targets_t = ops.swapaxes(targets, -1, -2)  # [B, P, M]
    total = ops.matmul(positive, targets_t) + ops.matmul(negative, 1.0 - targets_t)  # [B, Q, M]
    num_points = ops.cast(ops.shape(targets)[-1], total.dtype)
    return total / ops.maximum(num_points, 1.0)


def _prepare_pairwise(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Checks `[B, Q, P]` and `[B, M, P]` (or unbatched); both in the compute dtype."""
    logits, targets = _as_compute_tensors(logits, targets)
    shape1, shape2 = tuple(logits.shape), tuple(targets.shape)
    if (
        len(shape1) not in (2, 3)
        or len(shape1) != len(shape2)
        or (None not in (shape1[-1], shape2[-1]) and shape1[-1] != shape2[-1])
    ):
        raise ValueError(
            "Expected `logits` [B, Q, P] and `targets` [B, M, P] (or [Q, P] and [M, P]), "
            f"the same P points. Received: logits.shape={shape1}, targets.shape={shape2}"
        )
    return logits, targets


def _prepare_elementwise(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Checks that `logits` and `targets` are of one shape `[..., P]`; both in the compute dtype."""
    logits, targets = _as_compute_tensors(logits, targets)
    shape1, shape2 = tuple(logits.shape), tuple(targets.shape)
    if (
        len(shape1) == 0
        or len(shape1) != len(shape2)
        or not all(a is None or b is None or a == b for a, b in zip(shape1, shape2, strict=True))
    ):
        raise ValueError(
            "Expected `logits` and `targets` of the same shape [..., P] (one pair per "
            f"row). Received: logits.shape={shape1}, targets.shape={shape2}"
        )
    return logits, targets


def _as_compute_tensors(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and targets as tensors of the compute dtype (float32 for half precision)."""
    logits = ops.convert_to_tensor(logits)
    dtype = keras.backend.standardize_dtype(logits.dtype)
    if not keras.backend.is_float_dtype(dtype):
        dtype = keras.config.floatx()
    compute_dtype = "float32" if dtype in _HALF_DTYPES else dtype
    return ops.cast(logits, compute_dtype), ops.cast(targets, compute_dtype)


def _check_focal(alpha: Any, gamma: Any) -> tuple[float, float]:
    """Raises a `ValueError` unless `alpha` is in `[0, 1]` and `gamma >= 0`; returns floats."""
    if not _is_real(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Expected `alpha` to be a number in [0, 1]. Received: alpha={alpha!r}")
    if not _is_real(gamma) or not 0.0 <= gamma < float("inf"):
        raise ValueError(f"Expected `gamma` to be a finite number >= 0. Received: gamma={gamma!r}")
    return float(alpha), float(gamma)


def _keras_seed(seed: Any) -> Any:
    """`seed` as `keras.random` takes it: a tensor seed `[2]` becomes a `_TensorSeed`.

    Raises a `ValueError` unless `seed` is an int, a `SeedGenerator`, None, or an integer
    tensor of shape `[2]`.
    """
    if (
        seed is None
        or isinstance(seed, keras.random.SeedGenerator)
        or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool))
    ):
        return seed
    if hasattr(seed, "shape") and hasattr(seed, "dtype"):
        dtype = keras.backend.standardize_dtype(seed.dtype)
        if tuple(seed.shape) == (2,) and "int" in dtype:
            return _TensorSeed(seed)
    raise ValueError(
        "Expected `seed` to be an int, a `keras.random.SeedGenerator`, None, or an integer "
        f"tensor of shape [2]. Received: seed={seed!r}"
    )


class _TensorSeed(keras.random.SeedGenerator):
    """A seed computed in the graph (an integer tensor `[2]`), for `keras.random`.

    `keras.random`'s functions take an int or a `SeedGenerator`, and draw from a
    generator with `next()`: this one returns the tensor it holds and has no state, so
    it works inside a compiled function on every backend (JAX's stateless training
    step included), where a stateful generator that no model tracks would repeat
    itself. It makes no variable: `SeedGenerator.__init__` is not called.
    """

    def __init__(self, value: Tensor) -> None:
        dtype = "uint32" if keras.backend.backend() == "jax" else "int32"
        self._value = ops.cast(value, dtype)

    def next(self, ordered: bool = True) -> Tensor:
        """The seed tensor `[2]`, the same at every call."""
        del ordered
        return self._value


def _check_count(value: Any, name: str) -> int:
    """Raises a `ValueError` unless `value` is an integer >= 0; returns it as an int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Expected `{name}` to be an integer >= 0. Received: {name}={value!r}")
    return int(value)


def _is_real(value: Any) -> bool:
    """Whether `value` is a real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
