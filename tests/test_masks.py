"""Tests of hungarian_loss.masks: reading masks at points, point sampling, mask costs.

The references are NumPy in float64, written from the definitions: the bilinear reading
as a sum of tent weights over every pixel (not the four-neighbour gather of the code),
the costs one pair at a time. Many cases share a few shapes, so that compiled checks
pay few compiles.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import compiled, jit, to_numpy, value_and_grads
from keras import ops

from hungarian_loss.masks import (
    elementwise_dice,
    elementwise_sigmoid_bce,
    elementwise_sigmoid_focal,
    importance_points,
    pairwise_dice,
    pairwise_sigmoid_bce,
    pairwise_sigmoid_focal,
    point_sample,
    uniform_points,
)

# ----------------------------------------------------------------------------- references


def np_point_sample(masks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """grid_sample(align_corners=False, zeros) by its definition: tent weights over all pixels.

    masks [B, M, H, W]; points [B, P, 2] or [B, M, P, 2] of (x, y) in [0, 1] -> [B, M, P].
    """
    masks = np.asarray(masks, "float64")
    points = np.asarray(points, "float64")
    height, width = masks.shape[-2:]
    if points.ndim == 3:
        points = np.broadcast_to(
            points[:, None], (masks.shape[0], masks.shape[1], *points.shape[1:])
        )
    u = points[..., 0] * width - 0.5  # pixel j has its centre at u = j
    v = points[..., 1] * height - 0.5
    tent_x = np.maximum(0.0, 1.0 - np.abs(u[..., None] - np.arange(width)))  # [B, M, P, W]
    tent_y = np.maximum(0.0, 1.0 - np.abs(v[..., None] - np.arange(height)))  # [B, M, P, H]
    return np.einsum("bmph,bmhw,bmpw->bmp", tent_y, masks, tent_x)


def np_softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np_softplus(-x))


def np_bce(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over points of BCE with logits of one pair."""
    return float(np.mean(np_softplus(x) - x * y))


def np_focal_pairwise(x: np.ndarray, y: np.ndarray, alpha=0.25, gamma=2.0) -> float:
    """MaskFormer's matcher (batch_sigmoid_focal_loss) for one pair: linear in y."""
    p = np_sigmoid(x)
    positive = alpha * (1 - p) ** gamma * np_softplus(-x)
    negative = (1 - alpha) * p**gamma * np_softplus(x)
    return float(np.mean(positive * y + negative * (1 - y)))


def np_focal_criterion(x: np.ndarray, y: np.ndarray, alpha=0.25, gamma=2.0) -> float:
    """MaskFormer's criterion (sigmoid_focal_loss) for one pair, mean over points."""
    p = np_sigmoid(x)
    ce = np_softplus(x) - x * y
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return float(np.mean(alpha_t * ce * np.abs(1 - p_t) ** gamma))


def np_dice(x: np.ndarray, y: np.ndarray) -> float:
    p = np_sigmoid(x)
    return float(1 - (2 * np.sum(p * y) + 1) / (np.sum(p) + np.sum(y) + 1))


