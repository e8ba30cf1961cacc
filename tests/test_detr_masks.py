"""`DETRLoss` with masks (Contract 7): dict inputs, `MaskTerms`, MaskFormer and Mask2Former.

References are written here in NumPy and SciPy from the papers' criteria: MaskFormer's
(dense; every pixel) matching and loss, and the continuous value of the sampled terms.
Loss calls are compiled on JAX (`jax.jit`: one compile per shape, where eager JAX compiles
every operation) and eager elsewhere; the shapes are few and tiny (the test budget).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import BACKEND, to_numpy
from scipy.optimize import linear_sum_assignment as scipy_lsa
from test_masks import (
    np_dice,
    np_focal_criterion,
    np_focal_pairwise,
    np_point_sample,
    np_sigmoid,
    np_softplus,
)

from hungarian_loss import DETRLoss, MaskTerms

B, S, Q, K, M = 3, 2, 6, 4, 3  # images, sets, queries, classes, padded targets
H = W = 8  # predicted masks; targets at 8 x 8 or 16 x 16


_JITTED: dict[int, object] = {}


def run(fn, *args):
    """`fn(*args)` as NumPy: under `jax.jit` on JAX (compiled once per `fn`), eagerly elsewhere."""
    if BACKEND == "jax":
        import jax

        fn = _JITTED.setdefault(id(fn), jax.jit(fn))
    return keras.tree.map_structure(to_numpy, fn(*args))


def make_data(seed: int, scale: int = 1, sets: int = S):
    """Padded targets of 3 images (2 targets, none, 3 with an empty mask) and predictions."""
    rng = np.random.default_rng(seed)
    labels = np.array([[1, 3, -1], [-1, -1, -1], [0, 2, 1]], "int32")
    masks = (rng.random((B, M, H * scale, W * scale)) < 0.4).astype("float32")
    masks[2, 1] = 0.0  # an empty target mask: legal
    masks[labels < 0] = 0.0
    y_true = {"labels": labels, "masks": masks}
    y_pred = {
        "logits": rng.normal(size=(B, sets, Q, K + 1)).astype("float32"),
        "masks": (2.0 * rng.normal(size=(B, sets, Q, H, W))).astype("float32"),
    }
    return y_true, y_pred


def downsample(masks: np.ndarray, scale: int) -> np.ndarray:
    """Targets at `scale` times the predictions' resolution, read at the predictions' pixel
    centres: the mean of each `scale x scale` block (for scale 2, bilinear at block centres)."""
    if scale == 1:
        return masks
    b, m, h, w = masks.shape
    return masks.reshape(b, m, h // scale, scale, w // scale, scale).mean(axis=(3, 5))


def np_criterion(y_true, y_pred, *, mask_loss, weights, matching, eos_coef=0.1):
    """A MaskFormer-style criterion on every pixel, in float64: total, matches [B, S, M], terms.

    The total is the per-set criterion (normalized by the batch's number of masks; the
    cross-entropy by its total weight) averaged over the sets, what `reduction="sum"` and
    `normalization="batch"` give.
    """
    labels = y_true["labels"]
    targets = downsample(y_true["masks"], y_true["masks"].shape[-1] // W).astype("float64")
    logits = y_pred["logits"].astype("float64")
    masks = y_pred["masks"].astype("float64")
    num_sets, num_classes = logits.shape[1], logits.shape[-1] - 1
    num_masks = max(int(np.sum(labels >= 0)), 1)
    pair_mask = np_focal_pairwise if mask_loss == "focal" else np_bce_mean
    term_mask = np_focal_criterion if mask_loss == "focal" else np_bce_mean
    matches = np.full((B, num_sets, M), -1)
    totals = []
    terms = {"class": np.zeros((B, num_sets)), "mask": np.zeros((B, num_sets)),
             "dice": np.zeros((B, num_sets))}  # fmt: skip
    for s in range(num_sets):
        ce_sum, ce_weight, mask_sum, dice_sum = 0.0, 0.0, 0.0, 0.0
        for b in range(B):
            real = np.flatnonzero(labels[b] >= 0)
            x = logits[b, s]
            log_p = x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True))
            log_p -= x.max(-1, keepdims=True)
            classes = np.full(Q, num_classes)
            weight = np.full(Q, eos_coef)
            if real.size:
                flat_p = masks[b, s].reshape(Q, -1)
                flat_t = targets[b, real].reshape(real.size, -1)
                cost = np.zeros((real.size, Q))
                for i in range(real.size):
                    for q in range(Q):
                        cost[i, q] = (
                            -matching[0] * np.exp(log_p[q, labels[b, real[i]]])
                            + matching[1] * pair_mask(flat_p[q], flat_t[i])
                            + matching[2] * np_dice(flat_p[q], flat_t[i])
                        )
                rows, cols = scipy_lsa(cost)
                for i, q in zip(rows, cols, strict=True):
                    matches[b, s, real[i]] = q
                    classes[q], weight[q] = labels[b, real[i]], 1.0
                    m = term_mask(flat_p[q], flat_t[i])
                    d = np_dice(flat_p[q], flat_t[i])
                    mask_sum, dice_sum = mask_sum + m, dice_sum + d
                    terms["mask"][b, s] += m / num_masks
                    terms["dice"][b, s] += d / num_masks
            ce = -log_p[np.arange(Q), classes]
            ce_sum, ce_weight = ce_sum + np.sum(weight * ce), ce_weight + np.sum(weight)
            terms["class"][b, s] = np.sum(weight * ce)
        terms["class"][:, s] /= ce_weight
        totals.append(
            weights[0] * ce_sum / ce_weight
            + weights[1] * mask_sum / num_masks
            + weights[2] * dice_sum / num_masks
        )
    return float(np.mean(totals)), matches, {k: v.mean(axis=1) for k, v in terms.items()}


def np_bce_mean(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np_softplus(x) - x * y))


def call_all(loss: DETRLoss):
    def fn(y_true, y_pred):
        return loss(y_true, y_pred), loss.match(y_true, y_pred), loss.terms(y_true, y_pred)

    return fn


# ----- dense mode against the reference ----------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2], ids=["same-resolution", "targets-at-2x"])
def test_maskformer_recipe_equals_the_reference(scale: int) -> None:
    y_true, y_pred = make_data(0, scale)
    loss = DETRLoss.maskformer()
    total, matches, terms = run(call_all(loss), y_true, y_pred)
    expected, expected_matches, expected_terms = np_criterion(
        y_true, y_pred, mask_loss="focal", weights=(1.0, 20.0, 1.0), matching=(1.0, 20.0, 1.0)
    )
    np.testing.assert_array_equal(matches, expected_matches)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {"class", "mask", "dice"}
    for name, value in expected_terms.items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.all(matches[1] == -1)  # the image without targets


def test_dense_bce_with_boxes_and_other_weights_equals_the_reference() -> None:
    """Mask2Former's terms on every pixel, one set, with box terms beside them (every box
    the same: they add 0), matching weights apart from the loss's."""
    y_true, y_pred = make_data(1, sets=1)
    box = np.array([0.5, 0.5, 0.2, 0.2], "float32")
    y_true = {**y_true, "boxes": np.broadcast_to(box, (B, M, 4))}
    y_pred = {**y_pred, "boxes": np.broadcast_to(box, (B, 1, Q, 4))}
    terms = MaskTerms(mask_weight=5.0, dice_weight=3.0, num_points=None, matching_weights=(4, 2))
    loss = DETRLoss(
        class_weight=2.0, l1_weight=5.0, giou_weight=2.0, matching_weights=(1.5, 1.0, 1.0),
        masks=terms, normalization="batch", reduction="sum",
    )  # fmt: skip
    assert loss.term_names() == ("class", "l1", "giou", "mask", "dice")
    total, matches, values = run(call_all(loss), y_true, y_pred)
    expected, expected_matches, expected_terms = np_criterion(
        y_true, y_pred, mask_loss="bce", weights=(2.0, 5.0, 3.0), matching=(1.5, 4.0, 2.0)
    )
    np.testing.assert_array_equal(matches, expected_matches)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(values["mask"], expected_terms["mask"], rtol=1e-5)
    np.testing.assert_allclose(values["l1"], 0.0, atol=1e-6)


