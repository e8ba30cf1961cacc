"""Multi-path phases: many augmenting paths per phase, found by dense Bellman-Ford rounds.

Fewer and heavier loop steps than `_paths` (each a pass over `[B, R, C]`), for devices
where a loop step's fixed cost dominates (GPUs, TPUs). Starts from and keeps the
invariants of `_start`: `v <= 0`, `v = 0` on free columns, every matched row at the
minimum of its reduced costs `c[i, j] - v[j]`.

One phase, for every sample with free rows at once:

1. Reduced costs `r[i, j] = max(c[i, j] - v[j] - u[i], 0)` with `u[i] = min_j (c[i, j] - v[j])`,
   recomputed from the costs (never accumulated), clamped against rounding.
2. Distances `d [B, C]` from all free rows at once (a free row is at 0, a matched row at
   the distance of its column) by Jacobi Bellman-Ford rounds
   `d[j] <- min(d[j], min_i (D[i] + r[i, j]))`, keeping each column's predecessor row and
   root (free row) where its distance strictly drops: the predecessors then form a forest
   (a cycle would need a distance to drop below itself). Paths have at most `R` rows, so
   the rounds end after at most `R + 1`.
3. Each root's nearest free column is its sink; paths from different roots share no
   vertex. With `T` the smallest distance of a second free column of one root (or the
   largest distance where no root has two), the sinks at distance `<= T` are taken and
   the duals move by `v[j] -= max(0, T - d[j])`: reduced costs stay `>= 0` (as
   `min(d, T)` is still a distance), the chosen paths become tight, and the other free
   columns, all at `>= T`, keep `v = 0`. In a square problem with every row active no
   column has to keep `v = 0`: every root with a sink augments.
4. The paths are flipped at once. Columns on them are found by pointer doubling over
   "the column of my predecessor row": depths first, then the ancestor of each root's
   sink at every column's depth (`ceil(log2(R + 1))` gathers each).

At least one path is taken per phase in every sample with free rows, so a sample needs at
most `R` phases. Where a phase needs more than `max_rounds` Bellman-Ford rounds (long
paths, as in `c[i, j] = i * j`), the sample leaves the phases unchanged and the light
steps of `_paths` finish it.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from hungarian_loss import _backend
from hungarian_loss.assignment._common import first_index, gather

Tensor = Any


def phases(
    cost: Tensor,
    active_row: Tensor,
    col4row: Tensor,
    row4col: Tensor,
    v: Tensor,
    max_rounds: int,
    unroll: int = 1,
) -> tuple[Tensor, ...]:
    """Runs multi-path phases until no sample has a free row left that they can place.

    Args:
        cost: `[B, R, C]` finite costs, `R <= C`.
        active_row: `[B, R]`, rows to insert where unmatched.
        col4row: `[B, R]`, the starting matching (-1 where free).
        row4col: `[B, C]`, its inverse.
        v: `[B, C]`, column duals.
        max_rounds: Bellman-Ford rounds allowed per phase before a sample is left to
            the light steps.
        unroll: Bellman-Ford rounds per loop iteration.

    Returns:
        `col4row`, `row4col`, `v`, and the phases and the Bellman-Ford rounds taken.
    """
    rows, cols = cost.shape[1], cost.shape[2]
    row_ids = ops.arange(rows, dtype="int32")  # [R]
    col_ids = ops.arange(cols, dtype="int32")  # [C]
    inf = ops.cast(float("inf"), cost.dtype)
    # Square problems with every row active need no free column to keep v = 0.
    square = ops.all(active_row, axis=1)  # [B]
    if rows != cols:
        square = ops.logical_and(square, False)
    rounds_cap = min(max_rounds, rows + 1)
    # (i - j) mod R: where costs tie, column j prefers row j mod R, then the next ones.
    cyclic = ops.mod(row_ids[:, None] - col_ids[None, :] + cols * rows, rows)[None]  # [1, R, C]

    def free_rows(s: dict[str, Tensor]) -> Tensor:
        live = ops.logical_and(active_row, ops.logical_not(s["deep"])[:, None])
        return ops.logical_and(live, s["col4row"] < 0)  # [B, R]

    def phase_cond(s: dict[str, Tensor]) -> Tensor:
        return ops.any(free_rows(s))

    def phase_body(s: dict[str, Tensor]) -> dict[str, Tensor]:
        v, col4row, row4col = s["v"], s["col4row"], s["row4col"]
        free = free_rows(s)  # [B, R]
        searching = ops.any(free, axis=1)  # [B]
        reduced = cost - v[:, None, :]  # [B, R, C]
        reduced = ops.maximum(reduced - ops.amin(reduced, axis=2, keepdims=True), 0.0)
        safe_col = ops.maximum(col4row, 0)  # [B, R]

        def labels(d: Tensor, root: Tensor) -> tuple[Tensor, Tensor]:
            # Distance and root of each row: a free row is its own root at 0.
            dist = ops.where(free, 0.0, ops.where(col4row >= 0, gather(d, safe_col), inf))
            return dist, ops.where(free, row_ids, gather(root, safe_col))  # [B, R] each

        def bf_cond(b: dict[str, Tensor]) -> Tensor:
            return ops.any(b["changed"])

        def bf_round(b: dict[str, Tensor]) -> dict[str, Tensor]:
            dist, row_root = labels(b["d"], b["root"])
            through = dist[:, :, None] + reduced  # [B, R, C]
            best = ops.amin(through, axis=1)  # [B, C]
            drop = best < b["d"]  # [B, C]
            # Among the rows at the best distance, column j takes the first from row
            # j mod R on, cyclically: tied columns spread over the roots (one path each).
            offset = ops.amin(ops.where(ops.equal(through, best[:, None, :]), cyclic, rows), axis=1)
            arg = ops.mod(col_ids + offset, rows)  # [B, C]
            return {
                "d": ops.where(drop, best, b["d"]),
                "pred": ops.where(drop, arg, b["pred"]),
                "root": ops.where(drop, gather(row_root, ops.minimum(arg, rows - 1)), b["root"]),
                "changed": ops.any(drop, axis=1),
                "rounds": b["rounds"] + 1,
            }

        def bf_body(b: dict[str, Tensor]) -> dict[str, Tensor]:
            for _ in range(unroll):  # rounds after convergence change nothing
                b = bf_round(b)
            return b

        start = {
            "d": ops.full_like(v, inf),
            "pred": ops.zeros_like(row4col),
            "root": ops.zeros_like(row4col),
            "changed": searching,
            "rounds": ops.convert_to_tensor(0, dtype="int32"),
        }
        bf = _backend.while_loop(
            bf_cond, bf_body, start, maximum_iterations=-(-rounds_cap // unroll)
        )
        d, pred, root = bf["d"], bf["pred"], bf["root"]
        converged = ops.logical_not(bf["changed"])  # [B]
        apply = ops.logical_and(searching, converged)  # [B]

        # Sinks: each root's nearest free column, and the threshold T.
        free_col = row4col < 0  # [B, C]
        mine = ops.logical_and(
            ops.equal(root[:, None, :], row_ids[None, :, None]), free_col[:, None, :]
        )  # [B, R, C]: free columns in the tree of root r
        in_tree = ops.where(mine, d[:, None, :], inf)  # [B, R, C]
        nearest = ops.amin(in_tree, axis=2)  # [B, R]
        sink = first_index(ops.logical_and(mine, ops.equal(in_tree, nearest[:, :, None])))
        others = ops.where(ops.equal(col_ids, sink[:, :, None]), inf, in_tree)
        second = ops.amin(ops.amin(others, axis=2), axis=1)  # [B]
        farthest = ops.amax(ops.where(d < inf, d, 0.0), axis=1)  # [B]
        threshold = ops.where(square, farthest, ops.minimum(second, farthest))  # [B]
        chosen = ops.logical_and(sink < cols, nearest <= threshold[:, None])  # [B, R]
        chosen = ops.logical_and(chosen, free)

        on_path = _paths_to(col4row, pred, root, sink, chosen)  # [B, C]
        on_path = ops.logical_and(on_path, apply[:, None])
        row4col = ops.where(on_path, pred, row4col)
        found = first_index(ops.equal(row4col[:, None, :], row_ids[None, :, None]))  # [B, R]
        shift = ops.maximum(threshold[:, None] - d, 0.0)  # [B, C]
        return {
            "v": ops.where(apply[:, None], v - shift, v),
            "col4row": ops.where(found < cols, found, -1),
            "row4col": row4col,
            "deep": ops.logical_or(
                s["deep"], ops.logical_and(searching, ops.logical_not(converged))
            ),
            "phases": s["phases"] + 1,
            "rounds": s["rounds"] + bf["rounds"],
        }

    state = {
        "v": v,
        "col4row": col4row,
        "row4col": row4col,
        "deep": ops.zeros_like(active_row[:, 0]),
        "phases": ops.convert_to_tensor(0, dtype="int32"),
        "rounds": ops.convert_to_tensor(0, dtype="int32"),
    }
    state = _backend.while_loop(phase_cond, phase_body, state, maximum_iterations=rows + 1)
    return state["col4row"], state["row4col"], state["v"], state["phases"], state["rounds"]


def _paths_to(col4row: Tensor, pred: Tensor, root: Tensor, sink: Tensor, chosen: Tensor) -> Tensor:
    """Marks the columns on the tree path from each chosen root to its sink, `[B, C]`.

    `up[j]`, the column of `j`'s predecessor row (`C` past a root), makes each tree a
    linked structure; pointer doubling gives every column's depth, then lifts each
    root's sink to that depth: a column is on the path where it meets itself.
    """
    rows, cols = col4row.shape[1], pred.shape[1]
    steps = max(1, rows.bit_length())  # 2^steps > R >= the number of columns on a path
    pad = ops.zeros_like(pred[:, :1]) + cols  # [B, 1]: the sentinel column C
    up = ops.where(gather(col4row, pred) >= 0, gather(col4row, pred), cols)  # [B, C]
    jump = ops.concatenate([up, pad], axis=1)  # [B, C + 1], C maps to itself
    depth = ops.concatenate([ops.cast(up < cols, "int32"), pad * 0], axis=1)  # [B, C + 1]
    jumps = []
    for _ in range(steps):
        jumps.append(jump)
        depth = depth + gather(depth, jump)
        jump = gather(jump, jump)
    # The sink of each column's root, or C where the root takes no path.
    target = ops.where(chosen, sink, cols)  # [B, R]
    target = ops.concatenate([gather(target, root), pad], axis=1)  # [B, C + 1]
    lift = gather(depth, target) - depth  # [B, C + 1], >= 0 for ancestors
    node = target
    for k, table in enumerate(jumps):
        bit = ops.equal(ops.bitwise_and(ops.maximum(lift, 0), 1 << k), 1 << k)
        node = ops.where(bit, gather(table, node), node)
    ids = ops.arange(cols + 1, dtype="int32")
    on_path = ops.logical_and(ops.equal(node, ids), lift >= 0)
    return ops.logical_and(on_path, target < cols)[:, :cols]
