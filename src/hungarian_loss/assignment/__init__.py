"""Batched, exact linear sum assignment made of `keras.ops`.

Cost matrices in, integer indices out. Nothing here knows about losses or boxes. The
solver runs in phases, one module each: `_common` (normalization), `_start` (row
reduction, auction rounds), `_paths` (shortest augmenting paths, one column per loop
step) and `_phases` (many augmenting paths per phase, by dense Bellman-Ford rounds).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from hungarian_loss import _backend
from hungarian_loss.assignment._common import normalize
from hungarian_loss.assignment._paths import augment
from hungarian_loss.assignment._phases import phases
from hungarian_loss.assignment._start import auction, row_reduction

__all__ = ["linear_sum_assignment"]

Tensor = Any

STRATEGIES = ("auto", "steps", "phases")
# Auction rounds before the multi-path phases, and Bellman-Ford rounds a phase may take
# before its sample is left to the light steps; loop steps unrolled per iteration there.
_AUCTION_ROUNDS = 8
_PHASE_ROUNDS = 128  # 16 on CPU, where a Bellman-Ford round costs tens of light steps
_PHASE_ROUNDS_CPU = 16
_UNROLL = 4


def linear_sum_assignment(
    cost: Tensor,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    *,
    strategy: str = "auto",
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

    Unlike SciPy's function, which returns `(row_ind, col_ind)`, this one returns one
    column per row: `col_ind = result[row_ind]` with `row_ind = where(result >= 0)`.

    Algorithm: primal-dual, with column duals `v` and the invariant that every matched
    row sits at the minimum of its reduced costs `c[i, j] - v[j]` (so reduced costs are
    `>= 0` and matched pairs tight), `v <= 0`, and `v = 0` on free columns: at the end,
    complementary slackness of the rectangular problem proves the matching optimal.

    - If `M > N` the problem is transposed, so rows `R = min(M, N)` are inserted into
      columns `C = max(M, N)`.
    - Each sample's allowed costs are shifted to start at 0 (scaled by a power of two
      only where they could overflow or are all tiny); forbidden pairs and padded
      columns cost `R + 1` times the span, more than any total of allowed pairs, so the
      optimum first matches the most rows on allowed pairs, then has the least cost.
      Rows with no allowed pair are never inserted.
    - A start, then exact phases, chosen by `strategy`:

      - `"steps"`: row reduction (or, for near-square problems, 4 parallel auction
        rounds), then shortest augmenting paths (Jonker-Volgenant, as SciPy after
        Crouse, 2016), one Dijkstra column scan or one step back along the found path per
        loop step. Loop steps are light (`O(B * C)`) and a row takes at most `2k - 1` of
        them when `k - 1` rows are matched: at most `R^2` per sample. When one sample
        is left, it takes its remaining steps alone (`O(C)` each), so one hard sample
        costs about its own time, not a batch's.
      - `"phases"`: up to 8 parallel auction rounds (Jonker-Volgenant's augmenting row
        reduction for all free rows at once), then multi-path phases: distances from all
        free rows at once by dense Bellman-Ford rounds (`O(B * R * C)` each, at most
        `R + 1` per phase), one augmenting path per free row to its nearest free column,
        all flipped at once (at least one path per phase, so at most `R` phases). A
        sample whose phase needs more than 128 rounds (16 on CPU), as with very long
        paths, is finished by the light steps. About a tenth to a hundredth of the
        sequential steps of `"steps"` on square problems, each heavier.

      Ties are spread: the start gives row `i` the first cheapest column from `i` on
      (cyclically), and a Bellman-Ford round gives column `j` the first best row from
      `j mod R` on, so identical rows (collapsed predictions) take different columns
      and many paths per phase.
      - `"auto"` (default): `"phases"` on a GPU or TPU (the backend's default device; on
        PyTorch, the device of `cost`), where a loop step's fixed cost dominates, and, on
        the CPU, for near-square problems from 200 rows in batches of one or two;
        `"steps"` otherwise.

    Every loop has a bound that follows from `M` and `N` (above), passed to the loop.
    Working memory beyond the cost matrix is one reduced-cost matrix `[B, R, C]` (for
    `"phases"`) and `O(B * (R + C) * log R)`.

    Costs are compared in float32 (float64 for float64 input). Reduced costs are
    recomputed from the costs in each phase, never accumulated, so each comparison errs
    by a few ulps of `R` times the span of the costs: a total may differ from the exact
    optimum by about that much per matched pair. Under XLA on CPU, denormals count as 0.

    No gradient flows through the result (it is integer); pass a cost under
    `stop_gradient`. Works eagerly and compiled (`tf.function(jit_compile=True)`,
    `jax.jit`) with static `M`, `N` and any batch size, known or not. Deterministic.

    Args:
        cost: Float tensor `[B, M, N]`, or a single matrix `[M, N]`. Non-finite
            entries (`inf`, `-inf`, `NaN`) are forbidden pairs, never matched.
        row_mask: Optional boolean tensor `[B, M]` (`[M]` for a single matrix);
            `True` marks a real row, `False` padding that is never matched.
        col_mask: Optional boolean tensor `[B, N]` (`[N]`); like `row_mask`.
        strategy: `"auto"` (default), `"steps"` or `"phases"`: how the solver trades
            the number of loop steps against their weight (above). All give optimal
            matchings.

    Returns:
        int32 tensor `[B, M]` (`[M]` for a single matrix): for each row, the index of
        its column, or -1 where the row is unmatched.

    Raises:
        ValueError: if `cost` is not 2-D or 3-D, if `M` or `N` is not known when the
            graph is traced, if a mask's shape does not fit `cost`, or for an unknown
            `strategy`.

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
        >>> np.asarray(linear_sum_assignment(cost, strategy="phases")).tolist()
        [2, 1, 0]
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Expected `strategy` in {STRATEGIES}. Received: strategy={strategy!r}")
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
        strategy = _resolve(strategy, cost.shape[0], min(m, n), max(m, n), cost)
        result = _ASSIGN[strategy](cost, row_mask, col_mask)
    return result[0] if single else result


def _assign(cost: Tensor, row_mask: Tensor, col_mask: Tensor, strategy: str) -> Tensor:
    """The solver on `[B, M, N]` with `M, N > 0` and both masks given."""
    return _assign_with_steps(cost, row_mask, col_mask, strategy)[0]


def _assign_with_steps(
    cost: Tensor, row_mask: Tensor, col_mask: Tensor, strategy: str
) -> tuple[Tensor, Tensor]:
    """`_assign`, plus the loop steps each phase took `[4]` (for benchmarks).

    The steps: auction rounds, multi-path phases, Bellman-Ford rounds, light steps.
    """
    # Allowed pairs: finite cost on a real row and a real column.
    allowed = ops.isfinite(cost)
    allowed = ops.logical_and(allowed, row_mask[:, :, None])
    allowed = ops.logical_and(allowed, col_mask[:, None, :])
    transposed = cost.shape[1] > cost.shape[2]
    if transposed:
        cost = ops.transpose(cost, (0, 2, 1))
        allowed = ops.transpose(allowed, (0, 2, 1))
    scaled = normalize(cost, allowed)
    col4row, row4col, steps = _solve(scaled, ops.any(allowed, axis=2), strategy)
    if transposed:
        allowed = ops.transpose(allowed, (0, 2, 1))
        col4row = row4col
    # A row is matched only on an allowed pair (not on the stand-in cost for forbidden).
    safe = ops.maximum(col4row, 0)
    on_allowed = ops.take_along_axis(allowed, safe[:, :, None], axis=2)[:, :, 0]
    result = ops.where(ops.logical_and(col4row >= 0, on_allowed), col4row, -1)
    return ops.cast(result, "int32"), steps


def _solve(cost: Tensor, active_row: Tensor, strategy: str) -> tuple[Tensor, Tensor, Tensor]:
    """Exact assignment of finite costs `[B, R, C]`, `R <= C`; inactive rows stay out.

    Returns `col4row [B, R]`, `row4col [B, C]` (-1 where unmatched) and the steps `[4]`.
    """
    zero = ops.convert_to_tensor(0, dtype="int32")
    rows, cols = cost.shape[1], cost.shape[2]
    accelerated = _on_accelerator(cost)
    unroll = _UNROLL if accelerated else 1
    auction_rounds = _auction_rounds(strategy, rows, cols)
    if auction_rounds:
        col4row, row4col, v, rounds = auction(cost, active_row, auction_rounds)
    else:
        col4row, row4col, v = row_reduction(cost, active_row)
        rounds = zero
    if strategy == "phases":
        col4row, row4col, v, phase_count, bf_rounds = phases(
            cost,
            active_row,
            col4row,
            row4col,
            v,
            _PHASE_ROUNDS if accelerated else _PHASE_ROUNDS_CPU,
            unroll=unroll,
        )
    else:
        phase_count = bf_rounds = zero
    col4row, row4col, steps = augment(cost, active_row, col4row, row4col, v, unroll=unroll)
    return col4row, row4col, ops.stack([rounds, phase_count, bf_rounds, steps])


def _auction_rounds(strategy: str, rows: int, cols: int) -> int:
    """Auction rounds before the exact phases (0: row reduction instead).

    With light steps, a few rounds pay where the problem is near square (measured on
    CPU: many rows are left over by row reduction there); a wide problem is nearly done
    by row reduction, which costs one pass.
    """
    if strategy == "phases":
        return _AUCTION_ROUNDS
    return _STEPS_AUCTION_ROUNDS if 2 * rows > cols else 0


def _resolve(
    strategy: str, batch: int | None, rows: int, cols: int, cost: Tensor | None = None
) -> str:
    """`"auto"` made concrete: phases on accelerators and for large near-square problems.

    `cost` tells the device on torch (a CUDA tensor: phases).
    """
    if strategy != "auto":
        return strategy
    if _on_accelerator(cost):
        return "phases"
    # On CPU a Bellman-Ford round costs tens of light steps and grows with the whole batch;
    # it pays for long paths in one or two samples (measured with JAX, against light steps:
    # 2x200x200 0.8x, 2x300x300 0.6x, 1x1000x1000 0.8x; but 4x300x300 1.3-1.8x, 16x400x400
    # 1.1x and 64x300x300 2.5x).
    few = isinstance(batch, int) and batch <= _CPU_PHASES_MAX_BATCH  # None or symbolic: no
    return "phases" if few and rows >= _CPU_PHASES_ROWS and 2 * rows > cols else "steps"


_STEPS_AUCTION_ROUNDS = 4
_CPU_PHASES_ROWS = 200
_CPU_PHASES_MAX_BATCH = 2


# Compiled once per shape and backend (`_backend.compiled`).
_ASSIGN: dict[str, Callable[..., Tensor]] = {
    name: _backend.compiled(functools.partial(_assign, strategy=name))
    for name in ("steps", "phases")
}


def _on_accelerator(cost: Tensor | None = None) -> bool:
    """Whether the solver computes on a GPU or TPU (on torch: where `cost` lives)."""
    return _backend.on_accelerator(cost)


def _check_mask(mask: Tensor | None, cost: Tensor, axis: int, name: str) -> Tensor | None:
    if mask is None:
        return None
    mask = ops.convert_to_tensor(mask)
    expected = (cost.shape[0], cost.shape[axis])
    known_batches = None not in (mask.shape[0] if mask.shape else None, expected[0])
    if (
        len(mask.shape) != 2
        or mask.shape[1] != expected[1]
        or (known_batches and mask.shape[0] != expected[0])
    ):
        raise ValueError(
            f"Expected `{name}` of shape {expected} to fit `cost` of shape "
            f"{tuple(cost.shape)}. Received: {name}.shape={tuple(mask.shape)}"
        )
    return ops.cast(mask, "bool")