def np_pairwise(fn, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """fn(x [P], y [P]) for every pair: [B, Q, P], [B, M, P] -> [B, Q, M], in float64."""
    logits, targets = np.asarray(logits, "float64"), np.asarray(targets, "float64")
    batch, queries, masks = logits.shape[0], logits.shape[1], targets.shape[1]
    out = np.zeros((batch, queries, masks))
    for b in range(batch):
        for q in range(queries):
            for m in range(masks):
                out[b, q, m] = fn(logits[b, q], targets[b, m])
    return out


def np_elementwise(fn, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """fn(x [P], y [P]) on the pairs at the same place: [..., P] twice -> [...]."""
    logits, targets = np.asarray(logits, "float64"), np.asarray(targets, "float64")
    flat = [
        fn(x, y)
        for x, y in zip(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1, targets.shape[-1]),
            strict=True,
        )
    ]
    return np.array(flat).reshape(logits.shape[:-1])


# ----------------------------------------------------------------------------- data

RNG = np.random.default_rng(7)
# Predictions [2, 3, 4, 6] and targets at twice their resolution [2, 2, 8, 12].
PRED_MASKS = RNG.normal(0.0, 3.0, size=(2, 3, 4, 6)).astype("float32")
COARSE = (RNG.uniform(size=(2, 2, 4, 6)) < 0.5).astype("float32")
COARSE[1, 1] = 0.0  # an empty target
FINE = np.repeat(np.repeat(COARSE, 2, axis=2), 2, axis=3)  # [2, 2, 8, 12], nearest x2


def border_points(height: int, width: int) -> np.ndarray:
    """[P, 2]: corners, edges, pixel centres, just and far outside, then random points."""
    centres = [((j + 0.5) / width, (i + 0.5) / height) for i in (0, height - 1) for j in (0, 2)]
    special = [
        (0.0, 0.0),
        (1.0, 1.0),
        (0.0, 1.0),
        (1.0, 0.0),
        (0.5, 0.0),
        (0.0, 0.5),
        (1.0, 0.5),
        (-0.01, 0.5),
        (0.5, 1.01),
        (-0.5, 0.5),
        (1.5, 1.5),
        (1.0 + 0.5 / width, 0.5),
        *centres,
    ]
    return np.concatenate([np.array(special), RNG.uniform(size=(8, 2))]).astype("float32")


SHARED_POINTS = np.stack([border_points(4, 6), border_points(4, 6)[::-1]])  # [2, 24, 2]
PER_MASK_POINTS = RNG.uniform(-0.1, 1.1, size=(2, 3, 24, 2)).astype("float32")  # [2, 3, 24, 2]
COARSE_CENTRES = np.array(
    [[((j + 0.5) / 6, (i + 0.5) / 4) for i in range(4) for j in range(6)]] * 2, "float32"
)  # [2, 24, 2]: the centre of every pixel of COARSE

# Costs: logits [2, 4, 7] with saturated values, targets [2, 3, 7] binary, soft and empty.
LOGITS = RNG.normal(0.0, 4.0, size=(2, 4, 7)).astype("float32")
LOGITS[0, 0] = [100.0, -100.0, 100.0, -100.0, 100.0, -100.0, 0.0]
LOGITS[1, 3] = -100.0
TARGETS = (RNG.uniform(size=(2, 3, 7)) < 0.5).astype("float32")
TARGETS[0, 2] = 0.0  # empty
TARGETS[1, 0] = RNG.uniform(size=7)  # soft (a target read between pixels)
BINARY = TARGETS.copy()
BINARY[1, 0] = BINARY[1, 0] > 0.5

PAIRWISE = [
    (pairwise_sigmoid_bce, np_bce),
    (pairwise_sigmoid_focal, np_focal_pairwise),
    (pairwise_dice, np_dice),
]
ELEMENTWISE = [
    (elementwise_sigmoid_bce, np_bce),
    (elementwise_sigmoid_focal, np_focal_criterion),
    (elementwise_dice, np_dice),
]


# ----------------------------------------------------------------------------- point_sample


def test_point_sample_matches_the_reference_at_borders_corners_and_outside():
    for masks in (PRED_MASKS, COARSE, FINE):
        points = SHARED_POINTS
        got = to_numpy(point_sample(masks, points))
        assert got.shape == (2, masks.shape[1], 24) and got.dtype == np.float32
        np.testing.assert_allclose(got, np_point_sample(masks, points), rtol=1e-5, atol=1e-5)
    per_mask = to_numpy(point_sample(PRED_MASKS, PER_MASK_POINTS))
    assert per_mask.shape == (2, 3, 24)
    np.testing.assert_allclose(
        per_mask, np_point_sample(PRED_MASKS, PER_MASK_POINTS), rtol=1e-5, atol=1e-5
    )


def test_point_sample_hand_values():
    masks = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], "float32")  # [1, 1, 2, 2]
    points = np.array(
        [
            [
                [0.25, 0.25],
                [0.75, 0.75],
                [0.5, 0.5],
                [0.0, 0.0],
                [1.0, 1.0],
                [0.5, 0.0],
                [-0.25, 0.25],
                [1.25, 0.75],
                [2.0, 2.0],
            ]
        ],
        "float32",
    )
    # Centres read their pixel; the middle reads the mean; a corner reads a quarter of
    # its pixel (the rest is zero padding); half a pixel out reads nothing.
    expected = [[[0.0, 3.0, 1.5, 0.0, 0.75, 0.25, 0.0, 0.0, 0.0]]]
    np.testing.assert_allclose(to_numpy(point_sample(masks, points)), expected, atol=1e-6)