# ----- sampled mode ----------------------------------------------------------------------------


def test_sampled_terms_are_unbiased_estimates_of_the_continuous_value() -> None:
    """Uniform points (importance ratio 0): the mask term's mean over 96 copies of one image
    is within 4 standard errors of its value on the continuous (bilinear) masks, computed
    by NumPy on a 64 x 64 grid of points. The dice term, a ratio of sums, has a bias of
    order 1 / P besides: within 4 standard errors plus 0.01."""
    copies, points = 96, 64
    rng = np.random.default_rng(7)
    target = np.zeros((1, 1, 16, 16), "float32")
    target[0, 0, 4:12, 2:10] = 1.0  # a square, at twice the predictions' resolution
    logits = np.full((1, 1, H, W), -3.0, "float32")
    logits[0, 0, 2:6, 1:5] = 3.0 + rng.normal(size=(4, 4))
    y_true = {
        "labels": np.zeros((copies, 1), "int32"),
        "masks": np.repeat(target, copies, axis=0),
    }
    y_pred = {
        "logits": np.zeros((copies, 1, K + 1), "float32"),
        "masks": np.repeat(logits, copies, axis=0),
    }
    terms = MaskTerms(num_points=points, importance_ratio=0.0, seed=3)
    loss = DETRLoss(l1_weight=0.0, giou_weight=0.0, matching_weights=(1, 0, 0), masks=terms)
    values = run(lambda t, p: loss.terms(t, p), y_true, y_pred)
    grid = (np.arange(64) + 0.5) / 64
    dense_points = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(1, -1, 2)
    x = np_point_sample(logits, dense_points)[0, 0]
    y = np_point_sample(target, dense_points)[0, 0]
    expected_mask = np.mean(np_softplus(x) - x * y)
    expected_dice = 1 - (2 * np.mean(np_sigmoid(x) * y) + 1 / x.size) / (
        np.mean(np_sigmoid(x)) + np.mean(y) + 1 / x.size
    )
    for name, expected, slack in (("mask", expected_mask, 0.0), ("dice", expected_dice, 0.01)):
        draws = values[name]
        standard_error = np.std(draws) / np.sqrt(copies)
        assert np.std(draws) > 0  # the copies drew different points
        assert abs(np.mean(draws) - expected) < 4 * standard_error + slack, name


