"""DETRLoss against a NumPy/SciPy reference of DETR's criterion: softmax and focal, per layer,
several layers (sets), one-to-many, DETR's batch normalization; terms, metrics, config, `.keras`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import scipy.optimize
import scipy.special
from helpers import compiled

from hungarian_loss import DETRLoss, DETRLossTerm

B, M, N, K = 6, 3, 6, 3  # samples, targets (padded), predictions, classes
WEIGHTS = (1.0, 5.0, 2.0)  # DETR's class, L1, GIoU


# ----- the reference ---------------------------------------------------------------------------


def giou_cost(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """1 - GIoU of every pair of `center_xywh` boxes, `[M, 4] x [N, 4] -> [M, N]`."""
    lo1, hi1 = boxes1[:, :2] - boxes1[:, 2:] / 2, boxes1[:, :2] + boxes1[:, 2:] / 2
    lo2, hi2 = boxes2[:, :2] - boxes2[:, 2:] / 2, boxes2[:, :2] + boxes2[:, 2:] / 2
    area1, area2 = np.prod(hi1 - lo1, -1), np.prod(hi2 - lo2, -1)
    inter = np.prod(
        np.clip(np.minimum(hi1[:, None], hi2) - np.maximum(lo1[:, None], lo2), 0, None), -1
    )
    union = area1[:, None] + area2[None] - inter
    hull = np.prod(np.maximum(hi1[:, None], hi2) - np.minimum(lo1[:, None], lo2), -1)
    return 1.0 - (inter / union - (hull - union) / hull)


def reference_sums(
    targets: np.ndarray, predictions: np.ndarray, classification: str, eos_coef: float, k: int
) -> tuple[float, float, float, float, float]:
    """One image: (class sum, class weight, L1 sum, GIoU sum, matched count), by SciPy."""
    targets = np.repeat(targets[~np.all(targets == -1.0, axis=1)], k, axis=0)
    classes = targets[:, 4].astype(int)
    logits = predictions[:, 4:]
    l1 = np.abs(targets[:, None, :4] - predictions[None, :, :4]).sum(-1)  # [M, N]
    giou = giou_cost(targets[:, :4], predictions[:, :4])  # [M, N]
    if classification == "softmax":
        log_probs = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)  # [N, K + 1]
        class_cost = -np.exp(log_probs[:, classes]).T  # [M, N]
    else:
        p = scipy.special.expit(logits)  # [N, K]
        positive = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8)
        negative = 0.75 * p**2 * -np.log(1 - p + 1e-8)
        class_cost = (positive - negative)[:, classes].T  # [M, N]
    cost = WEIGHTS[0] * class_cost + WEIGHTS[1] * l1 + WEIGHTS[2] * giou
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    if classification == "softmax":
        unmatched = np.setdiff1d(np.arange(len(predictions)), cols)
        class_sum = (
            -log_probs[cols, classes[rows]].sum() - eos_coef * log_probs[unmatched, -1].sum()
        )
        class_weight = len(cols) + eos_coef * len(unmatched)
    else:
        t = np.zeros_like(logits)
        t[cols, classes[rows]] = 1.0
        bce = np.logaddexp(0, logits) - logits * t
        p_t = p * t + (1 - p) * (1 - t)
        class_sum = ((0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2 * bce).sum()
        class_weight = len(cols)
    return class_sum, class_weight, l1[rows, cols].sum(), giou[rows, cols].sum(), len(cols)


def reference_detr(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classification: str = "softmax",
    eos_coef: float = 0.1,
    k: int = 1,
    normalization: str = "sample",
) -> np.ndarray:
    """Per-sample DETR loss of one prediction set `[B, N, C]` (float64)."""
    sums = np.array(
        [
            reference_sums(t, p, classification, eos_coef, k)
            for t, p in zip(y_true.astype("float64"), y_pred.astype("float64"), strict=True)
        ]
    )  # [B, 5]
    class_sum, class_weight, l1_sum, giou_sum, count = sums.T
    if normalization == "sample":
        boxes, classes = np.maximum(count, 1), np.where(class_weight > 0, class_weight, 1)
    else:  # DETR: num_boxes and the cross-entropy's total weight over the batch
        boxes, classes = max(count.sum(), 1), class_weight.sum()
    return WEIGHTS[0] * class_sum / classes + (WEIGHTS[1] * l1_sum + WEIGHTS[2] * giou_sum) / boxes


# ----- data --------------------------------------------------------------------------------------


def make_data(
    seed: int, sets: int, classification: str = "softmax"
) -> tuple[np.ndarray, np.ndarray]:
    """`y_true [B, M, 5]` (one image without objects, one with M) and `y_pred [B, S, N, C]`."""
    rng = np.random.default_rng(seed)
    y_true = np.full((B, M, 5), -1.0, "float32")
    for b, count in enumerate([0, M, 1, 2, M, 2]):
        y_true[b, :count, :2] = rng.uniform(0.2, 0.8, size=(count, 2))
        y_true[b, :count, 2:4] = rng.uniform(0.05, 0.3, size=(count, 2))
        y_true[b, :count, 4] = rng.integers(0, K, size=count)
    num_logits = K + 1 if classification == "softmax" else K
    centers = rng.uniform(0.1, 0.9, size=(B, sets, N, 2))
    sizes = rng.uniform(0.05, 0.3, size=(B, sets, N, 2))
    logits = 2.0 * rng.normal(size=(B, sets, N, num_logits))
    return y_true, np.concatenate([centers, sizes, logits], axis=-1).astype("float32")


def per_sample(loss: DETRLoss, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return compiled(lambda t, p: loss(t, p), y_true, y_pred)


# ----- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("classification", ["softmax", "focal"])
def test_matches_the_reference_per_layer_and_for_all_layers_at_once(classification: str) -> None:
    y_true, y_pred = make_data(0, sets=3, classification=classification)
    loss = DETRLoss(classification=classification, eos_coef=0.25, reduction="none")
    layers = [per_sample(loss, y_true, y_pred[:, s]) for s in range(3)]
    for s in range(3):
        expected = reference_detr(y_true, y_pred[:, s], classification, eos_coef=0.25)
        np.testing.assert_allclose(layers[s], expected, rtol=1e-5, atol=1e-6)
    together = per_sample(loss, y_true, y_pred)  # [B, S, N, C]: one solver call
    np.testing.assert_allclose(together, np.mean(layers, axis=0), rtol=0, atol=1e-6)
    assert together[0] > 0  # an image without objects still trains "no object" / the negatives
    indices = np.asarray(loss.match(y_true, y_pred))
    assert indices.shape == (B, 3, M)


@pytest.mark.parametrize("k", [2, 3])  # M * k = 6 = N, and 9 > N
def test_one_to_many_matches_the_reference(k: int) -> None:
    y_true, y_pred = make_data(1, sets=2)
    loss = DETRLoss(matches_per_target=k, reduction="none")
    expected = np.mean([reference_detr(y_true, y_pred[:, s], k=k) for s in range(2)], axis=0)
    np.testing.assert_allclose(per_sample(loss, y_true, y_pred), expected, rtol=1e-5, atol=1e-6)
    indices = np.asarray(loss.match(y_true, y_pred))  # [B, S, M, k]
    assert indices.shape == (B, 2, M, k)
    counts = np.minimum(np.array([0, M, 1, 2, M, 2]) * k, N)  # every copy, or all N predictions
    np.testing.assert_array_equal(
        (indices >= 0).reshape(B, 2, -1).sum(axis=2), np.repeat(counts[:, None], 2, axis=1)
    )


def test_batch_normalization_with_sum_reduction_is_detrs_loss() -> None:
    y_true, y_pred = make_data(2, sets=2)
    loss = DETRLoss(normalization="batch", reduction="sum")
    value = float(compiled(lambda t, p: loss(t, p)[None], y_true, y_pred)[0])
    layers = [reference_detr(y_true, y_pred[:, s], normalization="batch").sum() for s in range(2)]
    assert value == pytest.approx(np.mean(layers), rel=1e-5)
    # And it differs from the per-sample normalization, whose mean weighs images equally.
    sample = float(np.mean(np.mean([reference_detr(y_true, y_pred[:, s]) for s in range(2)], 0)))
    assert abs(value - sample) > 1e-3


def test_batch_normalization_leaves_a_broken_sample_out_of_the_counts() -> None:
    """A sample whose loss is NaN (a class id out of range) adds nothing to the batch's
    counts: the other samples are divided by the totals of the batch without it, DETR's
    `num_boxes` of the good samples. (Its targets and weights used to enter them.)"""
    y_true, y_pred = make_data(2, sets=2)
    y_true[3, 0, 4] = K + 4  # sample 3: a class id out of range
    loss = DETRLoss(normalization="batch", reduction="none")
    values = per_sample(loss, y_true, y_pred)
    good = [0, 1, 2, 4, 5]
    expected = np.mean(
        [reference_detr(y_true[good], y_pred[good, s], normalization="batch") for s in range(2)],
        axis=0,
    )
    assert np.isnan(values[3])
    np.testing.assert_allclose(values[good], expected, rtol=1e-5, atol=1e-6)


def test_terms_add_up_to_the_loss_and_log_as_metrics() -> None:
    y_true, y_pred = make_data(3, sets=2)
    loss = DETRLoss(class_weight=2.0, reduction="none")
    terms = {name: np.asarray(value) for name, value in loss.terms(y_true, y_pred).items()}
    assert set(terms) == {"class", "l1", "giou"}
    weighted = 2.0 * terms["class"] + 5.0 * terms["l1"] + 2.0 * terms["giou"]
    np.testing.assert_allclose(weighted, np.asarray(loss(y_true, y_pred)), rtol=1e-5, atol=1e-6)
    metrics = loss.term_metrics()
    assert [m.name for m in metrics] == ["detr_loss_class", "detr_loss_l1", "detr_loss_giou"]
    for metric in metrics:
        metric.update_state(y_true, y_pred)
        assert float(metric.result()) == pytest.approx(terms[metric.term].mean(), rel=1e-5)


# ----- errors and config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eos_coef": -0.1}, "eos_coef"),
        ({"giou_weight": -1.0}, "giou_weight"),
        ({"class_weight": 0.0, "l1_weight": 0.0, "giou_weight": 0.0}, "weight"),
        ({"classification": "sigmoid"}, "classification"),
        ({"normalization": "global"}, "normalization"),
        ({"classification": "focal", "focal_alpha": 2.0}, "alpha"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DETRLoss(**kwargs)


def test_bad_layouts_raise_clear_errors() -> None:
    y_true, y_pred = make_data(0, sets=1)
    with pytest.raises(ValueError, match="5 channels"):
        DETRLoss()(y_true[:, :, :4], y_pred[:, 0])
    with pytest.raises(ValueError, match="no object"):
        DETRLoss()(y_true, y_pred[:, 0, :, :5])  # a box and one logit: no class at all
    with pytest.raises(ValueError, match="term"):
        DETRLossTerm(DETRLoss(), "boxes")


def test_config_round_trip() -> None:
    loss = DETRLoss(
        class_weight=2.0, l1_weight=4.0, giou_weight=1.0, eos_coef=0.2, classification="focal",
        focal_alpha=0.5, focal_gamma=1.0, normalization="batch", box_format="xyxy",
        padding_value=None, matches_per_target=2, set_weights=[1.0, 2.0], reduction="sum",
        name="detr", dtype="float64",
    )  # fmt: skip
    config = loss.get_config()
    assert config == {
        "name": "detr", "reduction": "sum", "dtype": "float64", "box_format": "xyxy",
        "padding_value": None, "matches_per_target": 2, "set_weights": [1.0, 2.0],
        "class_weight": 2.0, "l1_weight": 4.0, "giou_weight": 1.0, "eos_coef": 0.2,
        "classification": "focal", "focal_alpha": 0.5, "focal_gamma": 1.0,
        "normalization": "batch", "box_loss": "giou", "matching_weights": [2.0, 4.0, 1.0],
        "matching_alpha": 0.5, "matching_gamma": 1.0, "mal_alpha": None,
        "denoising_groups": 0, "dense_one_to_one": False, "masks": None,
        "query_groups": 1, "group_reduction": "mean",
    }  # fmt: skip
    assert DETRLoss.from_config(config).get_config() == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    assert serialized["registered_name"] == "hungarian_loss>DETRLoss"
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config
    metric = DETRLossTerm(loss, "l1")
    revived = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(metric)))
    )
    assert isinstance(revived, DETRLossTerm) and revived.term == "l1"
    assert revived.loss.get_config() == config and revived.name == "detr_l1"


# ----- training and `.keras` ---------------------------------------------------------------------


def detector(num_features: int, sets: int) -> keras.Model:
    """Features -> `[B, S, N, 4 + K + 1]`: S "decoder layers" of N boxes and logits each."""
    inputs = keras.Input((num_features,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    boxes = keras.layers.Dense(sets * N * 4, activation="sigmoid")(hidden)
    logits = keras.layers.Dense(sets * N * (K + 1))(hidden)
    items = keras.layers.Concatenate(axis=-1)(
        [
            keras.layers.Reshape((sets, N, 4))(boxes),
            keras.layers.Reshape((sets, N, K + 1))(logits),
        ]
    )
    return keras.Model(inputs, items)


def test_trains_with_aux_layers_and_round_trips_through_keras_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y_true = np.concatenate([make_data(seed, sets=1)[0] for seed in range(40)])  # [240, M, 5]
    features = np.where(y_true == -1.0, 0.0, y_true).reshape(len(y_true), -1)
    features = (features + 0.01 * rng.normal(size=features.shape)).astype("float32")
    keras.utils.set_random_seed(0)
    model = detector(features.shape[1], sets=2)
    loss = DETRLoss(set_weights=[0.5, 1.0])
    model.compile(keras.optimizers.Adam(0.01), loss, metrics=loss.term_metrics())
    history = model.fit(features, y_true, batch_size=24, epochs=6, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]
    assert history["detr_loss_l1"][-1] < history["detr_loss_l1"][0]

    model.save(tmp_path / "detr.keras")
    loaded = keras.saving.load_model(tmp_path / "detr.keras")
    assert type(loaded.loss) is DETRLoss
    assert loaded.loss.get_config() == model.loss.get_config()
    expected: Any = model.evaluate(features[:48], y_true[:48], batch_size=48, verbose=0)
    got = loaded.evaluate(features[:48], y_true[:48], batch_size=48, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
