"""`DETRLoss` with masks (Contract 7): dict inputs, `MaskTerms`, MaskFormer and Mask2Former.

References are written here in NumPy and SciPy from the papers' criteria: MaskFormer's
(dense; every pixel) matching and loss, and the continuous value of the sampled terms.
Loss calls are compiled on JAX (`jax.jit`: one compile per shape, where eager JAX compiles
every operation) and eager elsewhere; the shapes are few and tiny (the test budget).
"""

from __future__ import annotations

import json

import hypothesis.strategies as st
import keras
import numpy as np
import pytest
from helpers import BACKEND, to_numpy
from hypothesis import HealthCheck, given, settings
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


_JITTED: dict[object, object] = {}


def run(fn, *args):
    """`fn(*args)` as NumPy: under `jax.jit` on JAX (compiled once per `fn`), eagerly elsewhere."""
    if BACKEND == "jax":
        import jax

        fn = _JITTED.setdefault(fn, jax.jit(fn))
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
    batch = labels.shape[0]
    targets = downsample(y_true["masks"], y_true["masks"].shape[-1] // W).astype("float64")
    logits = y_pred["logits"].astype("float64")
    masks = y_pred["masks"].astype("float64")
    num_sets, num_classes = logits.shape[1], logits.shape[-1] - 1
    num_masks = max(int(np.sum(labels >= 0)), 1)
    pair_mask = np_focal_pairwise if mask_loss == "focal" else np_bce_mean
    term_mask = np_focal_criterion if mask_loss == "focal" else np_bce_mean
    matches = np.full((batch, num_sets, M), -1)
    totals = []
    terms = {"class": np.zeros((batch, num_sets)), "mask": np.zeros((batch, num_sets)),
             "dice": np.zeros((batch, num_sets))}  # fmt: skip
    for s in range(num_sets):
        ce_sum, ce_weight, mask_sum, dice_sum = 0.0, 0.0, 0.0, 0.0
        for b in range(batch):
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
    seed_a = run(loss.masks.call_seed, y_pred["masks"])
    seed_b = run(loss.masks.call_seed, y_pred["masks"] + 0.01)  # the next step's predictions
    seed_c = run(MaskTerms(seed=12).call_seed, y_pred["masks"])
    assert seed_a.shape == (2,) and seed_a[0] != seed_b[0] and seed_a[0] != seed_c[0]
    # A SeedGenerator seed, twice (on JAX in one `jax.jit`: it is read, not advanced there).
    stateful = DETRLoss.mask2former(num_points=32, seed=keras.random.SeedGenerator(3))
    values = [float(run(stateful, y_true, y_pred)) for _ in range(2)]
    assert np.all(np.isfinite(values))


# ----- dict inputs, errors ---------------------------------------------------------------------


# The dict inputs are unpacked by the same `keras.ops` on every backend, before anything
# backend-specific: two backends suffice (on JAX it costs two more compiles, 20-45 s).
@pytest.mark.backends("tensorflow", "torch")
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


# ----- no silent failures ----------------------------------------------------------------------


def test_broken_masks_follow_the_failure_policy() -> None:
    """NaN / inf mask logits and target masks with NaN or values outside [0, 1] make only
    their sample's loss non-finite; empty masks and an image without targets are legal."""
    y_true, y_pred = make_data(6, sets=1)
    y_true["masks"] = y_true["masks"].copy()
    y_pred["masks"] = y_pred["masks"].copy()
    y_pred["masks"][0, 0, 2, 3, 3] = np.nan  # a NaN in a query of image 0
    y_true["masks"][2, 0, 0, 0] = 1.5  # a target value outside [0, 1] in image 2
    loss = DETRLoss.mask2former(num_points=16, reduction=None, normalization="sample")

    def per_sample_loss(t, p):
        return loss(t, p)

    per_sample = run(per_sample_loss, y_true, y_pred)
    assert np.isnan(per_sample[0]) and np.isnan(per_sample[2])
    assert np.isfinite(per_sample[1]) and per_sample[1] > 0  # no targets: "no object" only
    y_pred["masks"][0, 0, 2, 3, 3] = np.inf  # inf in a query, no NaN: inf
    per_sample = run(per_sample_loss, y_true, y_pred)
    assert per_sample[0] == np.inf and np.isnan(per_sample[2])


def test_batch_normalization_leaves_out_a_broken_sample() -> None:
    """With `normalization="batch"`, a sample whose loss is NaN adds nothing to the counts
    the others are divided by: the good samples' losses equal those of the batch without
    it. (Before, its targets and "no object" weights entered the batch's totals.)"""
    y_true, y_pred = make_data(8, sets=1)
    broken = {k: v.copy() for k, v in y_true.items()}
    broken["labels"][2, 0] = K + 5  # a class id out of range: sample 2 is broken
    with_broken = run(DETRLoss.maskformer(reduction=None), broken, y_pred)
    keep = [0, 1]
    _, _, terms = np_criterion(
        {k: v[keep] for k, v in y_true.items()},
        {k: v[keep] for k, v in y_pred.items()},
        mask_loss="focal", weights=(1.0, 20.0, 1.0), matching=(1.0, 20.0, 1.0),
    )  # fmt: skip
    without = terms["class"] + 20.0 * terms["mask"] + terms["dice"]
    assert np.isnan(with_broken[2])
    np.testing.assert_allclose(with_broken[keep], without, rtol=1e-5)


@pytest.fixture(scope="module")
def large_logits():
    """Mask logits of +-60 and their loss in float32 (12544 points)."""
    rng = np.random.default_rng(9)
    y_true = {
        "labels": np.array([[0, 1], [2, -1]], "int32"),
        "masks": (rng.random((2, 2, 64, 64)) < 0.5).astype("float32"),
    }
    y_pred = {
        "logits": rng.normal(size=(2, 4, K + 1)).astype("float32"),
        "masks": (60.0 * np.sign(rng.normal(size=(2, 4, 32, 32)))).astype("float32"),
    }
    return y_true, y_pred, float(run(DETRLoss.mask2former(seed=0), y_true, y_pred))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stays_finite_on_12544_points_of_large_logits(large_logits, dtype) -> None:
    """Mask logits of +-60 at 12544 points: a sum of products that float16 would overflow
    (its largest value is 65504). The costs and terms accumulate in float32."""
    y_true, y_pred, reference = large_logits
    loss = DETRLoss.mask2former(seed=0, dtype=dtype)

    def in_half(t, p):
        half = {key: keras.ops.cast(value, dtype) for key, value in p.items()}
        return keras.ops.cast(loss(t, half), "float32")

    value = float(run(in_half, y_true, y_pred))
    assert np.isfinite(value) and reference > 10.0
    assert value == pytest.approx(reference, rel=0.05)  # other points (the hash), rounding


# ----- training --------------------------------------------------------------------------------


class SetModel(keras.Model):
    """A model with dict outputs, trained on a loss of the whole dict (the guide's idiom)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self.loss(y, y_pred, sample_weight)
        return loss + keras.ops.sum(self.losses) if self.losses else loss


def tiny_mask_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    logits = keras.layers.Reshape((4, K + 1))(keras.layers.Dense(4 * (K + 1))(hidden))
    masks = keras.layers.Reshape((4, H, W))(keras.layers.Dense(4 * H * W)(hidden))
    return SetModel(inputs, {"logits": logits, "masks": masks})


def tiny_mask_data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(8, 16)).astype("float32")
    labels = np.tile(np.array([[0, 2]], "int32"), (8, 1))
    labels[::2, 1] = -1
    masks = (rng.random((8, 2, 2 * H, 2 * W)) < 0.3).astype("float32")
    return x, {"labels": labels, "masks": masks}


def test_fit_lowers_the_loss_draws_new_points_each_step_and_repeats_with_its_seed() -> None:
    """`compile(loss=DETRLoss.mask2former(...))` + `fit` on dict outputs, compiled on every
    backend (JAX's stateless step included): the loss falls, each step's predictions give
    it another seed (new points), and the same seed and weights give the same losses."""
    x, y = tiny_mask_data()
    model = tiny_mask_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.3),
        loss=DETRLoss.mask2former(num_points=32, seed=0),
        jit_compile=BACKEND != "torch",
    )
    initial = model.get_weights()
    seeds: list[tuple[int, ...]] = []

    def record(epoch, logs):
        predicted = model(x)["masks"]
        seeds.append(tuple(to_numpy(model.loss.masks.call_seed(predicted)).tolist()))

    callback = keras.callbacks.LambdaCallback(on_epoch_begin=record)
    first = model.fit(x, y, batch_size=8, epochs=12, verbose=0, callbacks=[callback], shuffle=False)
    model.set_weights(initial)
    again = model.fit(x, y, batch_size=8, epochs=12, verbose=0, shuffle=False)
    losses = first.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    assert len(set(seeds)) == len(seeds)  # a new seed at every step
    np.testing.assert_allclose(again.history["loss"], losses, rtol=1e-5)


# One backend: what is saved (the loss's config) is backend-independent; the config round
# trip of every option runs in process on every backend above.
@pytest.mark.backends("tensorflow")
def test_keras_file_round_trip_in_a_fresh_process(tmp_path) -> None:
    import subprocess
    import sys
    import textwrap

    x, y = tiny_mask_data()
    model = tiny_mask_model()
    terms = MaskTerms(
        mask_weight=3.0, dice_weight=2.0, mask_loss="focal", num_points=24,
        oversample_ratio=2.0, importance_ratio=0.5, matching_weights=(1.0, 4.0),
        focal_alpha=0.3, focal_gamma=1.5, seed=4,
    )  # fmt: skip
    model.compile(loss=DETRLoss.mask2former(masks=terms, class_weight=1.5), jit_compile=True)
    expected = float(model.evaluate(x, y, batch_size=8, verbose=0))
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", x=x, **y)
    # The mask costs of `costs`, in a plain HungarianLoss, by name and as objects.
    from hungarian_loss import HungarianLoss, costs

    cost = costs.WeightedCost(
        [(costs.MaskFocalCost(alpha=0.3, gamma=1.5), 2.0), (costs.MaskBCECost(), 1.0)]
    )
    plain = [HungarianLoss(cost={"mask_bce": 5.0, "dice": 5.0}), HungarianLoss(cost=cost)]
    configs = [keras.saving.serialize_keras_object(loss) for loss in plain]
    (tmp_path / "costs.json").write_text(json.dumps(configs))
    script = textwrap.dedent(
        f"""
        import json
        import numpy as np, keras
        import hungarian_loss

        @keras.saving.register_keras_serializable(package="tests")
        class SetModel(keras.Model):
            def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                             training=True):
                return self.loss(y, y_pred, sample_weight)

        model = keras.saving.load_model({str(tmp_path / "model.keras")!r},
                                        custom_objects={{"SetModel": SetModel}})
        data = np.load({str(tmp_path / "data.npz")!r})
        y = {{"labels": data["labels"], "masks": data["masks"]}}
        configs = json.loads(open({str(tmp_path / "costs.json")!r}).read())
        revived = [keras.saving.deserialize_keras_object(config) for config in configs]
        print([keras.saving.serialize_keras_object(loss) for loss in revived] == configs)
        print(model.loss.masks)
        print(float(model.evaluate(data["x"], y, batch_size=8, verbose=0)))
        """
    )
    out = (
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        .stdout.strip()
        .split("\n")
    )
    assert out[-3] == "True"
    assert out[-2] == repr(terms)
    assert float(out[-1]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.backends("tensorflow")
def test_jit_compile_on_tensorflow_equals_eager_in_dense_mode() -> None:
    """XLA against eager (sampled mode is compiled by the fit test: its points differ, as
    TensorFlow's stateless generator differs between XLA and eager)."""
    import tensorflow as tf

    y_true, y_pred = make_data(12, scale=2)
    loss = DETRLoss.maskformer()
    compiled = tf.function(lambda t, p: loss(t, p), jit_compile=True)
    assert float(compiled(y_true, y_pred)) == pytest.approx(float(loss(y_true, y_pred)), rel=1e-5)


# ----- the failure policy, as a property -------------------------------------------------------

PROPERTY_LOSSES = {
    "dense": lambda: DETRLoss.maskformer(reduction=None, normalization="sample"),
    "sampled": lambda: DETRLoss.mask2former(num_points=8, reduction=None, normalization="sample"),
}
MASK_SPECIAL = [np.nan, 1.5, -0.5, 0.5]  # a NaN, values out of [0, 1], a soft value (legal)
PRED_SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 100.0, -100.0]
BAD_LABELS = [K + 1, 90, -2]


def property_step(mode: str):
    """Compiled once per mode: the per-sample loss, its gradients to the predictions, the
    matching; inputs labels, target masks, class logits, mask logits."""
    loss = PROPERTY_LOSSES[mode]()

    def value(labels, masks, logits, pred_masks):
        return loss({"labels": labels, "masks": masks}, {"logits": logits, "masks": pred_masks})

    def match(labels, masks, logits, pred_masks):
        return loss.match(
            {"labels": labels, "masks": masks}, {"logits": logits, "masks": pred_masks}
        )

    if BACKEND == "jax":
        import jax

        def total(logits, pred_masks, labels, masks):
            values = value(labels, masks, logits, pred_masks)
            return keras.ops.sum(values), values

        grad = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)

        @jax.jit
        def step(labels, masks, logits, pred_masks):
            (_, values), grads = grad(logits, pred_masks, labels, masks)
            return values, *grads, match(labels, masks, logits, pred_masks)

        return lambda *args: [to_numpy(x) for x in step(*args)]
    if BACKEND == "torch":
        import torch

        def step_torch(labels, masks, logits, pred_masks):
            logits, pred_masks = (torch.tensor(x, requires_grad=True) for x in (logits, pred_masks))
            values = value(labels, masks, logits, pred_masks)
            grads = torch.autograd.grad(values.sum(), (logits, pred_masks), allow_unused=True)
            grads = [np.zeros(x.shape, "float32") if g is None else to_numpy(g) for g, x in
                     zip(grads, (logits, pred_masks), strict=True)]  # fmt: skip
            return [to_numpy(values), *grads, to_numpy(match(labels, masks, logits, pred_masks))]

        return step_torch
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step_tf(labels, masks, logits, pred_masks):
        with tf.GradientTape() as tape:
            tape.watch([logits, pred_masks])
            values = value(labels, masks, logits, pred_masks)
            total = tf.reduce_sum(values)
        grads = tape.gradient(total, [logits, pred_masks])
        return values, *grads, match(labels, masks, logits, pred_masks)

    return lambda *args: [to_numpy(x) for x in step_tf(*args)]


