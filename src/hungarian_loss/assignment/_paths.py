"""Shortest augmenting paths: one Dijkstra column scan per loop step (light steps).

The Jonker-Volgenant family, as in SciPy's solver (after Crouse, 2016), run for every
sample of the batch in lock-step, each with its own state and "done" mask. It starts from
any state that keeps the invariants of `_start` (`v <= 0`, `v = 0` on free columns, every
matched row at the minimum of its reduced costs), and keeps them.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from hungarian_loss import _backend
from hungarian_loss.assignment._common import first_index, pick

Tensor = Any


def augment(
    cost: Tensor,
    active_row: Tensor,
    col4row: Tensor,
    row4col: Tensor,
    v: Tensor,
    unroll: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Inserts the remaining active rows by shortest augmenting paths in reduced costs.

    Each remaining row is inserted by a Dijkstra search in reduced costs
    `c_ij - u_i - v_j >= 0`, one column scanned per loop step; then the column duals are
    updated and the path is walked back, one row moved onto its new column per loop step
    (the first move shares the step that found the path). Only the column duals `v` are
    kept: a matched pair is tight, so the dual of a matched row is
    `u_i = c[i, col4row[i]] - v[col4row[i]]`, read when the row is scanned; the row being
    inserted starts its search at distance 0.

    Bound: when `k - 1` rows are matched, the search for the `k`-th row takes at most `k`
    steps (each step scans a new column, and at most `k - 1` scanned columns are taken)
    and its path holds at most `k` rows, so the row takes at most `2k - 1` steps and a
    sample at most `R^2`. One step costs `O(B * C)`. With a batch of known size `B >= 2`,
    the samples step in lock-step until one is left; that one is then taken out and
    finishes alone, at `O(C)` a step (one hard sample must not cost a batch's steps).

    Args:
        cost: `[B, R, C]` finite costs, `R <= C`.
        active_row: `[B, R]`, rows to insert where unmatched.
        col4row: `[B, R]` starting matching (-1 where free).
        row4col: `[B, C]`, its inverse.
        v: `[B, C]` column duals.
        unroll: Steps per loop iteration (fewer loop-condition syncs on accelerators).

    Returns:
        `col4row`, `row4col` and the number of steps taken (a scalar).
    """
    rows = cost.shape[1]
    inf = ops.cast(float("inf"), cost.dtype)
    pending = ops.logical_and(active_row, col4row < 0)  # [B, R]: rows still to insert
    start = first_index(pending)  # [B]: the first row to insert, R where none is left
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
    bound = -(-rows * rows // unroll)
    batch = cost.shape[0]
    if not isinstance(batch, int) or batch < 2:
        state, steps = _steps(cost, state, bound, unroll, leave=0)
        return state["col4row"], state["row4col"], steps
    # Lock-step until one sample is left, then that sample alone: one hard sample (long
    # paths) then costs its own steps, not a whole batch's.
    state, steps = _steps(cost, state, bound, unroll, leave=1)
    last = ops.minimum(first_index(state["cur"] < rows), batch - 1)[None]  # [1]
    alone = {key: ops.take(value, last, axis=0) for key, value in state.items()}
    alone, more_steps = _steps(ops.take(cost, last, axis=0), alone, bound, unroll, leave=0)
    is_last = ops.equal(ops.arange(batch, dtype="int32"), last)[:, None]  # [B, 1]
    col4row = ops.where(is_last, alone["col4row"], state["col4row"])
    row4col = ops.where(is_last, alone["row4col"], state["row4col"])
    return col4row, row4col, steps + more_steps


def _steps(
    cost: Tensor, state: dict[str, Tensor], bound: int, unroll: int, leave: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Light steps in lock-step until at most `leave` samples still insert rows.

    Returns the state and the number of steps taken.
    """
    rows, cols = cost.shape[1], cost.shape[2]
    dtype = cost.dtype
    inf = ops.cast(float("inf"), dtype)
    row_ids = ops.arange(rows, dtype="int32")  # [R]
    col_ids = ops.arange(cols, dtype="int32")  # [C]
    flat_cost = ops.reshape(cost, (-1, cols))  # [B * R, C]
    row_offset = (ops.cumsum(ops.ones_like(cost[:, 0, 0], dtype="int32")) - 1) * rows  # [B]

    def next_row(pending: Tensor) -> Tensor:
        # First pending row, or R when none is left.
        return first_index(pending)  # [B]

    def cond(s: dict[str, Tensor]) -> Tensor:
        return ops.sum(ops.cast(s["cur"] < rows, "int32")) > leave

    def step(s: dict[str, Tensor]) -> dict[str, Tensor]:
        # One Dijkstra step for the samples still searching ...
        searching = ops.logical_and(s["cur"] < rows, ops.logical_not(s["flipping"]))  # [B]
        i = ops.minimum(s["i"], rows - 1)  # [B]
        cost_row = ops.take(flat_cost, row_offset + i, axis=0)  # [B, C]
        v = s["v"]
        matched_col = pick(s["col4row"], i)  # [B], -1 for the row being inserted
        u_i = pick(cost_row - v, matched_col)  # [B], 0 for the row being inserted
        reduced = s["min_val"][:, None] + cost_row - u_i[:, None] - v  # [B, C]
        scanned = s["scanned"]
        better = ops.logical_and(ops.logical_not(scanned), reduced < s["spc"])
        better = ops.logical_and(better, searching[:, None])
        spc = ops.where(better, reduced, s["spc"])  # [B, C]
        path = ops.where(better, i[:, None], s["path"])  # [B, C]
        # Closest unscanned column; among equals, a free one (it ends the search).
        candidates = ops.where(scanned, inf, spc)  # [B, C]
        min_val = ops.amin(candidates, axis=1)  # [B]
        at_min = ops.equal(candidates, min_val[:, None])  # [B, C]
        # The first free column at the minimum, else the first at the minimum: one integer
        # min-reduction (cheaper than argmax in XLA loops) over keys that rank free first.
        key = ops.where(s["row4col"] < 0, col_ids[None, :], col_ids[None, :] + cols)  # [B, C]
        key = ops.amin(ops.where(at_min, key, 2 * cols), axis=1)  # [B]
        j = ops.where(key >= cols, key - cols, key)  # [B]
        is_j = ops.logical_and(ops.equal(col_ids[None, :], j[:, None]), searching[:, None])
        scanned = ops.logical_or(scanned, is_j)  # [B, C]
        owner = pick(s["row4col"], j)  # [B]
        found = ops.logical_and(searching, owner < 0)  # [B]: j is a free column, the sink
        # Where the search ended, update the column duals.
        shift = ops.logical_and(scanned, found[:, None])
        v = ops.where(shift, v - (min_val[:, None] - spc), v)  # [B, C]

        # ... and one step back along the found path for the samples walking it: the row
        # that reached the column moves onto it (from the sink back to the inserted row).
        flipping = ops.logical_or(s["flipping"], found)  # [B]
        flip_col = ops.where(found, j, s["flip_col"])  # [B]
        row = pick(path, flip_col)  # [B]
        next_col = pick(s["col4row"], row)  # [B]
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
            "steps": s["steps"] + 1,
        }

    def body(s: dict[str, Tensor]) -> dict[str, Tensor]:
        for _ in range(unroll):  # steps after the last row is in change nothing
            s = step(s)
        return s

    state = {**state, "steps": ops.convert_to_tensor(0, dtype="int32")}
    state = _backend.while_loop(cond, body, state, maximum_iterations=bound)
    steps = state.pop("steps")
    return state, steps