def test_point_sample_reads_targets_at_twice_the_resolution_at_the_same_points():
    coarse = to_numpy(point_sample(COARSE, COARSE_CENTRES))  # [2, 2, 24]
    fine = to_numpy(point_sample(FINE, COARSE_CENTRES))
    np.testing.assert_allclose(coarse, COARSE.reshape(2, 2, 24), atol=1e-6)
    np.testing.assert_allclose(fine, COARSE.reshape(2, 2, 24), atol=1e-6)
    assert np.all(fine[1, 1] == 0.0)  # the empty target reads zeros everywhere


def test_point_sample_of_bool_masks_and_dtypes():
    as_bool = to_numpy(point_sample(FINE.astype(bool), SHARED_POINTS))
    assert as_bool.dtype == np.dtype(keras.config.floatx())
    np.testing.assert_allclose(as_bool, to_numpy(point_sample(FINE, SHARED_POINTS)), atol=1e-6)
    half = point_sample(PRED_MASKS.astype("float16"), SHARED_POINTS)
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(
        to_numpy(half).astype("float32"),
        np_point_sample(PRED_MASKS.astype("float16"), SHARED_POINTS),
        rtol=2e-3,
        atol=2e-2,
    )


def test_point_sample_gradient_is_the_sum_of_the_bilinear_weights():
    value, (mask_grad, point_grad) = value_and_grads(point_sample, PRED_MASKS, SHARED_POINTS)
    np.testing.assert_allclose(value, np_point_sample(PRED_MASKS, SHARED_POINTS), atol=1e-4)
    # d sum(values) / d mask[i, j] = sum over the points of the weight of pixel (i, j).
    weights = np.zeros_like(PRED_MASKS, dtype="float64")
    for i in range(4):
        for j in range(6):
            unit = np.zeros((2, 3, 4, 6))
            unit[:, :, i, j] = 1.0
            weights[:, :, i, j] = np_point_sample(unit, SHARED_POINTS).sum(-1)
    np.testing.assert_allclose(mask_grad, weights, atol=1e-5)
    assert np.all(np.isfinite(point_grad))


def test_point_sample_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"Expected `masks` of shape \[B, M, H, W\]"):
        point_sample(np.zeros((2, 4, 6), "float32"), SHARED_POINTS)
    with pytest.raises(ValueError, match=r"Expected `points` of shape \[B, P, 2\]"):
        point_sample(PRED_MASKS, np.zeros((2, 24, 3), "float32"))
    with pytest.raises(ValueError, match=r"Received: points.shape=\(24, 2\)"):
        point_sample(PRED_MASKS, np.zeros((24, 2), "float32"))


# ----------------------------------------------------------------------------- sampling


def test_uniform_points_shape_range_and_seeds():
    first = to_numpy(uniform_points(2, 50, seed=1))
    assert first.shape == (2, 50, 2) and first.dtype == np.float32
    assert np.all((first >= 0.0) & (first < 1.0))
    np.testing.assert_array_equal(first, to_numpy(uniform_points(2, 50, seed=1)))
    assert not np.allclose(first, to_numpy(uniform_points(2, 50, seed=2)))
    generator = keras.random.SeedGenerator(3)
    draw1 = to_numpy(uniform_points(2, 50, seed=generator))
    draw2 = to_numpy(uniform_points(2, 50, seed=generator))
    assert not np.allclose(draw1, draw2)  # new points at each call