_STEPS: dict[str, object] = {}


@st.composite
def broken_mask_batches(draw):
    """4 images, 3 padded targets, 5 queries: ordinary values with extreme ones mixed in,
    at rates hypothesis draws. The arrays come from a NumPy generator that hypothesis
    seeds (drawing each element from hypothesis took most of the test's time)."""
    batch, queries = 4, 5
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def mixed(base, special, rate):
        extreme = rng.choice(np.asarray(special, base.dtype), size=base.shape)
        return np.where(rng.random(base.shape) < rate, extreme, base)

    rates = st.sampled_from([0.0, 0.005, 0.05, 0.2])
    labels = rng.integers(-1, K, size=(batch, M)).astype("int32")
    labels = mixed(labels, BAD_LABELS, draw(rates)).astype("int32")
    masks = (rng.random((batch, M, H, W)) < 0.4).astype("float32")
    masks = mixed(masks, MASK_SPECIAL, draw(rates) / 10).astype("float32")
    logits = rng.uniform(-3.0, 3.0, (batch, queries, K + 1)).astype("float32")
    logits = mixed(logits, PRED_SPECIAL, draw(rates) / 2).astype("float32")
    pred_masks = rng.uniform(-3.0, 3.0, (batch, queries, 4, 4)).astype("float32")
    pred_masks = mixed(pred_masks, PRED_SPECIAL, draw(rates) / 10).astype("float32")
    return labels, masks, logits, pred_masks


