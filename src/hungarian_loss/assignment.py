"""Batched, exact linear sum assignment made of `keras.ops`.

Cost matrices in, integer indices out. Nothing here knows about losses or boxes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

__all__ = ["linear_sum_assignment"]

Tensor = Any


def linear_sum_assignment(
    cost: Tensor,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
) -> Tensor:
    r"""Solves a batch of linear sum assignment problems exactly.

    For each sample `b` of the batch, with rows `i` and columns `j` restricted to the
    valid ones (`row_mask`, `col_mask`) and to allowed pairs (finite `cost[b, i, j]`),
    finds the one-to-one matching `x[i, j] in {0, 1}` that

    ```
    1. matches as many rows as possible, then
    2. minimizes   sum_ij cost[b, i, j] * x[i, j]
       subject to  sum_j x[i, j] <= 1,  sum_i x[i, j] <= 1,  x[i, j] = 0 where forbidden.
    ```

    With finite costs and no masks, `min(M, N)` rows are matched and the total cost
    equals `scipy.optimize.linear_sum_assignment`'s (up to float32 rounding).

    Algorithm: shortest augmenting paths with dual potentials (the Jonker-Volgenant
    family, as in SciPy's solver after Crouse, 2016), run for every sample of the
    batch in lock-step, each with its own state and "done" mask:

    - If `M > N` the problem is transposed, so rows `R = min(M, N)` are inserted
      into columns `C = max(M, N)`.
    - Each sample's allowed costs are shifted and scaled to `[0, 1]`; forbidden pairs
      and padded columns get the cost `R + 1`, above any total of allowed pairs, so the
      optimum first matches the most rows on allowed pairs, then has the least cost.
      Rows with no allowed pair are skipped: they can never be matched.
    - Initialization: every row takes the column of its smallest cost where that
      column is not taken by an earlier row (row reduction, `u_i = min_j c_ij`).
    - Each remaining row is inserted by a Dijkstra search for the shortest
      augmenting path in reduced costs `c_ij - u_i - v_j >= 0`, one column scanned
      per loop step; then the column duals are updated and the path is walked back,
      one row moved onto its new column per loop step (the first move shares the
      step that found the path).

    One loop step costs `O(B * C)`: working memory beyond the cost matrix is
    `O(B * (R + C))`. When `k - 1` rows are matched, the search for the `k`-th row
    takes at most `k` steps (each step scans a new column, and at most `k - 1`
    scanned columns are taken) and its path holds at most `k` rows, so the row takes
    at most `2k - 1` loop steps and a sample at most `R^2`; that bound is the loop's
    `maximum_iterations`. Time is `O(R^2 * C)` per sample in the worst case, far
    less on typical inputs, where most rows are placed by the initialization.

    Costs are compared in float32 (float64 for float64 input); under XLA on CPU,
    denormal costs count as 0.

    No gradient flows through the result (it is integer); pass a cost under
    `stop_gradient`. Works eagerly and compiled (`tf.function(jit_compile=True)`,
    `jax.jit`) with static `M`, `N` and any batch size, known or not.

    Args:
        cost: Float tensor `[B, M, N]`, or a single matrix `[M, N]`. Non-finite
            entries (`inf`, `-inf`, `NaN`) are forbidden pairs, never matched.
        row_mask: Optional boolean tensor `[B, M]` (`[M]` for a single matrix);
            `True` marks a real row, `False` padding that is never matched.
        col_mask: Optional boolean tensor `[B, N]` (`[N]`); like `row_mask`.

    Returns:
        int32 tensor `[B, M]` (`[M]` for a single matrix): for each row, the index of
        its column, or -1 where the row is unmatched.

    Raises:
        ValueError: if `cost` is not 2-D or 3-D, if `M` or `N` is not known when the
            graph is traced, or if a mask's shape does not fit `cost`.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss import linear_sum_assignment
        >>> cost = np.array([[4.0, 1.0, 3.0],
        ...                  [2.0, 0.0, 5.0],
        ...                  [3.0, 2.0, 2.0]], dtype="float32")
        >>> np.asarray(linear_sum_assignment(cost)).tolist()
        [1, 0, 2]
        >>> tall = cost[:, :2]  # 3 rows, 2 columns: one row stays unmatched
        >>> np.asarray(linear_sum_assignment(tall)).tolist()
        [1, 0, -1]
        >>> cost[2, 2] = np.inf  # a forbidden pair
        >>> np.asarray(linear_sum_assignment(cost[None])).tolist()  # a batch of one
        [[2, 1, 0]]
    """
    cost = ops.convert_to_tensor(cost)
    if len(cost.shape) not in (2, 3):
        raise ValueError(
            "Expected `cost` of rank 3 ([batch, rows, cols]) or 2 ([rows, cols]). "
            f"Received: cost.shape={tuple(cost.shape)}"
        )
    single = len(cost.shape) == 2
    if single:
        cost = cost[None]
        row_mask = None if row_mask is None else ops.convert_to_tensor(row_mask)[None]
        col_mask = None if col_mask is None else ops.convert_to_tensor(col_mask)[None]
    m, n = cost.shape[1], cost.shape[2]
    if m is None or n is None:
        raise ValueError(
            "Expected the numbers of rows and columns of `cost` to be known when the graph "
            f"is traced (only the batch may be unknown). Received: cost.shape={cost.shape}"
        )
    row_mask = _check_mask(row_mask, cost, axis=1, name="row_mask")
    col_mask = _check_mask(col_mask, cost, axis=2, name="col_mask")

    dtype = "float64" if keras.backend.standardize_dtype(cost.dtype) == "float64" else "float32"
    cost = ops.cast(cost, dtype)
    if m == 0 or n == 0:
        result = ops.zeros_like(ops.sum(ops.cast(cost, "int32"), axis=2)) - 1  # [B, M]
    else:
        if row_mask is None:
            row_mask = ops.ones_like(cost[:, :, 0], dtype="bool")
        if col_mask is None:
            col_mask = ops.ones_like(cost[:, 0, :], dtype="bool")
        result = _compiled(_assign)(cost, row_mask, col_mask)
    return result[0] if single else result


def _assign(cost: Tensor, row_mask: Tensor, col_mask: Tensor) -> Tensor:
    """The solver on `[B, M, N]` with `M, N > 0` and both masks given."""
    # Allowed pairs: finite cost on a real row and a real column.
    allowed = ops.isfinite(cost)
    allowed = ops.logical_and(allowed, row_mask[:, :, None])
    allowed = ops.logical_and(allowed, col_mask[:, None, :])
    transposed = cost.shape[1] > cost.shape[2]
    if transposed:
        cost = ops.transpose(cost, (0, 2, 1))
        allowed = ops.transpose(allowed, (0, 2, 1))
    scaled = _normalize(cost, allowed)
    col4row, row4col = _solve(scaled, ops.any(allowed, axis=2))
    if transposed:
        allowed = ops.transpose(allowed, (0, 2, 1))
        col4row = row4col
    # A row is matched only on an allowed pair (not on the stand-in cost R + 1).
    safe = ops.maximum(col4row, 0)
    on_allowed = ops.take_along_axis(allowed, safe[:, :, None], axis=2)[:, :, 0]
    result = ops.where(ops.logical_and(col4row >= 0, on_allowed), col4row, -1)
    return ops.cast(result, "int32")


@functools.cache
def _compiled(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Backend-specific: `fn` compiled with XLA, once per shape.

    Eager calls then do not run the loops op by op. Inside a traced function it is
    inlined (JAX) or runs as one XLA cluster (TensorFlow, also when the surrounding
    model is not compiled with XLA).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled: Callable[..., Tensor] = tf.function(fn, jit_compile=True, autograph=False)
        return compiled
    if backend == "jax":
        import jax

        jitted: Callable[..., Tensor] = jax.jit(fn)
        return jitted
    return fn


def _check_mask(mask: Tensor | None, cost: Tensor, axis: int, name: str) -> Tensor | None:
    if mask is None:
        return None
    mask = ops.convert_to_tensor(mask)
    expected = (cost.shape[0], cost.shape[axis])
    if len(mask.shape) != 2 or mask.shape[1] != expected[1]:
        raise ValueError(
            f"Expected `{name}` of shape {expected} to fit `cost` of shape "
            f"{tuple(cost.shape)}. Received: {name}.shape={tuple(mask.shape)}"
        )
    return ops.cast(mask, "bool")


def _normalize(cost: Tensor, allowed: Tensor) -> Tensor:
    """Maps each sample's allowed costs onto [0, 1] and forbidden pairs to R + 1.

    Halves are taken before subtracting so that costs up to the float maximum do not
    overflow; a sample whose allowed costs are all equal maps them to 0. The map is
    affine and increasing, so it keeps the optimal matchings.
    """
    rows = cost.shape[1]
    half = ops.where(allowed, cost * 0.5, 0.0)  # [B, R, C]
    big = ops.cast(3.0e38, cost.dtype)
    lo = ops.min(
        ops.where(allowed, half, big), axis=(1, 2), keepdims=True, initial=big
    )  # [B, 1, 1]
    hi = ops.max(
        ops.where(allowed, half, -big), axis=(1, 2), keepdims=True, initial=-big
    )  # [B, 1, 1]
    span = hi - lo  # [B, 1, 1], finite
    # Bring the span near 1 by an exact power of two before dividing: compilers may divide
    # by multiplying with the reciprocal, which is denormal (flushed to 0) for huge spans
    # and infinite for denormal ones.
    pre = ops.where(span > 2.0**64, 2.0**-64, ops.where(span < 2.0**-64, 2.0**64, 1.0))
    pre = ops.cast(pre, cost.dtype)
    span = ops.where(span > 0, span * pre, 1.0)
    scaled = ops.clip((half - lo) * pre / span, 0.0, 1.0)
    return ops.where(allowed, scaled, float(rows + 1))


def _solve(cost: Tensor, active_row: Tensor) -> tuple[Tensor, Tensor]:
    """Shortest augmenting paths on finite costs `[B, R, C]` with `R <= C`.

    Rows where `active_row` is False are not inserted. Returns `col4row [B, R]` and
    `row4col [B, C]`, -1 where unmatched.

    Only the column duals `v` are kept: a matched pair is tight, so the dual of a
    matched row is `u_i = c[i, col4row[i]] - v[col4row[i]]`, read when the row is
    scanned; the row being inserted starts its search at distance 0.
    """
    rows, cols = cost.shape[1], cost.shape[2]
    dtype = cost.dtype
    inf = ops.cast(float("inf"), dtype)
    row_ids = ops.arange(rows, dtype="int32")  # [R]
    col_ids = ops.arange(cols, dtype="int32")  # [C]
    flat_cost = ops.reshape(cost, (-1, cols))  # [B * R, C]
    row_offset = (ops.cumsum(ops.ones_like(cost[:, 0, 0], dtype="int32")) - 1) * rows  # [B]

    # Row reduction: with u_i = min_j c_ij and v = 0, each row takes its cheapest column
    # unless an earlier row took it. Reduced costs stay >= 0 and matched pairs are tight.
    row_min = ops.min(cost, axis=2, keepdims=True, initial=inf)  # [B, R, 1]
    at_min = ops.equal(cost, row_min)  # [B, R, C]
    best = ops.min(ops.where(at_min, col_ids[None, None, :], cols), axis=2, initial=cols)  # [B, R]
    best = ops.where(active_row, best, -1)
    same = ops.equal(best[:, :, None], best[:, None, :])  # [B, R, R]
    earlier = row_ids[None, :] < row_ids[:, None]  # [R, R]: k < i
    taken_before = ops.any(ops.logical_and(same, earlier[None]), axis=2)  # [B, R]
    col4row = ops.where(ops.logical_and(best >= 0, ops.logical_not(taken_before)), best, -1)
    hits = ops.equal(col4row[:, :, None], col_ids[None, None, :])  # [B, R, C]
    row4col = ops.max(ops.where(hits, row_ids[None, :, None], -1), axis=1, initial=-1)  # [B, C]
    pending = ops.logical_and(active_row, col4row < 0)  # [B, R]: rows still to insert

    def next_row(pending: Tensor) -> Tensor:
        # First pending row, or R when none is left.
        return ops.min(ops.where(pending, row_ids[None, :], rows), axis=1, initial=rows)  # [B]

    start = next_row(pending)
    v = ops.zeros_like(cost[:, 0, :])  # [B, C]
    state = {
        "v": v,
        "col4row": col4row,
        "row4col": row4col,
        "pending": pending,
        "cur": start,  # [B] row being inserted (R = done)
        "i": start,  # [B] row being scanned
        "min_val": ops.zeros_like(v[:, 0]),  # [B] distance of row i
        "spc": ops.full_like(v, inf),  # [B, C] shortest path costs
        "path": ops.zeros_like(row4col) - 1,  # [B, C] predecessor row of each column
        "scanned": ops.zeros_like(v, dtype="bool"),  # [B, C] scanned columns
        "flipping": ops.zeros_like(start, dtype="bool"),  # [B] walking back a found path
        "flip_col": ops.zeros_like(start),  # [B] column the walk stands on
    }

    def cond(s: dict[str, Tensor]) -> Tensor:
        return ops.any(s["cur"] < rows)

    def body(s: dict[str, Tensor]) -> dict[str, Tensor]:
        # One Dijkstra step for the samples still searching ...
        searching = ops.logical_and(s["cur"] < rows, ops.logical_not(s["flipping"]))  # [B]
        i = ops.minimum(s["i"], rows - 1)  # [B]
        cost_row = ops.take(flat_cost, row_offset + i, axis=0)  # [B, C]
        v = s["v"]
        matched_col = _pick(s["col4row"], row_ids, i)  # [B], -1 for the row being inserted
        u_i = _pick(cost_row - v, col_ids, matched_col)  # [B], 0 for the row being inserted
        reduced = s["min_val"][:, None] + cost_row - u_i[:, None] - v  # [B, C]
        scanned = s["scanned"]
        better = ops.logical_and(ops.logical_not(scanned), reduced < s["spc"])
        better = ops.logical_and(better, searching[:, None])
        spc = ops.where(better, reduced, s["spc"])  # [B, C]
        path = ops.where(better, i[:, None], s["path"])  # [B, C]
        # Closest unscanned column; among equals, a free one (it ends the search).
        candidates = ops.where(scanned, inf, spc)  # [B, C]
        min_val = ops.min(candidates, axis=1, initial=inf)  # [B]
        at_min = ops.equal(candidates, min_val[:, None])  # [B, C]
        # The first free column at the minimum, else the first at the minimum: one integer
        # min-reduction (cheaper than argmax in XLA loops) over keys that rank free first.
        key = ops.where(s["row4col"] < 0, col_ids[None, :], col_ids[None, :] + cols)  # [B, C]
        key = ops.min(ops.where(at_min, key, 2 * cols), axis=1, initial=2 * cols)  # [B]
        j = ops.where(key >= cols, key - cols, key)  # [B]
        is_j = ops.logical_and(ops.equal(col_ids[None, :], j[:, None]), searching[:, None])
        scanned = ops.logical_or(scanned, is_j)  # [B, C]
        owner = _pick(s["row4col"], col_ids, j)  # [B]
        found = ops.logical_and(searching, owner < 0)  # [B]: j is a free column, the sink
        # Where the search ended, update the column duals.
        shift = ops.logical_and(scanned, found[:, None])
        v = ops.where(shift, v - (min_val[:, None] - spc), v)  # [B, C]

        # ... and one step back along the found path for the samples walking it: the row
        # that reached the column moves onto it (from the sink back to the inserted row).
        flipping = ops.logical_or(s["flipping"], found)  # [B]
        flip_col = ops.where(found, j, s["flip_col"])  # [B]
        row = _pick(path, col_ids, flip_col)  # [B]
        next_col = _pick(s["col4row"], row_ids, row)  # [B]
        set_col = ops.logical_and(ops.equal(col_ids[None, :], flip_col[:, None]), flipping[:, None])
        row4col = ops.where(set_col, row[:, None], s["row4col"])  # [B, C]
        set_row = ops.logical_and(ops.equal(row_ids[None, :], row[:, None]), flipping[:, None])
        col4row = ops.where(set_row, flip_col[:, None], s["col4row"])  # [B, R]
        inserted = ops.logical_and(flipping, ops.equal(row, s["cur"]))  # [B]

        # Where the row is in, start the next one.
        done_row = ops.logical_and(
            ops.equal(row_ids[None, :], s["cur"][:, None]), inserted[:, None]
        )
        pending = ops.logical_and(s["pending"], ops.logical_not(done_row))  # [B, R]
        cur = ops.where(inserted, next_row(pending), s["cur"])  # [B]
        reset = inserted[:, None]
        walking = ops.logical_and(searching, ops.logical_not(found))
        return {
            "v": v,
            "col4row": col4row,
            "row4col": row4col,
            "pending": pending,
            "cur": cur,
            "i": ops.where(inserted, cur, ops.where(walking, owner, s["i"])),
            "min_val": ops.where(inserted, 0.0, ops.where(walking, min_val, s["min_val"])),
            "spc": ops.where(reset, inf, spc),
            "path": ops.where(reset, -1, path),
            "scanned": ops.logical_and(scanned, ops.logical_not(reset)),
            "flipping": ops.logical_and(flipping, ops.logical_not(inserted)),
            "flip_col": next_col,
        }

    state = ops.while_loop(cond, body, state, maximum_iterations=rows * rows)
    return state["col4row"], state["row4col"]


def _pick(x: Tensor, ids: Tensor, index: Tensor) -> Tensor:
    """`x[b, index[b]]` for `x [B, K]`, `ids = arange(K)`, `index [B]`; 0 out of range.

    A masked sum rather than a gather: O(B * K), and cheap inside XLA loops.
    """
    return ops.sum(ops.where(ops.equal(ids[None, :], index[:, None]), x, 0), axis=1)