def uncertain_logits() -> np.ndarray:
    """[2, 3, 8, 8]: smooth random logits whose |logit| has no ties."""
    grid = np.linspace(-1.0, 1.0, 8)
    base = grid[None, :] * 4.0 + grid[:, None] * 2.5  # [8, 8]
    offsets = np.arange(6).reshape(2, 3, 1, 1) * 0.37 - 1.0
    return (base + offsets + RNG.normal(0.0, 0.3, size=(2, 3, 8, 8))).astype("float32")


def test_importance_points_keep_the_most_uncertain_candidates():
    logits = uncertain_logits()
    num_points, seed = 40, 11  # C = 120 candidates, K = 30 chosen, 10 fresh
    points = to_numpy(importance_points(logits, num_points, seed=seed))
    assert points.shape == (2, 3, 40, 2) and points.dtype == np.float32
    assert np.all((points >= 0.0) & (points < 1.0))
    # The same draw, made separately: the candidates first, the fresh points last.
    draws = to_numpy(keras.random.uniform((2, 3, 130, 2), dtype="float32", seed=seed))
    candidates, fresh = draws[:, :, :120], draws[:, :, 120:]
    np.testing.assert_array_equal(points[:, :, 30:], fresh)
    uncertainty = np.abs(np_point_sample(logits, candidates))  # [2, 3, 120]
    for b in range(2):
        for m in range(3):
            order = np.argsort(uncertainty[b, m], kind="stable")
            expected = candidates[b, m, np.sort(order[:30])]  # in the order drawn
            np.testing.assert_allclose(points[b, m, :30], expected, atol=0)
            chosen = np.abs(
                np_point_sample(logits[b : b + 1, m : m + 1], points[None, None, b, m, :30])
            )
            assert chosen.max() <= uncertainty[b, m, order[30]]  # the threshold


def test_importance_points_ties_take_the_first_drawn_and_many_rows():
    # 300 rows of 600 candidates (K = 150), checked against a stable sort of the
    # uncertainty read by point_sample itself (the same float32 values): mask (0, 0)
    # is all zeros (every candidate tied: the first 150 drawn are chosen), mask (1, 5)
    # zero on its left half (ties among the most uncertain).
    logits = RNG.normal(0.0, 3.0, size=(3, 100, 8, 8)).astype("float32")
    logits[0, 0] = 0.0
    logits[1, 5, :, :4] = 0.0
    points = to_numpy(importance_points(logits, 200, seed=9))  # C = 600, K = 150, 50 fresh
    draws = to_numpy(keras.random.uniform((3, 100, 650, 2), dtype="float32", seed=9))
    uncertainty = np.abs(to_numpy(point_sample(logits, draws[:, :, :600])))  # [3, 100, 600]
    order = np.argsort(uncertainty, axis=2, kind="stable")[:, :, :150]  # ties: first drawn
    expected = np.take_along_axis(draws, np.sort(order, axis=2)[..., None], axis=2)
    np.testing.assert_array_equal(points[:, :, :150], expected)
    np.testing.assert_array_equal(points[0, 0, :150], draws[0, 0, :150])
    np.testing.assert_array_equal(points[:, :, 150:], draws[:, :, 600:])


def test_importance_points_hand_made_uncertain_region():
    logits = np.full((1, 2, 16, 16), 30.0, "float32")
    logits[0, 0, :, 8:] = 0.0  # mask 0: uncertain on the right half
    logits[0, 1, 8:, :] = -0.0  # mask 1: uncertain on the bottom half
    logits[0, 1, :8, :] = -30.0
    points = to_numpy(importance_points(logits, 64, oversample_ratio=4.0, seed=5))
    # 48 chosen of 256 candidates: far more than 48 fall well inside each uncertain half.
    assert np.all(points[0, 0, :48, 0] > 0.5 - 1 / 32)
    assert np.all(points[0, 1, :48, 1] > 0.5 - 1 / 32)


