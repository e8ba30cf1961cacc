"""Pieces shared by the solver's phases: normalization and cheap index reductions."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

Tensor = Any


def largest(dtype: Any) -> Tensor:
    """A finite scalar near the largest of `dtype` (float32 or float64), of that dtype."""
    dtype = keras.backend.standardize_dtype(dtype)
    return ops.convert_to_tensor(3.0e38 if dtype == "float32" else 1.0e308, dtype=dtype)


def first_index(hit: Tensor, axis: int = -1) -> Tensor:
    """Index of the first True of `hit` along `axis`, or the axis' size where there is none.

    An integer min-reduction: in XLA loops on CPU it costs about a quarter of `argmin`.
    """
    size = hit.shape[axis]
    shape = [1] * len(hit.shape)
    shape[axis] = size
    ids = ops.reshape(ops.arange(size, dtype="int32"), shape)
    return ops.amin(ops.where(hit, ids, size), axis=axis)


def pick(x: Tensor, index: Tensor) -> Tensor:
    """`x[b, index[b]]` for `x [B, K]` and `index [B]`; 0 where `index` is out of range.

    A masked sum rather than a gather: O(B * K), and cheap inside XLA loops.
    """
    ids = ops.arange(x.shape[1], dtype="int32")
    return ops.sum(ops.where(ops.equal(ids[None, :], index[:, None]), x, 0), axis=1)


def gather(x: Tensor, index: Tensor) -> Tensor:
    """`x[b, index[b, k]]` for `x [B, K]` and in-range `index [B, L]`: a batched gather."""
    return ops.take_along_axis(x, index, axis=1)


def normalize(cost: Tensor, allowed: Tensor) -> Tensor:
    """Shifts each sample's allowed costs to start at 0; forbidden pairs cost more than any total.

    The map `c -> c * s - lo` is affine and increasing (`s` an exact power of two), so it
    keeps the optimal matchings. It does not stretch the costs to a fixed range: an outlier
    must not push the differences of the other costs into denormals, which XLA on CPU
    flushes to zero. `s` shrinks the costs only where `R + 1` times their span could
    overflow, and grows them only where they are all tiny. Forbidden pairs cost
    `(R + 1) * span` (`R + 1` where the span is 0), more than the difference between any
    two totals of allowed pairs, so the optimum first matches the most rows on allowed
    pairs, then has the least cost.

    Args:
        cost: `[B, R, C]` float costs, any values where `allowed` is False.
        allowed: `[B, R, C]` booleans, True where the pair may be matched.

    Returns:
        `[B, R, C]` finite costs in `[0, (R + 1) * span]`.
    """
    rows = cost.shape[1]
    dtype = cost.dtype
    big = largest(dtype)
    hi = ops.amax(ops.where(allowed, cost, -big), axis=(1, 2), keepdims=True)  # [B, 1, 1]
    lo = ops.amin(ops.where(allowed, cost, big), axis=(1, 2), keepdims=True)  # [B, 1, 1]
    some = lo <= hi  # [B, 1, 1]: the sample has an allowed pair
    hi, lo = ops.where(some, hi, 0.0), ops.where(some, lo, 0.0)
    magnitude = ops.maximum(ops.abs(hi), ops.abs(lo))  # [B, 1, 1]
    # After shrinking, (R + 1) spans of at most twice the magnitude stay below 2^-3 * big.
    shrink = 2.0 ** -((4 * (rows + 1)).bit_length() + 3)
    scale = ops.where(
        magnitude > big * shrink, shrink, ops.where(magnitude < 2.0**-60, 2.0**60, 1.0)
    )  # float32 powers of two
    scale = ops.cast(scale, dtype)  # [B, 1, 1]
    lo = lo * scale
    span = hi * scale - lo  # [B, 1, 1], no overflow after scaling
    forbidden = float(rows + 1) * ops.where(span > 0, span, 1.0)
    return ops.where(allowed, cost * scale - lo, forbidden)  # [B, R, C]
