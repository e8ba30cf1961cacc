"""The batched solver against SciPy: parity, masks, non-finite policy, compilation."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from helpers import BACKEND, assert_is_matching, jit, matched_total, scipy_total
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hungarian_loss import linear_sum_assignment

solve = jit(linear_sum_assignment)
# Each strategy compiled on its own; "auto" picks one of them by device and shape.
STRATEGIES = ("steps", "phases")
SOLVERS = {s: jit(functools.partial(linear_sum_assignment, strategy=s)) for s in STRATEGIES}
F32_EPS = float(np.finfo(np.float32).eps)
F32_TINY = float(np.finfo(np.float32).tiny)

# Kinds of cost matrices, each hard in its own way.
GENERATORS = {
    "uniform": lambda rng, s: rng.uniform(size=s),
    "integer_ties": lambda rng, s: rng.integers(0, 4, size=s).astype(float),
    "constant": lambda rng, s: np.full(s, rng.normal()),
    "negative": lambda rng, s: -rng.uniform(0, 10, size=s),
    "large_offset": lambda rng, s: 1e5 + rng.uniform(size=s),
    "magnitudes": lambda rng, s: rng.choice([-1, 1], size=s) * 10.0 ** rng.uniform(-6, 6, size=s),
    "normal": lambda rng, s: 100 * rng.normal(size=s),
    # c_ij = i * j: long augmenting paths, near the loop's bound
    "products": lambda rng, s: np.outer(np.arange(s[0]), np.arange(s[1])).astype(float),
}
PARITY_SHAPES = [(0, 6), (1, 1), (1, 8), (8, 1), (3, 3), (5, 8), (8, 5), (10, 10), (12, 30)]
PER_SHAPE = 256  # 9 shapes x 256 = 2304 matrices


def rounding_tolerance(cost: np.ndarray, matched: int) -> float:
    """What float32 rounding may cost on a total: a few ulps of the range per matched pair.

    XLA on CPU flushes denormals to zero, so each pair may also be off by the smallest
    normal float32.
    """
    finite = cost[np.isfinite(cost)]
    if finite.size == 0:
        return 0.0
    span = float(np.max(np.abs(finite)))
    return (8 * F32_EPS * span + F32_TINY) * max(matched, 1)


def random_batch(shape: tuple[int, int], count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    kinds = [list(GENERATORS)[k % len(GENERATORS)] for k in range(count)]
    mats = [GENERATORS[kind](rng, shape) for kind in kinds]
    return np.stack(mats).astype("float32").reshape((count, *shape)), kinds


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", PARITY_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_with_scipy(shape: tuple[int, int], strategy: str) -> None:
    cost, kinds = random_batch(shape, PER_SHAPE, seed=shape[0] * 100 + shape[1])
    result = np.asarray(SOLVERS[strategy](cost))
    assert result.shape == (PER_SHAPE, shape[0])
    for b in range(PER_SHAPE):
        assert_is_matching(result[b], shape[1])
        ours, count = matched_total(cost[b], result[b])
        ref, ref_count = scipy_total(cost[b])
        assert count == ref_count == min(shape)
        # Small integers are exact in float32: there the totals must be equal.
        exact = kinds[b] in ("integer_ties", "products")
        tol = 0.0 if exact else rounding_tolerance(cost[b], count)
        assert abs(ours - ref) <= tol, (kinds[b], ours, ref, result[b])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    hnp.arrays(
        np.float32,
        (64, 6, 9),
        elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False),
    )
)
def test_property_batched_parity(cost: np.ndarray) -> None:
    for matrix in (cost, np.transpose(cost, (0, 2, 1)).copy()):
        result = np.asarray(solve(matrix))
        for b in range(matrix.shape[0]):
            assert_is_matching(result[b], matrix.shape[2])
            ours, count = matched_total(matrix[b], result[b])
            ref, ref_count = scipy_total(matrix[b])
            assert count == ref_count
            assert abs(ours - ref) <= rounding_tolerance(matrix[b], count)


def test_zero_sizes() -> None:
    for shape in [(4, 0, 3), (4, 3, 0), (4, 0, 0), (0, 3, 5)]:
        result = np.asarray(linear_sum_assignment(np.zeros(shape, "float32")))
        assert result.shape == shape[:2] and result.dtype == np.int32
        assert np.all(result == -1)


def test_single_matrix_and_eager_equal_compiled() -> None:
    cost, _ = random_batch((6, 9), 8, seed=1)
    batched = np.asarray(solve(cost))
    eager = np.asarray(linear_sum_assignment(cost))
    np.testing.assert_array_equal(batched, eager)
    for b in range(8):
        np.testing.assert_array_equal(np.asarray(linear_sum_assignment(cost[b])), batched[b])


def test_deterministic() -> None:
    cost, _ = random_batch((10, 10), 32, seed=2)
    cost = np.round(cost * 3) / 3  # plenty of ties
    first = np.asarray(solve(cost))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(solve(cost)), first)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_half_and_double_inputs(dtype: str) -> None:
    # JAX without x64 holds float64 as float32; the solver then works in float32.
    cost = np.random.default_rng(3).uniform(size=(16, 5, 8)).astype(dtype)
    result = np.asarray(linear_sum_assignment(keras.ops.convert_to_tensor(cost, dtype)))
    for b in range(16):
        assert_is_matching(result[b], 8)
        ours, count = matched_total(cost[b], result[b])
        ref, _ = scipy_total(cost[b])
        assert count == 5
        assert abs(ours - ref) <= rounding_tolerance(cost[b], count)


# ----- masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masks_match_scipy_on_valid_submatrix(strategy: str) -> None:
    rng = np.random.default_rng(4)
    batch, m, n = 128, 7, 9
    cost = rng.normal(size=(batch, m, n)).astype("float32")
    row_mask = rng.uniform(size=(batch, m)) < 0.7
    col_mask = rng.uniform(size=(batch, n)) < 0.6
    row_mask[0] = False  # no valid rows
    col_mask[1] = False  # no valid columns
    result = np.asarray(SOLVERS[strategy](cost, row_mask, col_mask))
    assert np.all(result[0] == -1) and np.all(result[1] == -1)
    for b in range(batch):
        assert_is_matching(result[b], n)
        assert np.all(result[b][~row_mask[b]] == -1), "a padded row was matched"
        matched = result[b][result[b] >= 0]
        assert np.all(col_mask[b][matched]), "a padded column was matched"
        sub = cost[b][np.ix_(row_mask[b], col_mask[b])]
        ours, count = matched_total(cost[b], result[b])
        ref, ref_count = scipy_total(sub) if sub.size else (0.0, 0)
        assert count == ref_count == min(row_mask[b].sum(), col_mask[b].sum())
        assert abs(ours - ref) <= rounding_tolerance(sub, count)


def test_mask_shape_errors() -> None:
    cost = np.zeros((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="row_mask"):
        linear_sum_assignment(cost, row_mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="col_mask"):
        linear_sum_assignment(cost, col_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"row_mask.*\(2, 3\).*Received: row_mask.shape=\(3, 3\)"):
        linear_sum_assignment(cost, row_mask=np.ones((3, 3), bool))


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="Expected `strategy` in"):
        linear_sum_assignment(np.zeros((2, 3, 4), "float32"), strategy="fast")


@pytest.mark.parametrize("shape", [(5,), (1, 2, 3, 4)])
def test_rank_errors(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="Expected `cost` of rank 3"):
        linear_sum_assignment(np.zeros(shape, "float32"))


# ----- non-finite costs ----------------------------------------------------------------------


def forbidden_reference(cost: np.ndarray) -> tuple[float, int]:
    """SciPy with forbidden pairs priced above any finite total: (allowed total, allowed count)."""
    allowed = np.isfinite(cost)
    finite = cost[allowed].astype("float64")
    span = float(np.abs(finite).sum()) if finite.size else 0.0
    big = 2 * span + 1.0
    priced = np.where(allowed, cost.astype("float64"), big)
    # Forbidden pairs also cost `big` when SciPy uses them; a shift keeps allowed pairs cheaper.
    rows, cols = scipy_total_pairs(priced)
    keep = allowed[rows, cols]
    return float(priced[rows[keep], cols[keep]].sum()), int(keep.sum())


def scipy_total_pairs(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import scipy.optimize

    return scipy.optimize.linear_sum_assignment(cost)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", [(6, 9), (9, 6)], ids=["wide", "tall"])
def test_non_finite_entries_are_forbidden(shape: tuple[int, int], strategy: str) -> None:
    rng = np.random.default_rng(5 + shape[0])
    batch = 192
    cost = rng.normal(size=(batch, *shape)).astype("float32")
    density = rng.uniform(0.0, 0.9, size=(batch, 1, 1))
    holes = rng.uniform(size=cost.shape) < density
    values = rng.choice(np.array([np.inf, -np.inf, np.nan], "float32"), size=cost.shape)
    cost = np.where(holes, values, cost)
    result = np.asarray(SOLVERS[strategy](cost))
    for b in range(batch):
        assert_is_matching(result[b], shape[1])
        rows = np.flatnonzero(result[b] >= 0)
        assert np.all(np.isfinite(cost[b][rows, result[b][rows]])), "a forbidden pair was matched"
        ours, count = matched_total(cost[b], result[b])
        ref, ref_count = forbidden_reference(cost[b])
        assert count == ref_count, (b, result[b])
        assert abs(ours - ref) <= rounding_tolerance(cost[b], count)


def test_all_nan_and_all_inf_samples_return_minus_one() -> None:
    cost = np.stack(
        [
            np.full((10, 10), np.nan),
            np.full((10, 10), np.inf),
            np.full((10, 10), -np.inf),
            np.arange(100.0).reshape(10, 10),
        ]
    ).astype("float32")
    result = np.asarray(solve(cost))
    assert np.all(result[:3] == -1)
    assert_is_matching(result[3], 10)
    assert np.all(result[3] >= 0)


def test_extreme_magnitudes() -> None:
    big = float(np.finfo(np.float32).max)
    rng = np.random.default_rng(6)
    huge = rng.choice(np.array([-big, big, 0.0, 1.0], "float32"), size=(64, 5, 7))
    tiny = (rng.uniform(size=(64, 5, 7)) * 1e-39).astype("float32")  # denormals
    mixed = np.where(rng.uniform(size=(64, 5, 7)) < 0.5, tiny, 1e-30).astype("float32")
    for cost in (huge, tiny, mixed):
        result = np.asarray(solve(cost))
        for b in range(64):
            assert_is_matching(result[b], 7)
            ours, count = matched_total(cost[b], result[b])
            ref, _ = scipy_total(cost[b])
            assert count == 5
            assert abs(ours - ref) <= rounding_tolerance(cost[b], count)


# ----- large and structured problems --------------------------------------------------------


def structured_batch(n: int) -> tuple[np.ndarray, list[str]]:
    """One n x n matrix of each hard kind (the last one also holds a huge finite outlier)."""
    rng = np.random.default_rng(n)
    i = np.arange(n, dtype="float64")[:, None]
    j = np.arange(n, dtype="float64")[None, :]
    uniform = rng.uniform(size=(n, n))
    forbidden = np.where(rng.uniform(size=(n, n)) < 0.9, np.inf, rng.uniform(size=(n, n)))
    outlier = rng.uniform(size=(n, n))
    outlier[n // 3, n // 2] = 1e37
    kinds = {
        "uniform": uniform,
        "products": (i + 1) * (j + 1),  # c_ij = i * j, 1-based: long augmenting paths
        "squared_differences": (i - j) ** 2,
        "machol_wien": i * j,  # (i - 1)(j - 1) in 1-based indices (Machol and Wien, 1976)
        "rank_one": np.outer(rng.uniform(1, 2, size=n), rng.uniform(1, 2, size=n)),
        "ties": rng.integers(0, 3, size=(n, n)).astype("float64"),
        "forbidden_90": forbidden,
        "outlier": outlier,
    }
    return np.stack(list(kinds.values())).astype("float32"), list(kinds)


# On torch, compiled: Keras's Python loop would take tens of thousands of eager steps here.
# There, n = 200 only: the compiled torch loop is the same program at both sizes, and
# n = 500 cost 240 s of Inductor compiles and runs (TensorFlow and JAX: 14 s each).
@pytest.mark.usefixtures("torch_compile")
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "n", [200, pytest.param(500, marks=pytest.mark.backends("tensorflow", "jax"))]
)
def test_large_structured_parity(n: int, strategy: str) -> None:
    cost, kinds = structured_batch(n)
    result = np.asarray(SOLVERS[strategy](cost))
    for b, kind in enumerate(kinds):
        assert_is_matching(result[b], n)
        ours, count = matched_total(cost[b], result[b])
        if kind == "forbidden_90":
            ref, ref_count = forbidden_reference(cost[b])
        else:
            ref, ref_count = scipy_total(cost[b])
        assert count == ref_count, kind
        if kind == "outlier":
            # The optimum avoids the outlier: round off on the other costs only, not on 1e37.
            tol = rounding_tolerance(np.where(cost[b] > 1.0, 0.0, cost[b]), count)
        else:
            tol = rounding_tolerance(cost[b][np.isfinite(cost[b])], count)
        assert abs(ours - ref) <= tol, (kind, ours, ref)


def detr_cost(rng: np.random.Generator, images: int, targets: int, queries: int, spread: float):
    """DETR's matching cost `[images, targets, queries]` and a target mask, in NumPy.

    `-softmax(logits)[class] + 5 L1 + 2 (1 - GIoU)` on center_xywh boxes, with every query
    within `spread` of one box and one set of logits (collapsed; 0: identical queries).
    """
    counts = rng.integers(targets // 2, targets + 1, size=images)
    mask = np.arange(targets)[None, :] < counts[:, None]
    true = np.concatenate([rng.uniform(0.2, 0.8, (images, targets, 2)),
                           rng.uniform(0.05, 0.4, (images, targets, 2))], axis=-1)  # fmt: skip
    labels = rng.integers(0, 20, size=(images, targets))
    logits = rng.normal(size=(images, 1, 20)) + spread * rng.uniform(-1, 1, (images, queries, 20))
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (images, 1, 2)),
                            rng.uniform(0.1, 0.3, (images, 1, 2))], axis=-1)  # fmt: skip
    boxes = boxes + spread * rng.uniform(-1, 1, (images, queries, 4))
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # [I, Q, K]
    class_cost = -np.take_along_axis(prob, np.repeat(labels[:, None], queries, 1), 2)  # [I, Q, T]
    l1 = np.abs(true[:, :, None] - boxes[:, None]).sum(-1)  # [I, T, Q]
    lo_t, hi_t = true[..., :2] - true[..., 2:] / 2, true[..., :2] + true[..., 2:] / 2
    lo_q, hi_q = boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2
    lo_t, hi_t, lo_q, hi_q = lo_t[:, :, None], hi_t[:, :, None], lo_q[:, None], hi_q[:, None]
    inter = np.clip(np.minimum(hi_t, hi_q) - np.maximum(lo_t, lo_q), 0, None).prod(-1)
    union = (hi_t - lo_t).prod(-1) + (hi_q - lo_q).prod(-1) - inter
    hull = (np.maximum(hi_t, hi_q) - np.minimum(lo_t, lo_q)).prod(-1)
    giou = inter / union - (hull - union) / hull
    cost = class_cost.transpose(0, 2, 1) + 5 * l1 + 2 * (1 - giou)
    return cost.astype("float32"), mask


def tied_batch(n: int) -> tuple[np.ndarray, list[str]]:
    """Square costs `[6, n, n]` with ties or long paths, each hard in its way, in one batch."""
    rng = np.random.default_rng(11)
    ids = np.arange(n)
    blocks = np.repeat(rng.integers(0, 3, size=(n, n // 5)), 5, axis=1)  # blocks of 5 equal columns
    kinds = {
        "products": np.outer(ids, ids),  # c_ij = i * j: one hard sample among easy ones
        "uniform": rng.uniform(size=(n, n)),
        "tied_column_blocks": blocks,
        "identical_rows": np.broadcast_to(rng.uniform(size=n), (n, n)),
        "identical_columns": np.broadcast_to(rng.uniform(size=(n, 1)), (n, n)),
        "constant": np.ones((n, n)),
    }
    return np.stack(list(kinds.values())).astype("float32"), list(kinds)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ties_and_mixed_batch_parity(strategy: str) -> None:
    """Tied columns, identical rows and columns, and one i*j sample in an easy batch."""
    cost, kinds = tied_batch(40)
    result = np.asarray(SOLVERS[strategy](cost))
    for b, kind in enumerate(kinds):
        assert_is_matching(result[b], 40)
        ours, count = matched_total(cost[b], result[b])
        ref, ref_count = scipy_total(cost[b])
        assert count == ref_count == 40, kind
        exact = kind != "uniform"  # small integers or one value per row or column
        tol = 0.0 if exact else rounding_tolerance(cost[b], count)
        assert abs(ours - ref) <= tol, (kind, ours, ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_collapsed_and_identical_detr_queries(strategy: str) -> None:
    """DETR matching costs of collapsed (1e-3 apart) and identical queries, masked targets."""
    rng = np.random.default_rng(12)
    parts = [detr_cost(rng, 3, 12, 50, spread) for spread in (1e-3, 1e-5, 0.0, 0.0)]
    cost = np.concatenate([c for c, _ in parts])
    mask = np.concatenate([m for _, m in parts])
    result = np.asarray(SOLVERS[strategy](cost, mask))
    for b in range(len(cost)):
        assert_is_matching(result[b], 50)
        assert np.all(result[b][~mask[b]] == -1)
        real = cost[b][mask[b]]
        ours, count = matched_total(real, result[b][mask[b]])
        ref, ref_count = scipy_total(real)
        assert count == ref_count == mask[b].sum()
        assert abs(ours - ref) <= rounding_tolerance(real, count), (b, ours, ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identical_queries_take_different_columns_at_once(strategy: str) -> None:
    """Ties are spread: rows that cost the same on every column (identical queries) are all
    placed by the start, with no phase and no light step."""
    from hungarian_loss import assignment

    per_row = np.random.default_rng(13).uniform(size=(2, 10, 1))
    cost = np.broadcast_to(per_row, (2, 10, 30)).astype("float32")  # [2, 10, 30]
    result, steps = assignment._assign_with_steps(
        keras.ops.convert_to_tensor(cost),
        keras.ops.ones((2, 10), dtype="bool"),
        keras.ops.ones((2, 30), dtype="bool"),
        strategy,
    )
    _, phase_count, bf_rounds, light_steps = np.asarray(keras.ops.convert_to_numpy(steps))
    assert (phase_count, bf_rounds, light_steps) == (0, 0, 0)
    result = np.asarray(keras.ops.convert_to_numpy(result))
    for b in range(2):
        assert_is_matching(result[b], 30)
        assert matched_total(cost[b], result[b]) == pytest.approx(scipy_total(cost[b]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_outlier_keeps_optimum(strategy: str) -> None:
    # One huge finite cost must not push the others' differences into denormals.
    rng = np.random.default_rng(8)
    cost = rng.uniform(size=(16, 50, 50)).astype("float32")
    cost[np.arange(16), rng.integers(0, 50, 16), rng.integers(0, 50, 16)] = 1e37
    result = np.asarray(SOLVERS[strategy](cost))
    for b in range(16):
        ours, count = matched_total(cost[b], result[b])
        ref, _ = scipy_total(cost[b])
        assert count == 50
        assert abs(ours - ref) <= 50 * 8 * F32_EPS, (ours, ref)


# ----- compilation ---------------------------------------------------------------------------


def test_unknown_batch_dimension() -> None:
    rng = np.random.default_rng(7)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        fn = tf.function(
            linear_sum_assignment,
            input_signature=[tf.TensorSpec([None, 6, 8], tf.float32)],
            jit_compile=True,
        )
        traced = fn.get_concrete_function()
        assert traced.structured_outputs.shape.as_list() == [None, 6]
    elif BACKEND == "torch":
        # torch traces no graph with an unknown batch here (`torch.compile` specializes the
        # batch size; the solver compiles per shape): any batch size, eagerly.
        fn = linear_sum_assignment
    else:
        import jax

        # JAX's form of an unknown batch: a symbolic dimension, exported once.
        (batch,) = jax.export.symbolic_shape("b")
        spec = jax.ShapeDtypeStruct((batch, 6, 8), np.float32)
        exported = jax.export.export(jax.jit(linear_sum_assignment))(spec)
        assert str(exported.out_avals[0].shape[0]) == "b"
        fn = exported.call
    for size in (1, 64):
        cost = rng.uniform(size=(size, 6, 8)).astype("float32")
        result = np.asarray(fn(cost))
        assert result.shape == (size, 6)
        for b in range(size):
            ours, _ = matched_total(cost[b], result[b])
            ref, _ = scipy_total(cost[b])
            assert abs(ours - ref) <= rounding_tolerance(cost[b], 6)