@pytest.mark.parametrize("mode", list(PROPERTY_LOSSES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=broken_mask_batches())
def test_failure_policy_holds_for_masks(mode: str, batch) -> None:
    """A broken target (class id, NaN or out-of-range mask value) makes its sample NaN and
    is never matched; NaN in any prediction of a sample makes it NaN, an infinity inf; a
    finite loss has finite gradients, a non-finite one none; the others are matched in full."""
    labels, masks, logits, pred_masks = batch
    step = _STEPS.setdefault(mode, property_step(mode))
    value, grad_logits, grad_masks, indices = step(labels, masks, logits, pred_masks)
    real = labels != -1
    with np.errstate(invalid="ignore"):
        bad_mask = ~np.all((masks >= 0) & (masks <= 1), axis=(2, 3))
    invalid = real & ((labels < 0) | (labels >= K) | bad_mask)
    for b in range(len(labels)):
        where = f"{mode}, sample {b}: loss {value[b]}, indices {indices[b]}"
        nan_pred = np.isnan(logits[b]).any() or np.isnan(pred_masks[b]).any()
        inf_pred = np.isinf(logits[b]).any() or np.isinf(pred_masks[b]).any()
        assert np.all(indices[b][~real[b] | invalid[b]] == -1), where
        if invalid[b].any() or nan_pred:
            assert np.isnan(value[b]), where
        elif inf_pred:
            assert value[b] == np.inf, where
        else:  # every valid target matched to a query of its own
            assert np.all(indices[b][real[b]] >= 0), where
            assert len(set(indices[b][real[b]])) == real[b].sum(), where
            assert not np.isnan(value[b]), where  # 1e30 logits may overflow to inf
        if np.isfinite(value[b]):
            assert np.all(np.isfinite(grad_logits[b])) and np.all(np.isfinite(grad_masks[b]))
        else:
            assert not np.any(grad_logits[b]) and not np.any(grad_masks[b]), where


def test_integer_labels_that_cannot_hold_the_ids_or_the_padding_raise() -> None:
    """Keras casts the labels to float before the loss sees them: int8 ids of 200 classes
    have wrapped around, uint8 padding -1 reads 255. Both raise at trace time."""
    y_pred = {
        "logits": np.zeros((1, 4, 201), "float32"),  # K = 200 and "no object"
        "masks": np.zeros((1, 4, 4, 4), "float32"),
    }
    masks = np.zeros((1, 2, 4, 4), "float32")
    loss = DETRLoss.maskformer()
    for labels, match in (
        (np.array([[3, -1]], "int8"), r"`labels` of a dtype that can hold the class ids 0\.\.199"),
        (np.array([[3, 255]], "uint8"), "padding_value=-1"),
    ):
        for call in (loss, loss.match):
            with pytest.raises(ValueError, match=match):
                call({"labels": labels, "masks": masks}, y_pred)
