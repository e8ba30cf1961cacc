r"""The layouts of `DETRLoss`'s query axis: denoising groups, and dense one-to-one pairs.

Denoising (RT-DETR's contrastive denoising, DN-DETR before it). With `G` groups and `M`
padded targets, the query axis holds the `G * 2 * M` denoising queries first, then the
`N` queries that are matched:

```
query  g * 2M + i        (g < G, i < M)   positive of target i: reconstructs it
query  g * 2M + M + i                     negative of target i: says "no object"
query  G * 2M + j        (j < N)          matched query j
```

A denoising query of a padding target says "no object". The assignment of the denoising
queries is fixed (no matching); `hungarian_loss.denoising` builds such queries.
"""

from __future__ import annotations

from typing import Any

from keras import ops

Tensor = Any


def num_denoising(groups: int, num_targets: int) -> int:
    """The number of denoising queries, `G * 2 * M`."""
    return groups * 2 * num_targets


def split_queries(y_pred: Tensor, groups: int, num_targets: int) -> tuple[Tensor, Tensor]:
    """`y_pred [P, G * 2M + N, D]` -> the denoising queries and the matched ones.

    Raises:
        ValueError: if the query axis is shorter than `G * 2 * M`.
    """
    count = num_denoising(groups, num_targets)
    if y_pred.shape[1] < count:
        raise ValueError(
            f"Expected `y_pred` with denoising_groups * 2 * M = {groups} * 2 * {num_targets} "
            f"= {count} denoising queries first on its query axis, then the matched queries "
            f"(M = {num_targets}, the padded number of targets of `y_true`). Received: "
            f"y_pred.shape={tuple(y_pred.shape)}"
        )
    return y_pred[:, :count], y_pred[:, count:]


def denoising_targets(y_true: Tensor, target_mask: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """The fixed assignment of the denoising queries.

    Args:
        y_true: Targets `[P, M, D]`.
        target_mask: bool `[P, M]`, True for real targets.
        groups: G.

    Returns:
        `y_true` tiled per group `[P, G * M, D]` (row `g * M + i` is target i) and the
        positive query of each row, int32 `[P, G * M]` (`g * 2M + i`, -1 for padding).
    """
    num_targets = y_true.shape[1]
    group = ops.arange(groups, dtype="int32")[:, None]  # [G, 1]
    target = ops.arange(num_targets, dtype="int32")[None, :]  # [1, M]
    positive = ops.reshape(group * 2 * num_targets + target, (1, -1))  # [1, G * M]
    real = ops.tile(target_mask, (1, groups))  # [P, G * M]
    indices = ops.where(real, positive, -1)  # [P, G * M]
    return ops.tile(y_true, (1, groups, 1)), ops.cast(indices, "int32")


def query_owners(indices: Tensor, num_queries: int) -> Tensor:
    """The target each query is assigned to, from the query of each target.

    Args:
        indices: int32 `[P, M]`, the query of each target, -1 where unmatched (a query
            has at most one target).
        num_queries: Q.

    Returns:
        int32 `[P, Q]`: the target of each query, -1 for a query without one.
    """
    if indices.shape[1] == 0:  # no target: no query has one
        return ops.full((ops.shape(indices)[0], num_queries), -1, dtype="int32")
    hit = ops.equal(indices[:, :, None], ops.arange(num_queries, dtype="int32"))  # [P, M, Q]
    owner = ops.cast(ops.argmax(ops.cast(hit, "int32"), axis=1), "int32")  # [P, Q]
    return ops.where(ops.any(hit, axis=1), owner, -1)


def denoising_owners(real: Tensor, groups: int) -> Tensor:
    """The row of `denoising_targets` that each denoising query reconstructs.

    Args:
        real: bool `[P, M]`, True for real targets.
        groups: G.

    Returns:
        int32 `[P, G * 2M]`: row `g * M + i` (target i of group g) at query `g * 2M + i`
        when target i is real; -1 at the negatives and at the queries of padding targets.
    """
    num_targets = real.shape[1]
    row = ops.reshape(ops.arange(groups * num_targets, dtype="int32"), (groups, num_targets))
    negatives = ops.full((groups, num_targets), -1, dtype="int32")
    layout = ops.reshape(ops.concatenate([row, negatives], axis=1), (1, -1))  # [1, G * 2M]
    real_rows = ops.tile(ops.concatenate([real, ops.zeros_like(real)], axis=1), (1, groups))
    return ops.where(real_rows, layout, -1)  # [P, G * 2M]


def values_at_queries(values: Tensor, owners: Tensor, fill: Any) -> Tensor:
    """`values [P, M]` of each query's target `[P, Q]`, `fill` where a query has none."""
    if values.shape[1] == 0:
        return ops.cast(ops.full(ops.shape(owners), fill), values.dtype)
    picked = ops.take_along_axis(values, ops.maximum(owners, 0), axis=1)  # [P, Q]
    return ops.where(owners >= 0, picked, ops.cast(fill, values.dtype))


def dense_one_to_one(indices: Tensor, num_sets: int, num_queries: int) -> Tensor:
    """DEIM's dense one-to-one pairs: each query's most frequent target over the sets.

    Args:
        indices: int32 `[B * S, M]`, the query matched to each target in each set
            (row `b * S + s`), -1 where unmatched.
        num_sets: S.
        num_queries: N.

    Returns:
        int32 `[B, N]`: for each query, the target it is matched to in the most sets
        (ties: the one of the latest set among them), -1 for a query never matched.
    """
    num_targets = indices.shape[1]
    if num_targets == 0:  # nothing to count (no max over an empty axis)
        return ops.full((ops.shape(indices)[0] // num_sets, num_queries), -1, dtype="int32")
    per_set = ops.reshape(indices, (-1, num_sets, num_targets))  # [B, S, M]
    queries = ops.arange(num_queries, dtype="int32")  # [N]
    hit = ops.equal(per_set[:, :, :, None], queries)  # [B, S, M, N]
    count = ops.sum(ops.cast(hit, "int32"), axis=1)  # [B, M, N]
    order = ops.arange(1, num_sets + 1, dtype="int32")[None, :, None, None]  # [1, S, 1, 1]
    latest = ops.max(ops.where(hit, order, 0), axis=1)  # [B, M, N]: last set + 1, or 0
    score = count * (num_sets + 1) + latest  # [B, M, N]: count first, then the latest set
    best = ops.cast(ops.argmax(score, axis=1), "int32")  # [B, N]
    return ops.where(ops.max(count, axis=1) > 0, best, -1)  # [B, N]