def test_importance_points_seeds_ratios_and_no_gradient():
    logits = uncertain_logits()
    same = to_numpy(importance_points(logits, 16, seed=4))
    np.testing.assert_array_equal(same, to_numpy(importance_points(logits, 16, seed=4)))
    assert not np.allclose(same, to_numpy(importance_points(logits, 16, seed=5)))
    generator = keras.random.SeedGenerator(6)
    assert not np.allclose(
        to_numpy(importance_points(logits, 16, seed=generator)),
        to_numpy(importance_points(logits, 16, seed=generator)),
    )
    # importance_ratio 0: fresh uniform points only; 1: chosen candidates only.
    np.testing.assert_array_equal(
        to_numpy(importance_points(logits, 16, importance_ratio=0.0, seed=4)),
        to_numpy(keras.random.uniform((2, 3, 64, 2), dtype="float32", seed=4))[:, :, 48:],
    )
    assert to_numpy(importance_points(logits, 16, importance_ratio=1.0, seed=4)).shape == (
        2,
        3,
        16,
        2,
    )

    # No gradient through the choice: reading the logits at their own importance points
    # has the gradient of reading them at those points held fixed.
    def read_at_own_points(x):
        return point_sample(x, importance_points(x, 16, seed=4))

    chosen = to_numpy(importance_points(logits, 16, seed=4))
    value, (grad,) = value_and_grads(read_at_own_points, logits)
    fixed_value, (fixed_grad, _) = value_and_grads(point_sample, logits, chosen)
    np.testing.assert_allclose(value, fixed_value, atol=1e-5)
    np.testing.assert_allclose(grad, fixed_grad, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_points": -1}, r"`num_points` to be an integer >= 0"),
        ({"num_points": 4.0}, r"`num_points` to be an integer >= 0"),
        ({"oversample_ratio": 0.5}, r"`oversample_ratio` to be a number >= 1"),
        ({"importance_ratio": 1.5}, r"`importance_ratio` to be a number in \[0, 1\]"),
        ({"seed": "a"}, r"`seed` to be an int, a `keras.random.SeedGenerator`, None, or an"),
    ],
)
def test_importance_points_rejects_bad_arguments(kwargs, match):
    arguments = {"num_points": 4, "seed": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        importance_points(uncertain_logits(), **arguments)


def test_importance_points_rejects_bad_logits():
    with pytest.raises(ValueError, match=r"`mask_logits` of shape \[B, M, h, w\]"):
        importance_points(np.zeros((2, 8, 8), "float32"), 4, seed=1)


# ----------------------------------------------------------------------------- costs


@pytest.mark.parametrize(("fn", "reference"), PAIRWISE, ids=lambda f: getattr(f, "__name__", ""))
def test_pairwise_costs_match_the_reference(fn, reference):
    for targets in (TARGETS, BINARY, BINARY.astype(bool)):
        got = to_numpy(fn(LOGITS, targets))
        assert got.shape == (2, 4, 3) and got.dtype == np.float32
        np.testing.assert_allclose(
            got, np_pairwise(reference, LOGITS, targets), rtol=1e-5, atol=1e-5
        )
    unbatched = to_numpy(fn(LOGITS[0], TARGETS[0]))  # [Q, P] and [M, P]
    np.testing.assert_allclose(unbatched, np_pairwise(reference, LOGITS, TARGETS)[0], atol=1e-5)


@pytest.mark.parametrize(("fn", "reference"), ELEMENTWISE, ids=lambda f: getattr(f, "__name__", ""))
def test_elementwise_costs_match_the_reference(fn, reference):
    matched = TARGETS[:, [0, 1, 2, 0]]  # [2, 4, 7], soft and empty targets among them
    for targets in (matched, matched > 0.5):
        got = to_numpy(fn(LOGITS, targets))
        assert got.shape == (2, 4) and got.dtype == np.float32
        np.testing.assert_allclose(
            got, np_elementwise(reference, LOGITS, targets), rtol=1e-5, atol=1e-5
        )


def test_pairwise_and_elementwise_agree_on_binary_targets():
    for (pairwise, _), (elementwise, _) in zip(PAIRWISE, ELEMENTWISE, strict=True):
        matrix = to_numpy(pairwise(LOGITS, BINARY))  # [2, 4, 3]
        pairs = to_numpy(elementwise(LOGITS[:, :3], BINARY))  # query i with target i
        np.testing.assert_allclose(np.diagonal(matrix, axis1=1, axis2=2), pairs, atol=1e-5)


def test_focal_parameters():
    for alpha, gamma in ((0.5, 0.0), (1.0, 0.5), (0.0, 3.0)):
        got = to_numpy(pairwise_sigmoid_focal(LOGITS, BINARY, alpha=alpha, gamma=gamma))
        expected = np_pairwise(
            lambda x, y, a=alpha, g=gamma: np_focal_pairwise(x, y, a, g), LOGITS, BINARY
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        got = to_numpy(elementwise_sigmoid_focal(LOGITS[:, :3], TARGETS, alpha=alpha, gamma=gamma))
        expected = np_elementwise(
            lambda x, y, a=alpha, g=gamma: np_focal_criterion(x, y, a, g), LOGITS[:, :3], TARGETS
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for bad in ({"alpha": 1.5}, {"alpha": True}, {"gamma": -1.0}, {"gamma": float("inf")}):
        with pytest.raises(ValueError, match=r"Expected `(alpha|gamma)`"):
            pairwise_sigmoid_focal(LOGITS, BINARY, **bad)
        with pytest.raises(ValueError, match=r"Expected `(alpha|gamma)`"):
            elementwise_sigmoid_focal(LOGITS, LOGITS, **bad)


def test_costs_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"the same P points"):
        pairwise_dice(LOGITS, TARGETS[:, :, :5])
    with pytest.raises(ValueError, match=r"the same P points"):
        pairwise_sigmoid_bce(LOGITS, TARGETS[0])
    with pytest.raises(ValueError, match=r"of the same shape \[..., P\]"):
        elementwise_dice(LOGITS, TARGETS)


def all_costs(logits, targets):
    """Every cost of (logits [2, 4, P], targets [2, 3, P]), flattened into one vector."""
    matched = ops.take(targets, [0, 1, 2, 0], axis=1)  # [2, 4, P]
    parts = [fn(logits, targets) for fn, _ in PAIRWISE]
    parts += [fn(logits, matched) for fn, _ in ELEMENTWISE]
    return ops.concatenate([ops.reshape(part, (-1,)) for part in parts], axis=0)


def np_all_costs(logits, targets):
    matched = np.asarray(targets)[:, [0, 1, 2, 0]]
    parts = [np_pairwise(reference, logits, targets) for _, reference in PAIRWISE]
    parts += [np_elementwise(reference, logits, matched) for _, reference in ELEMENTWISE]
    return np.concatenate([part.reshape(-1) for part in parts])


def test_costs_values_and_gradients_finite_at_saturated_logits():
    logits = np.where(LOGITS > 0, 100.0, -100.0).astype("float32")
    logits[1, 2] = [1e4, -1e4, 30.0, -30.0, 0.0, 88.0, -88.0]
    value, (logit_grad, target_grad) = value_and_grads(all_costs, logits, TARGETS)
    np.testing.assert_allclose(value, np_all_costs(logits, TARGETS), rtol=1e-5, atol=1e-4)
    assert np.all(np.isfinite(logit_grad)) and np.all(np.isfinite(target_grad))
    # At the saturated logits the probability does not move: only BCE's gradient is left,
    # (p - y) / P for each pair the point is in, bounded.
    assert np.max(np.abs(logit_grad)) < 10.0


def test_costs_of_half_precision_with_many_points_are_float32_and_finite():
    rng = np.random.default_rng(1)
    logits = np.where(rng.uniform(size=(2, 4, 12544)) < 0.5, 30.0, -30.0).astype("float16")
    targets = (rng.uniform(size=(2, 3, 12544)) < 0.5).astype("float16")
    for dtype in ("float16", "bfloat16"):
        got = all_costs(ops.cast(logits, dtype), ops.cast(targets, dtype))
        assert keras.backend.standardize_dtype(got.dtype) == "float32"
        got = to_numpy(got)
        assert np.all(np.isfinite(got))
        expected = np.concatenate(
            [
                np_pairwise(np_bce, logits, targets).reshape(-1),
                np_pairwise(np_focal_pairwise, logits, targets).reshape(-1),
                np_pairwise(np_dice, logits, targets).reshape(-1),
            ]
        )
        np.testing.assert_allclose(got[: expected.size], expected, rtol=1e-4, atol=1e-4)


def test_compiled_sampling_and_costs():
    """point_sample at two resolutions, importance points and every cost, under XLA."""
    points = to_numpy(uniform_points(2, 32, seed=9))  # [2, 32, 2]

    def step(masks, targets, points):
        logits = point_sample(masks, points)  # [2, 3, 32]
        labels = point_sample(targets, points)  # [2, 2, 32], read at twice the resolution
        chosen = importance_points(masks, 8, seed=2)  # [2, 3, 8, 2]: 24 candidates, 6 chosen
        # The same draw in the same compiled program (TensorFlow's random numbers for a
        # seed may differ between eager and XLA; within one program they agree).
        draws = keras.random.uniform((2, 3, 26, 2), dtype="float32", seed=2)
        at_chosen = point_sample(masks, chosen)  # [2, 3, 8]
        costs = (
            pairwise_sigmoid_bce(logits, labels),
            pairwise_sigmoid_focal(logits, labels),
            pairwise_dice(logits, labels),
            elementwise_sigmoid_bce(at_chosen, at_chosen > 0),
        )
        return (*costs, chosen, draws)

    *costs, chosen, draws = (to_numpy(x) for x in jit(step)(PRED_MASKS, FINE.astype(bool), points))
    logits = np_point_sample(PRED_MASKS, points)
    labels = np_point_sample(FINE, points)
    for cost, (_, reference) in zip(costs[:3], PAIRWISE, strict=True):
        np.testing.assert_allclose(cost, np_pairwise(reference, logits, labels), atol=1e-4)
    at_chosen = np_point_sample(PRED_MASKS, chosen)
    np.testing.assert_allclose(
        costs[3], np_elementwise(np_bce, at_chosen, at_chosen > 0), atol=1e-4
    )
    candidates = draws[:, :, :24]
    np.testing.assert_array_equal(chosen[:, :, 6:], draws[:, :, 24:])
    uncertainty = np.abs(np_point_sample(PRED_MASKS, candidates))  # [2, 3, 24]
    order = np.sort(np.argsort(uncertainty, axis=-1)[..., :6], axis=-1)  # in the order drawn
    expected = np.take_along_axis(candidates, order[..., None], axis=2)
    np.testing.assert_allclose(chosen[:, :, :6], expected, atol=0)


def test_unknown_batch_dimension():
    """Traced with an unknown batch on TensorFlow (`compiled`): shapes read at run time."""
    points = to_numpy(uniform_points(2, 24, seed=3))
    np.testing.assert_allclose(
        compiled(point_sample, PRED_MASKS, points),
        np_point_sample(PRED_MASKS, points),
        atol=1e-5,
    )
    chosen = compiled(lambda x: importance_points(x, 8, seed=1), PRED_MASKS)
    assert chosen.shape == (2, 3, 8, 2) and np.all((chosen >= 0.0) & (chosen < 1.0))
