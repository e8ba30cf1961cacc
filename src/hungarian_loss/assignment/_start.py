"""Starting matchings for the exact phases: row reduction and parallel auction rounds.

Both leave the state the later phases rely on (`col4row [B, R]`, `row4col [B, C]` and the
column duals `v [B, C]`):

- `v <= 0`, and `v = 0` on every free column;
- every matched row sits at the minimum of its reduced costs `c[i, j] - v[j]`.

The dual of a row is then `u[i] = min_j (c[i, j] - v[j])`, all reduced costs
`c[i, j] - u[i] - v[j]` are `>= 0`, and matched pairs are tight.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from hungarian_loss import _backend
from hungarian_loss.assignment._common import first_index, gather, largest

Tensor = Any


def row_reduction(cost: Tensor, active_row: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each active row takes its cheapest column unless an earlier row took it (`v = 0`).

    One pass over the costs. Returns `col4row [B, R]`, `row4col [B, C]` and `v [B, C]`.
    """
    rows = cost.shape[1]
    row_ids = ops.arange(rows, dtype="int32")  # [R]
    best = cyclic_first(ops.equal(cost, ops.amin(cost, axis=2, keepdims=True)))  # [B, R]
    best = ops.where(active_row, best, -1)
    same = ops.equal(best[:, :, None], best[:, None, :])  # [B, R, R]
    earlier = row_ids[None, :] < row_ids[:, None]  # [R, R]: k < i
    taken_before = ops.any(ops.logical_and(same, earlier[None]), axis=2)  # [B, R]
    col4row = ops.where(ops.logical_and(best >= 0, ops.logical_not(taken_before)), best, -1)
    return col4row, _invert(col4row, cost.shape[2]), ops.zeros_like(cost[:, 0, :])


def auction(cost: Tensor, active_row: Tensor, rounds: int) -> tuple[Tensor, ...]:
    """Parallel auction rounds with no bid increment (Jonker-Volgenant's augmenting row reduction).

    In each round every free row bids for its cheapest column in `c - v`, offering the
    gap `g` to its second cheapest (where `g = 0` and the cheapest column is taken, it
    bids for the second one, which is as cheap). Each column takes its highest bid (ties
    to the lowest row), lowers `v` by it and frees its previous owner. The winner then
    sits at the minimum of its reduced costs, other rows only see theirs rise, and a
    column once taken stays taken: the module's invariants hold after every round.
    Without an increment the auction may cycle, so it stops after `rounds` rounds (or
    when no row is free); shortest augmenting paths place the rest.

    Each round is a few passes over `[B, R, C]`. Returns `col4row`, `row4col`, `v` and the
    number of rounds run.
    """
    rows, cols = cost.shape[1], cost.shape[2]
    row_ids = ops.arange(rows, dtype="int32")  # [R]
    col_ids = ops.arange(cols, dtype="int32")  # [C]
    big = largest(cost.dtype)

    def cond(s: dict[str, Tensor]) -> Tensor:
        return ops.any(ops.logical_and(active_row, s["col4row"] < 0))

    def body(s: dict[str, Tensor]) -> dict[str, Tensor]:
        v, col4row, row4col = s["v"], s["col4row"], s["row4col"]
        free = ops.logical_and(active_row, col4row < 0)  # [B, R]
        reduced = cost - v[:, None, :]  # [B, R, C]
        first_val = ops.amin(reduced, axis=2)  # [B, R]
        first = cyclic_first(ops.equal(reduced, first_val[:, :, None]))  # [B, R]
        if cols > 1:
            rest = ops.where(ops.equal(col_ids, first[:, :, None]), big, reduced)  # [B, R, C]
            second_val = ops.amin(rest, axis=2)  # [B, R]
            second = cyclic_first(ops.equal(rest, second_val[:, :, None]))  # [B, R]
            gap = second_val - first_val  # [B, R], >= 0
        else:
            second, gap = first, ops.zeros_like(first_val)
        first_taken = gather(row4col, first) >= 0  # [B, R]
        target = ops.where(ops.logical_and(gap <= 0, first_taken), second, first)  # [B, R]
        bids = ops.logical_and(ops.equal(col_ids, target[:, :, None]), free[:, :, None])
        best = ops.amax(ops.where(bids, gap[:, :, None], -1.0), axis=1)  # [B, C], -1: no bid
        top = ops.logical_and(bids, ops.equal(gap[:, :, None], best[:, None, :]))  # [B, R, C]
        winner = first_index(top, axis=1)  # [B, C], R where no bid
        sold = winner < rows  # [B, C]
        # Previous owners of sold columns are freed; winners take their column.
        lost = ops.logical_and(col4row >= 0, gather(sold, ops.maximum(col4row, 0)))  # [B, R]
        won = ops.logical_and(free, ops.equal(gather(winner, target), row_ids))  # [B, R]
        return {
            "v": ops.where(sold, v - best, v),
            "col4row": ops.where(won, target, ops.where(lost, -1, col4row)),
            "row4col": ops.where(sold, winner, row4col),
            "rounds": s["rounds"] + 1,
        }

    state = {
        "v": ops.zeros_like(cost[:, 0, :]),
        "col4row": ops.zeros_like(cost[:, :, 0], dtype="int32") - 1,
        "row4col": ops.zeros_like(cost[:, 0, :], dtype="int32") - 1,
        "rounds": ops.convert_to_tensor(0, dtype="int32"),
    }
    state = _backend.while_loop(cond, body, state, maximum_iterations=rounds)
    return state["col4row"], state["row4col"], state["v"], state["rounds"]


def cyclic_first(hit: Tensor) -> Tensor:
    """For `hit [B, R, C]`, row `i`'s first True column from `i mod C` on, cyclically `[B, R]`.

    Where rows tie on the same columns (identical predictions), they pick different ones.
    Every row has a True (a minimum).
    """
    rows, cols = hit.shape[1], hit.shape[2]
    row_ids = ops.arange(rows, dtype="int32")[:, None]  # [R, 1]
    col_ids = ops.arange(cols, dtype="int32")[None, :]  # [1, C]
    key = ops.mod(col_ids - row_ids + rows * cols, cols)  # [R, C]: (j - i) mod C
    offset = ops.amin(ops.where(hit, key[None], cols), axis=2)  # [B, R]
    return ops.mod(row_ids[None, :, 0] + offset, cols)


def _invert(col4row: Tensor, cols: int) -> Tensor:
    """`row4col [B, C]` from `col4row [B, R]` (-1 for unmatched): one pass over `[B, R, C]`."""
    hits = ops.equal(col4row[:, :, None], ops.arange(cols, dtype="int32"))  # [B, R, C]
    rows = col4row.shape[1]
    found = first_index(hits, axis=1)  # [B, C], R where no row
    return ops.where(found < rows, found, -1)