def test_seeds_are_reproducible_and_points_follow_the_predictions() -> None:
    y_true, y_pred = make_data(2)
    loss = DETRLoss.mask2former(num_points=32, seed=11)
    first, again = run(loss, y_true, y_pred), run(loss, y_true, y_pred)
    assert float(first) == float(again)  # the same seed and predictions: the same points
    masks = keras.ops.convert_to_tensor(y_pred["masks"])
    seed_a = to_numpy(loss.masks.call_seed(masks))
    seed_b = to_numpy(loss.masks.call_seed(masks + 0.01))  # the next step's predictions
    seed_c = to_numpy(MaskTerms(seed=12).call_seed(masks))
    assert seed_a.shape == (2,) and seed_a[0] != seed_b[0] and seed_a[0] != seed_c[0]


# ----- dict inputs, errors ---------------------------------------------------------------------


def test_box_only_dict_inputs_equal_the_packed_tensors() -> None:
    rng = np.random.default_rng(3)
    labels = np.array([[2, 0, -1], [1, -1, -1], [-1, -1, -1]], "int32")
    boxes = rng.uniform(0.2, 0.5, (B, M, 4)).astype("float32")
    y_true = {"labels": labels, "boxes": boxes}
    y_pred = {
        "logits": rng.normal(size=(B, S, Q, K + 1)).astype("float32"),
        "boxes": rng.uniform(0.2, 0.5, (B, S, Q, 4)).astype("float32"),
    }
    packed_true = np.concatenate([boxes, labels[..., None]], axis=-1).astype("float32")
    packed_true[labels < 0] = -1.0
    packed_pred = np.concatenate([y_pred["boxes"], y_pred["logits"]], axis=-1)
    loss = DETRLoss.detr()
    from_dicts = run(call_all(loss), y_true, y_pred)
    from_tensors = run(call_all(loss), packed_true, packed_pred)
    assert float(from_dicts[0]) == pytest.approx(float(from_tensors[0]), rel=1e-6)
    np.testing.assert_array_equal(from_dicts[1], from_tensors[1])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t, p: (t, p["masks"]), "both dicts or both tensors"),
        (lambda t, p: ({"labels": t["labels"]}, p), "keys 'labels', 'masks'"),
        (lambda t, p: ({**t, "boxes": np.zeros((B, M, 4), "float32")}, p), "'boxes' in both"),
        (lambda t, p: (t, {**p, "masks": p["masks"][:, :, :2]}), r"y_pred\['masks'\] of shape"),
        (lambda t, p: ({**t, "masks": t["masks"][:, :2]}, p), r"y_true\['masks'\] of shape"),
        (lambda t, p: (t, {**p, "masks": p["masks"][:, 0]}), r"y_true\['masks'\] of shape"),
    ],
    ids=["tensor-masks", "missing-key", "boxes-one-side", "queries", "targets", "rank"],
)
def test_bad_dict_inputs_raise_at_trace_time(change, match) -> None:
    y_true, y_pred = make_data(4)
    with pytest.raises(ValueError, match=match):
        DETRLoss.mask2former(num_points=8)(*change(y_true, y_pred))


def test_mask_terms_options_are_checked_and_serialize() -> None:
    for kwargs, match in (
        ({"mask_loss": "l2"}, "mask_loss"),
        ({"num_points": 0}, "num_points"),
        ({"oversample_ratio": 0.5}, "oversample_ratio"),
        ({"importance_ratio": 1.5}, "importance_ratio"),
        ({"matching_weights": (1.0,)}, "matching_weights"),
        ({"dice_weight": -1.0}, "dice_weight"),
        ({"seed": "a"}, "seed"),
    ):
        with pytest.raises(ValueError, match=match):
            MaskTerms(**kwargs)
    with pytest.raises(ValueError, match="denoising_groups"):
        DETRLoss(masks=MaskTerms(), denoising_groups=1)
    terms = MaskTerms(
        mask_weight=3.0, dice_weight=2.0, mask_loss="focal", num_points=100,
        oversample_ratio=2.0, importance_ratio=0.5, matching_weights=(1.0, 4.0),
        focal_alpha=0.3, focal_gamma=1.5, seed=keras.random.SeedGenerator(5),
    )  # fmt: skip
    loss = DETRLoss.mask2former(masks=terms, name="seg")
    serialized = keras.saving.serialize_keras_object(loss)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert revived.get_config() == loss.get_config()
    assert isinstance(revived.masks.seed, keras.random.SeedGenerator)
    assert revived.masks.matching_weights == (1.0, 4.0)
    assert DETRLoss.maskformer().get_config()["masks"]["num_points"] is None
