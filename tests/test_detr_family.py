"""DETRLoss's RT-DETR-family terms against a NumPy/SciPy reference written here: varifocal,
matchability-aware, matching weights of their own, denoising groups, dense one-to-one, the
recipes; padding, several sets, an image without targets; config and `.keras`."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.optimize
import scipy.special
from helpers import compiled, to_numpy, value_and_grads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_failure_policy import compile_for, with_grads

from hungarian_loss import DETRLoss

B, M, N, K = 4, 3, 6, 3  # samples, padded targets, matched queries, classes
COUNTS = [0, M, 1, 2]  # real targets per sample: one image without any


# ----- the reference ---------------------------------------------------------------------------


def corners(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2


def iou_giou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and GIoU of every pair of `center_xywh` boxes, `[M, 4] x [N, 4] -> [M, N]`."""
    lo1, hi1 = corners(a)
    lo2, hi2 = corners(b)
    inter = np.prod(
        np.clip(np.minimum(hi1[:, None], hi2) - np.maximum(lo1[:, None], lo2), 0, None), -1
    )
    union = np.prod(a[:, 2:], -1)[:, None] + np.prod(b[:, 2:], -1)[None] - inter
    hull = np.prod(np.maximum(hi1[:, None], hi2) - np.minimum(lo1[:, None], lo2), -1)
    iou = inter / union
    return iou, iou - (hull - union) / hull


def iou_family(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """GIoU, DIoU or CIoU of every pair of `center_xywh` boxes, `[M, 4] x [N, 4] -> [M, N]`."""
    iou, giou = iou_giou(a, b)
    if kind == "giou":
        return giou
    lo1, hi1 = corners(a)
    lo2, hi2 = corners(b)
    hull = np.maximum(hi1[:, None], hi2) - np.minimum(lo1[:, None], lo2)  # [M, N, 2]
    diagonal = np.sum(hull**2, -1)
    distance = np.sum((a[:, None, :2] - b[None, :, :2]) ** 2, -1)
    diou = iou - distance / diagonal
    if kind == "diou":
        return diou
    angle = np.arctan(a[:, None, 2] / a[:, None, 3]) - np.arctan(b[None, :, 2] / b[None, :, 3])
    v = 4 / np.pi**2 * angle**2
    return diou - v / (1 - iou + v) * v


def focal_cost(logits: np.ndarray, classes: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    p = scipy.special.expit(logits)  # [N, K]
    positive = alpha * (1 - p) ** gamma * -np.log(p + 1e-8)
    negative = (1 - alpha) * p**gamma * -np.log(1 - p + 1e-8)
    return (positive - negative)[:, classes].T  # [M, N]


def class_sum(
    kind: str, logits: np.ndarray, pairs: list, classes: np.ndarray, ious: np.ndarray, cfg: dict
) -> float:
    """The sigmoid class term of one image's queries `[Q, K]` with the pairs (i, j)."""
    onehot = np.zeros_like(logits)
    score = np.zeros_like(logits)
    p = scipy.special.expit(logits)
    for (i, j), iou in zip(pairs, ious, strict=True):
        onehot[j, classes[i]] = 1.0
        if kind == "ia_bce":
            quality = p[j, classes[i]] ** cfg["alpha"] * iou ** (1 - cfg["alpha"])
            score[j, classes[i]] = max(quality, 0.01)
        else:
            score[j, classes[i]] = iou if kind == "varifocal" else iou ** cfg["gamma"]
    bce = np.logaddexp(0, logits) - logits * score
    if kind == "ia_bce":
        weight = p ** cfg["gamma"] * (1 - onehot) + onehot
    elif kind == "varifocal":
        weight = cfg["alpha"] * p ** cfg["gamma"] * (1 - onehot) + score
    else:
        factor = 1.0 if cfg["mal_alpha"] is None else cfg["mal_alpha"]
        weight = factor * p ** cfg["gamma"] * (1 - onehot) + onehot
    return float((weight * bce).sum())


def image_sums(
    targets: np.ndarray, queries: np.ndarray, pairs: list, box_pairs: list, cfg: dict
) -> np.ndarray:
    """[class sum, class count, L1 sum, GIoU sum, box pairs] of one image and assignment."""
    classes = targets[:, 4].astype(int)
    ious = [iou_giou(targets[i : i + 1, :4], queries[j : j + 1, :4])[0][0, 0] for i, j in pairs]
    cls = class_sum(cfg["kind"], queries[:, 4:], pairs, classes, ious, cfg)
    l1 = sum(np.abs(targets[i, :4] - queries[j, :4]).sum() for i, j in box_pairs)
    kind = cfg.get("box", "giou")
    giou = sum(1 - iou_family(targets[i : i + 1, :4], queries[j : j + 1, :4], kind)[0, 0]
               for i, j in box_pairs)  # fmt: skip
    return np.array([cls, len(pairs), l1, giou, len(box_pairs)])


def match(targets: np.ndarray, queries: np.ndarray, cfg: dict) -> list:
    """SciPy's optimal pairs (i, j) of one image's real targets with the matched queries."""
    if len(targets) == 0:
        return []
    w_class, w_l1, w_box = cfg["matching"]
    cost = (
        w_class * focal_cost(queries[:, 4:], targets[:, 4].astype(int), 0.25, 2.0)
        + w_l1 * np.abs(targets[:, None, :4] - queries[None, :, :4]).sum(-1)
        + w_box * (1 - iou_family(targets[:, :4], queries[:, :4], cfg.get("box", "giou")))
    )
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def dense_pairs(per_set: list) -> list:
    """DEIM's pairs: each query's most frequent target over the sets (ties: latest set)."""
    best: dict[int, tuple[int, int, int]] = {}  # query -> (count, latest set, target)
    counts: dict[tuple[int, int], list[int]] = {}
    for s, pairs in enumerate(per_set):
        for i, j in pairs:
            counts.setdefault((j, i), []).append(s)
    for (j, i), sets in counts.items():
        key = (len(sets), max(sets), i)
        if j not in best or key[:2] > best[j][:2]:
            best[j] = key
    return [(target, j) for j, (_, _, target) in sorted(best.items())]


def reference(y_true: np.ndarray, y_pred: np.ndarray, cfg: dict) -> np.ndarray:
    """Per-sample loss `[B]` of `y_pred [B, S, G * 2M + N, 4 + K]` (float64)."""
    y_true, y_pred = y_true.astype("float64"), y_pred.astype("float64")
    groups, sets = cfg["groups"], y_pred.shape[1]
    dn = groups * 2 * M
    sums = np.zeros((B, sets, 2, 5))  # [..., matched / denoising, terms]
    for b in range(B):
        real = ~np.all(y_true[b] == -1, axis=1)
        targets = y_true[b][real]
        per_set = [match(targets, y_pred[b, s, dn:], cfg) for s in range(sets)]
        dense = dense_pairs(per_set) if cfg.get("dense") else None
        for s in range(sets):
            queries = y_pred[b, s, dn:]
            sums[b, s, 0] = image_sums(targets, queries, per_set[s], dense or per_set[s], cfg)
            positives = [(i, g * 2 * M + i) for g in range(groups) for i in range(len(targets))]
            sums[b, s, 1] = image_sums(targets, y_pred[b, s, :dn], positives, positives, cfg)
    if cfg["normalization"] == "sample":
        counts = np.maximum(sums[..., [1, 4]], 1)  # [B, S, 2, 2]
    else:  # the batch's totals, per set
        counts = np.maximum(sums[..., [1, 4]].sum(axis=0, keepdims=True), 1)
    cls = sums[..., 0] / counts[..., 0]
    l1 = sums[..., 2] / counts[..., 1]
    giou = sums[..., 3] / counts[..., 1]
    w_class, w_l1, w_box = cfg["weights"]
    per_part = w_class * cls + w_l1 * l1 + w_box * giou  # [B, S, 2]
    if not groups:
        per_part[..., 1] = 0.0
    return per_part.sum(axis=2).mean(axis=1)  # [B]


def reference_groups(
    y_true: np.ndarray, y_pred: np.ndarray, cfg: dict, groups: int, group_sum: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Group DETR: per-sample loss `[B]` of `y_pred [B, S, G * n, 4 + K]` and the pairs.

    Each group of n queries matched on its own (SciPy) and its terms normalized as a set
    of its own (per sample, or by the batch's totals per set and group); the groups'
    mean (or sum), then the sets' mean. The pairs: `[B, S, M, G]`, the query of each
    target on the whole axis, -1 for padding.
    """
    y_true, y_pred = y_true.astype("float64"), y_pred.astype("float64")
    sets, size = y_pred.shape[1], y_pred.shape[2] // groups
    sums = np.zeros((B, sets, groups, 5))
    pairs = np.full((B, sets, M, groups), -1)
    for b, s, g in np.ndindex(B, sets, groups):
        targets = y_true[b][~np.all(y_true[b] == -1, axis=1)]
        queries = y_pred[b, s, g * size : (g + 1) * size]
        found = match(targets, queries, cfg)
        sums[b, s, g] = image_sums(targets, queries, found, found, cfg)
        for i, j in found:
            pairs[b, s, i, g] = g * size + j
    if cfg["normalization"] == "sample":
        counts = np.maximum(sums[..., [1, 4]], 1)  # [B, S, G, 2]
    else:  # the batch's totals, per set and group
        counts = np.maximum(sums[..., [1, 4]].sum(axis=0, keepdims=True), 1)
    w_class, w_l1, w_box = cfg["weights"]
    per_group = (
        w_class * sums[..., 0] / counts[..., 0]
        + (w_l1 * sums[..., 2] + w_box * sums[..., 3]) / counts[..., 1]
    )  # [B, S, G]
    per_set = per_group.sum(axis=2) if group_sum else per_group.mean(axis=2)
    return per_set.mean(axis=1), pairs


# ----- data ------------------------------------------------------------------------------------


def make_data(seed: int, sets: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`y_true [B, M, 5]` with padding, `y_pred [B, S, G * 2M + N, 4 + K]`."""
    rng = np.random.default_rng(seed)
    y_true = np.full((B, M, 5), -1.0, "float32")
    for b, count in enumerate(COUNTS):
        y_true[b, :count, :2] = rng.uniform(0.25, 0.75, size=(count, 2))
        y_true[b, :count, 2:4] = rng.uniform(0.1, 0.4, size=(count, 2))
        y_true[b, :count, 4] = rng.integers(0, K, size=count)
    queries = groups * 2 * M + N
    centers = rng.uniform(0.2, 0.8, size=(B, sets, queries, 2))
    sizes = rng.uniform(0.1, 0.4, size=(B, sets, queries, 2))
    # Boxes near their targets, so that IoUs are not all zero.
    near = np.tile(np.where(y_true[:, None, :, :4] == -1, 0.5, y_true[:, None, :, :4]),
                   (1, sets, queries // M + 1, 1))[:, :, :queries]  # fmt: skip
    boxes = 0.5 * near + 0.5 * np.concatenate([centers, sizes], axis=-1)
    logits = 2.0 * rng.normal(size=(B, sets, queries, K))
    return y_true, np.concatenate([boxes, logits], axis=-1).astype("float32")


def per_sample(loss: DETRLoss, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return compiled(lambda t, p: loss(t, p), y_true, y_pred)


VARIFOCAL = {"kind": "varifocal", "alpha": 0.75, "gamma": 2.0, "mal_alpha": None}


# ----- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [0, 2])
def test_varifocal_with_matching_weights_of_its_own(groups: int) -> None:
    y_true, y_pred = make_data(0, sets=2, groups=groups)
    loss = DETRLoss(
        classification="varifocal", matching_weights=(2.0, 5.0, 2.0),
        denoising_groups=groups, reduction="none",
    )  # fmt: skip
    cfg = {**VARIFOCAL, "matching": (2, 5, 2), "weights": (1, 5, 2), "groups": groups,
           "normalization": "sample"}  # fmt: skip
    np.testing.assert_allclose(
        per_sample(loss, y_true, y_pred), reference(y_true, y_pred, cfg), rtol=2e-5, atol=2e-6
    )
    # The matching indexes the query axis: the matched queries come after the denoising ones.
    indices = to_numpy(loss.match(y_true, y_pred))  # [B, S, M]
    for b, count in enumerate(COUNTS):
        real = y_true[b, :count]
        for s in range(2):
            pairs = match(real.astype("float64"), y_pred[b, s, groups * 2 * M :], cfg)
            expected = [j + groups * 2 * M for _, j in sorted(pairs)]
            assert indices[b, s, :count].tolist() == expected
            assert np.all(indices[b, s, count:] == -1)


@pytest.mark.parametrize("box", ["diou", "ciou"])
def test_diou_and_ciou_box_terms(box: str) -> None:
    y_true, y_pred = make_data(8, sets=2, groups=1)
    loss = DETRLoss.d_fine(denoising_groups=1, box_loss=box, reduction="none",
                           normalization="sample")  # fmt: skip
    cfg = {**VARIFOCAL, "matching": (2, 5, 2), "weights": (1, 5, 2), "groups": 1,
           "normalization": "sample", "box": box}  # fmt: skip
    np.testing.assert_allclose(
        per_sample(loss, y_true, y_pred), reference(y_true, y_pred, cfg), rtol=2e-5, atol=2e-6
    )
    terms = loss.terms(y_true, y_pred)
    assert set(terms) == {"class", "l1", box}


@pytest.mark.parametrize(("mal_alpha", "normalization"), [(None, "batch"), (0.5, "sample")])
def test_matchability_aware(mal_alpha: float | None, normalization: str) -> None:
    y_true, y_pred = make_data(1, sets=2, groups=1)
    loss = DETRLoss.deim(
        denoising_groups=1, mal_alpha=mal_alpha, dense_one_to_one=False,
        normalization=normalization, reduction="none",
    )  # fmt: skip
    cfg = {"kind": "mal", "gamma": 1.5, "mal_alpha": mal_alpha, "matching": (2, 5, 2),
           "weights": (1, 5, 2), "groups": 1, "normalization": normalization}  # fmt: skip
    np.testing.assert_allclose(
        per_sample(loss, y_true, y_pred), reference(y_true, y_pred, cfg), rtol=2e-5, atol=2e-6
    )


@pytest.mark.parametrize("groups", [0, 1])
def test_dense_one_to_one(groups: int) -> None:
    y_true, y_pred = make_data(2, sets=3, groups=groups)
    # Make the sets disagree: set 1 moves some queries onto other targets.
    loss = DETRLoss.deim(denoising_groups=groups, reduction="none", normalization="sample")
    cfg = {"kind": "mal", "gamma": 1.5, "mal_alpha": None, "matching": (2, 5, 2),
           "weights": (1, 5, 2), "groups": groups, "normalization": "sample",
           "dense": True}  # fmt: skip
    expected = reference(y_true, y_pred, cfg)
    np.testing.assert_allclose(per_sample(loss, y_true, y_pred), expected, rtol=2e-5, atol=2e-6)
    # The dense pairs are not the per-set ones on this data (else this test shows nothing).
    plain = reference(y_true, y_pred, {**cfg, "dense": False})
    assert np.max(np.abs(plain - expected)) > 1e-3


def test_dense_pairs_break_ties_by_the_latest_set() -> None:
    from hungarian_loss.detr import _layout

    # One sample, S = 3 sets, M = 2 targets, N = 3 queries.
    indices = np.array([[0, 1], [1, 0], [2, -1]], "int32")  # rows: sets 0, 1, 2
    pairs = to_numpy(_layout.dense_one_to_one(keras.ops.convert_to_tensor(indices), 3, 3))
    # Query 0: target 0 in set 0, target 1 in set 1 (tie: latest, target 1); query 1: target
    # 1 in set 0, target 0 in set 1 (tie: target 0); query 2: target 0 in set 2.
    assert pairs.tolist() == [[1, 0, 0]]


def test_recipes_and_batch_normalization_with_sum() -> None:
    y_true, y_pred = make_data(3, sets=2, groups=2)
    loss = DETRLoss.rt_detr(denoising_groups=2)
    assert loss.get_config()["reduction"] == "sum"
    cfg = {**VARIFOCAL, "matching": (2, 5, 2), "weights": (1, 5, 2), "groups": 2,
           "normalization": "batch"}  # fmt: skip
    value = compiled(lambda t, p: loss(t, p)[None], y_true, y_pred)[0]
    assert value == pytest.approx(reference(y_true, y_pred, cfg).sum(), rel=2e-5)
    assert DETRLoss.d_fine().get_config() == {**DETRLoss.rt_detr().get_config()}
    assert DETRLoss.d_fine(box_loss="giou").box_loss == "giou"
    deim = DETRLoss.deim()
    assert (deim.classification, deim.focal_gamma, deim.dense_one_to_one) == ("mal", 1.5, True)
    detr = DETRLoss.detr()
    assert (detr.classification, detr.eos_coef, detr.normalization) == ("softmax", 0.1, "batch")
    deformable = DETRLoss.deformable_detr()
    assert (deformable.class_weight, deformable.matching_alpha) == (2.0, 0.25)


def test_denoising_queries_of_padding_targets_only_say_no_object() -> None:
    y_true, y_pred = make_data(4, sets=1, groups=2)
    loss = DETRLoss.rt_detr(denoising_groups=2, reduction="none", normalization="sample")
    base = per_sample(loss, y_true, y_pred)
    moved = y_pred.copy()
    for b, count in enumerate(COUNTS):
        for g in range(2):
            for i in range(count, M):  # the positive and negative of each padding target
                for q in (g * 2 * M + i, g * 2 * M + M + i):
                    moved[b, 0, q, :4] = [0.9, 0.1, 0.05, 0.7]  # their boxes are not read
    np.testing.assert_allclose(per_sample(loss, y_true, moved), base, rtol=1e-6, atol=1e-7)
    sure_no = moved.copy()
    sure_no[:, 0, : 2 * 2 * M, 4:] = -30.0  # every denoising query says "no object" ...
    lower = per_sample(loss, y_true, sure_no)
    assert lower[0] < base[0]  # ... which is all an image without targets asks of them


def test_denoising_axis_too_short_is_a_clear_error() -> None:
    y_true, y_pred = make_data(0, sets=1, groups=0)
    with pytest.raises(ValueError, match=r"denoising_groups \* 2 \* M = 3 \* 2 \* 3 = 18"):
        DETRLoss(classification="varifocal", denoising_groups=3)(y_true, y_pred)


def test_terms_add_up_with_denoising() -> None:
    y_true, y_pred = make_data(5, sets=2, groups=1)
    loss = DETRLoss(classification="varifocal", denoising_groups=1, reduction="none")
    terms = {name: to_numpy(value) for name, value in loss.terms(y_true, y_pred).items()}
    weighted = terms["class"] + 5.0 * terms["l1"] + 2.0 * terms["giou"]
    np.testing.assert_allclose(weighted, to_numpy(loss(y_true, y_pred)), rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_and_carry_none_through_the_weights() -> None:
    y_true, y_pred = make_data(6, sets=1, groups=1)
    loss = DETRLoss.rt_detr(denoising_groups=1, reduction="none", normalization="sample")
    value, (_, grad) = value_and_grads(lambda t, p: loss(t, p), y_true, y_pred)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    # Sample 1 has 3 targets. The varifocal term's gradient for a logit x with target
    # score t and weight w (constant: no gradient through sigmoid(x)^gamma) is
    # w * (sigmoid(x) - t) / 3, and it adds the same for the denoising part.
    indices = to_numpy(loss.match(y_true, y_pred))[1, 0]  # [M]: queries >= 2M
    unmatched = sorted(set(range(2 * M, 2 * M + N)) - set(indices.tolist()))[0]
    x = y_pred[1, 0, unmatched, 4:].astype("float64")
    p = scipy.special.expit(x)
    expected = 0.75 * p**2 * p / 3
    np.testing.assert_allclose(grad[1, 0, unmatched, 4:], expected, rtol=1e-4, atol=1e-7)
    target, query = 0, int(indices[0])  # a matched pair
    c = int(y_true[1, target, 4])
    t = iou_giou(y_true[1, target : target + 1, :4].astype("float64"),
                 y_pred[1, 0, query : query + 1, :4].astype("float64"))[0][0, 0]  # fmt: skip
    p_c = scipy.special.expit(float(y_pred[1, 0, query, 4 + c]))
    assert grad[1, 0, query, 4 + c] == pytest.approx(t * (p_c - t) / 3, rel=1e-4, abs=1e-7)


def test_no_target_rows_with_denoising_groups() -> None:
    # M = 0: no denoising query at all (G * 2 * 0), so the loss is that of G = 0.
    y_true = np.zeros((2, 0, 5), "float32")
    y_pred = np.random.default_rng(3).normal(size=(2, 4, 4 + K)).astype("float32")
    value, (grad,) = value_and_grads(
        lambda p: DETRLoss.rt_detr(denoising_groups=2)(y_true, p), y_pred
    )
    expected = to_numpy(DETRLoss.rt_detr()(y_true, y_pred))
    assert np.isfinite(value) and value > 0.0
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0.0)


# ----- LW-DETR and RF-DETR: IA-BCE and query groups ------------------------------------------

IA_BCE = {"kind": "ia_bce", "alpha": 0.25, "gamma": 2.0, "matching": (2, 5, 2),
          "weights": (1, 5, 2)}  # fmt: skip


@pytest.mark.parametrize(
    ("groups", "normalization", "group_sum"),
    [(1, "batch", False), (3, "batch", False), (3, "sample", True)],
)
def test_ia_bce_and_query_groups_against_the_reference(
    groups: int, normalization: str, group_sum: bool
) -> None:
    # 18 queries per set: G = 3 groups of 6 (or one of 18); 2 sets; padding and an
    # image without targets (COUNTS).
    y_true, y_pred = make_data(11, sets=2, groups=2)
    loss = DETRLoss.lw_detr(
        query_groups=groups, normalization=normalization, reduction="none",
        group_reduction="sum" if group_sum else "mean",
    )  # fmt: skip
    expected, pairs = reference_groups(
        y_true, y_pred, {**IA_BCE, "normalization": normalization}, groups, group_sum
    )
    np.testing.assert_allclose(per_sample(loss, y_true, y_pred), expected, rtol=2e-5, atol=2e-6)
    indices = compiled(loss.match, y_true, y_pred)  # [B, S, M, G]; [B, S, M] for G = 1
    if groups == 1:
        pairs = pairs[..., 0]
    assert indices.shape == pairs.shape
    np.testing.assert_array_equal(indices, pairs)
    # Without a set axis: [B, M, G].
    single = compiled(loss.match, y_true, y_pred[:, 0])
    np.testing.assert_array_equal(single, pairs[:, 0])


def test_groups_are_their_own_problems_with_masks_too() -> None:
    """With dense mask terms on dicts: the loss of G groups is the mean of the G losses of
    each group's queries alone (the batch's counts per group), and each group's matching
    is that of its queries alone."""
    from test_detr_masks import run  # under jax.jit on JAX, eagerly elsewhere

    y_true, y_pred = make_data(12, sets=2, groups=1)  # [B, 2, 2 * 3 + 6 = 12, 4 + K]
    rng = np.random.default_rng(12)
    real = ~np.all(y_true == -1.0, axis=-1)  # [B, M]
    target_masks = (rng.random((B, M, 16, 16)) < 0.4) & real[:, :, None, None]
    y_true = {"labels": np.where(real, y_true[..., 4], -1).astype("int32"),
              "boxes": y_true[..., :4], "masks": target_masks.astype("float32")}  # fmt: skip
    y_pred = {"logits": y_pred[..., 4:], "boxes": y_pred[..., :4],
              "masks": rng.normal(0.0, 2.0, (B, 2, 12, 8, 8)).astype("float32")}  # fmt: skip
    masks = {"mask_weight": 5.0, "dice_weight": 5.0, "num_points": None}
    grouped = DETRLoss.rf_detr_seg(query_groups=2, masks=masks)
    single = DETRLoss.rf_detr_seg(query_groups=1, masks=masks)
    halves = [
        {key: value[:, :, g * 6 : (g + 1) * 6] for key, value in y_pred.items()} for g in range(2)
    ]
    value = run(grouped, y_true, y_pred)
    parts = [run(single, y_true, half) for half in halves]
    assert value == pytest.approx(np.mean(parts), rel=1e-5)
    assert grouped.term_names() == ("class", "l1", "giou", "mask", "dice")
    indices = run(grouped.match, y_true, y_pred)  # [B, S, M, G]
    for g, half in enumerate(halves):
        own = run(single.match, y_true, half)  # [B, S, M]
        np.testing.assert_array_equal(indices[..., g], np.where(own >= 0, own + 6 * g, -1))


def test_ia_bce_is_finite_at_saturated_logits() -> None:
    """IA-BCE in log-sigmoid form: finite values and gradients at logits of +-100 (the
    reference's `log(sigmoid(x))` is -inf at -104 in float32), equal to NumPy's."""
    from hungarian_loss.detr import _classification as terms

    x = np.array([[[100.0, -100.0, 0.0], [-100.0, 100.0, 30.0], [-100.0, -100.0, 100.0]]],
                 "float32")  # fmt: skip
    owner_class = np.array([[0, 0, -1]], "int32")  # matched: (0, 0) at +100, (1, 0) at -100
    iou = np.array([[0.7, 0.0, 0.0]], "float32")

    def term(logits: object) -> object:
        return terms.iou_aware_bce(
            logits, keras.ops.convert_to_tensor(owner_class), keras.ops.convert_to_tensor(iou),
            0.25, 2.0,
        )  # fmt: skip

    value, (grad,) = value_and_grads(term, x)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    x64 = x.astype("float64")
    expected = class_term_reference("ia_bce", x64, x64, owner_class, iou, 0.25, 2.0, None)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    # Positives: (0, 0) t = 0.7^0.75 (p = 1), BCE(100, t) = 100 (1 - t); (1, 0) IoU 0,
    # t = 0.01, BCE(-100, t) = 1. Negatives p^2 softplus(x): 0.25 log 2 at 0, x at +30 and
    # +100 (two of them), 0 at -100.
    assert expected[0] == pytest.approx(
        100 * (1 - 0.7**0.75) + 0.25 * np.log(2) + 1 + 30 + 2 * 100, rel=1e-6
    )


def test_lw_detr_recipes() -> None:
    lw = DETRLoss.lw_detr()
    assert (lw.classification, lw.query_groups, lw.focal_alpha, lw.focal_gamma) == (
        "ia_bce", 13, 0.25, 2.0,
    )  # fmt: skip
    assert (lw.class_weight, lw.l1_weight, lw.giou_weight) == (1.0, 5.0, 2.0)
    assert lw.matching_weights == (2.0, 5.0, 2.0)
    assert (lw.matching_alpha, lw.normalization, lw.reduction) == (0.25, "batch", "sum")
    assert DETRLoss.rf_detr().get_config() == lw.get_config()
    seg = DETRLoss.rf_detr_seg(seed=3)
    assert seg.masks is not None and seg.query_groups == 13
    assert (seg.masks.mask_weight, seg.masks.dice_weight, seg.masks.num_points) == (5.0, 5.0, 729)
    assert seg.masks.matching_weights == (5.0, 5.0) and seg.masks.mask_loss == "bce"
    assert DETRLoss.lw_detr(query_groups=1).query_groups == 1
    # A query axis that is not G groups of one size: a clear error at trace time.
    y_true, y_pred = make_data(0, sets=1, groups=0)  # 6 queries
    with pytest.raises(ValueError, match="query_groups=4 groups"):
        DETRLoss.lw_detr(query_groups=4)(y_true, y_pred)


# The sigmoid class terms have a hand-written gradient (one pass per logit, see
# `detr/_classification.py`): checked here against central differences of a NumPy
# reference in float64, with `sigmoid(x)^gamma` held fixed in the varifocal and MAL weights.
CLASS_TERMS = [
    ("focal", 0.25, 2.0, None),
    ("focal", 0.4, 1.5, None),
    ("varifocal", 0.75, 2.0, None),
    ("varifocal", 0.6, 0.7, None),
    ("mal", None, 1.5, None),
    ("mal", None, 2.0, 0.5),
    ("ia_bce", 0.25, 2.0, None),
    ("ia_bce", 0.4, 1.5, None),
]


def class_term_reference(
    kind: str,
    x: np.ndarray,
    weight_x: np.ndarray,
    owner_class: np.ndarray,
    iou: np.ndarray,
    alpha: float | None,
    gamma: float,
    mal_alpha: float | None,
) -> np.ndarray:
    """The class term per problem `[P]` of logits `x [P, Q, K]` (float64).

    `weight_x` gives the `sigmoid^gamma` of the varifocal and MAL weights and the
    `sigmoid^alpha` of IA-BCE's target (no gradient).
    """
    onehot = (np.arange(x.shape[-1]) == owner_class[..., None]).astype("float64")
    p, p_weight = scipy.special.expit(x), scipy.special.expit(weight_x)
    if kind == "ia_bce":
        quality = p_weight**alpha * iou[..., None] ** (1 - alpha)
        score = onehot * np.maximum(quality, 0.01)
        bce = np.logaddexp(0, x) - x * score
        return np.sum((p**gamma * (1 - onehot) + onehot) * bce, axis=(1, 2))
    if kind == "focal":
        bce = np.logaddexp(0, x) - x * onehot
        p_t = p * onehot + (1 - p) * (1 - onehot)
        alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
        return np.sum(alpha_t * (1 - p_t) ** gamma * bce, axis=(1, 2))
    score = onehot * iou[..., None] ** (1.0 if kind == "varifocal" else gamma)
    bce = np.logaddexp(0, x) - x * score
    if kind == "varifocal":
        weight = alpha * p_weight**gamma * (1 - onehot) + score
    else:
        factor = 1.0 if mal_alpha is None else mal_alpha
        weight = factor * p_weight**gamma * (1 - onehot) + onehot
    return np.sum(weight * bce, axis=(1, 2))


@pytest.mark.parametrize(("kind", "alpha", "gamma", "mal_alpha"), CLASS_TERMS)
def test_class_terms_and_their_gradients_against_numpy(
    kind: str, alpha: float | None, gamma: float, mal_alpha: float | None
) -> None:
    from hungarian_loss.detr import _classification as terms

    rng = np.random.default_rng(7)
    problems, queries, classes = 2, 5, 3
    x = rng.normal(0.0, 3.0, (problems, queries, classes)).astype("float32")
    x[0, 0, :] = [-30.0, 30.0, 0.0]  # saturated logits
    owner_class = np.array([[1, -1, 0, -1, 2], [-1, -1, -1, 2, 1]], "int32")
    iou = np.where(owner_class >= 0, rng.uniform(0.05, 1.0, owner_class.shape), 0.0)
    iou = iou.astype("float32")

    def term(logits: object) -> object:
        query_class = keras.ops.convert_to_tensor(owner_class)
        query_iou = keras.ops.convert_to_tensor(iou)
        if kind == "focal":
            return terms.focal(logits, query_class, alpha, gamma)
        if kind == "varifocal":
            return terms.varifocal(logits, query_class, query_iou, alpha, gamma)
        if kind == "ia_bce":
            return terms.iou_aware_bce(logits, query_class, query_iou, alpha, gamma)
        return terms.matchability_aware(logits, query_class, query_iou, mal_alpha, gamma)

    value, (grad,) = value_and_grads(term, x)
    x64 = x.astype("float64")
    args = (owner_class, iou.astype("float64"), alpha, gamma, mal_alpha)
    expected = class_term_reference(kind, x64, x64, *args)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    step, numeric = 1e-5, np.zeros_like(x64)
    for index in np.ndindex(x.shape):
        shift = np.zeros_like(x64)
        shift[index] = step
        moving = kind == "focal"  # the focal weight moves with x; the others' is fixed
        # (IA-BCE: its negatives' weight moves, its target does not; the reference reads
        # the first from x and the second from weight_x)
        up = class_term_reference(kind, x64 + shift, x64 + shift if moving else x64, *args)
        down = class_term_reference(kind, x64 - shift, x64 - shift if moving else x64, *args)
        numeric[index] = (up - down)[index[0]] / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("kind", "alpha", "gamma", "mal_alpha"), CLASS_TERMS[::2])
def test_class_terms_keep_their_precision_for_confident_predictions(
    kind: str, alpha: float | None, gamma: float, mal_alpha: float | None
) -> None:
    """A well-trained model's class term is tiny (focal: about 1e-7 here); its value keeps
    float32's relative precision. (Summing every logit's negative value and then swapping
    in the positives lost it: the confident logits' negative values, about 20 each, were
    added and taken away again.)"""
    from hungarian_loss.detr import _classification as terms

    rng = np.random.default_rng(5)
    x = rng.normal(-12.0, 1.0, (2, 40, 10)).astype("float32")  # confident negatives
    owner_class = np.full((2, 40), -1, "int32")
    owner_class[:, :6] = rng.integers(0, 10, (2, 6))
    for problem, query in np.ndindex(2, 6):
        x[problem, query, owner_class[problem, query]] = rng.uniform(15.0, 30.0)
    iou = np.where(owner_class >= 0, 0.9, 0.0).astype("float32")
    query_class, query_iou = (keras.ops.convert_to_tensor(a) for a in (owner_class, iou))
    logits = keras.ops.convert_to_tensor(x)
    if kind == "focal":
        value = terms.focal(logits, query_class, alpha, gamma)
    elif kind == "varifocal":
        value = terms.varifocal(logits, query_class, query_iou, alpha, gamma)
    elif kind == "ia_bce":
        value = terms.iou_aware_bce(logits, query_class, query_iou, alpha, gamma)
    else:
        value = terms.matchability_aware(logits, query_class, query_iou, mal_alpha, gamma)
    x64 = x.astype("float64")
    expected = class_term_reference(
        kind, x64, x64, owner_class, iou.astype("float64"), alpha, gamma, mal_alpha
    )
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-5, atol=0.0)


def test_the_class_terms_log1p_matches_numpy_to_float32_rounding() -> None:
    """The polynomial `log(1 + e)` of the sigmoid terms, against NumPy in float64."""
    from hungarian_loss.detr._classification import _log1p_unit

    rng = np.random.default_rng(3)
    e = np.concatenate(
        [
            np.linspace(0.0, 1.0, 200_001, dtype="float32"),
            (10.0 ** rng.uniform(-37.0, 0.0, 100_000)).astype("float32"),  # small, not subnormal
        ]
    )
    value = to_numpy(_log1p_unit(keras.ops.convert_to_tensor(e))).astype("float64")
    exact = np.log1p(e.astype("float64"))
    assert value[0] == 0.0 and np.all(value[1:] > 0.0)
    np.testing.assert_allclose(value, exact, rtol=3e-7, atol=0.0)


# ----- errors and config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classification": "vfl"}, "classification"),
        ({"box_loss": "eiou"}, "box_loss"),
        ({"matching_weights": (1.0, 2.0)}, "matching_weights"),
        ({"matching_weights": (1.0, -2.0, 1.0)}, "matching_weights"),
        ({"matching_alpha": 1.5}, "matching_alpha"),
        ({"mal_alpha": -0.1}, "mal_alpha"),
        ({"denoising_groups": -1}, "denoising_groups"),
        ({"denoising_groups": 1.5}, "denoising_groups"),
        ({"query_groups": 0}, "query_groups"),
        ({"query_groups": 2.0}, "query_groups"),
        ({"query_groups": 2, "denoising_groups": 1}, "query_groups"),
        ({"query_groups": 2, "dense_one_to_one": True}, "query_groups"),
        ({"group_reduction": "max"}, "group_reduction"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DETRLoss(**kwargs)


LOSSES = {
    "rt_detr": lambda: DETRLoss.rt_detr(denoising_groups=2),
    "deim": lambda: DETRLoss.deim(denoising_groups=2, mal_alpha=0.3),
    "lw_detr": lambda: DETRLoss.lw_detr(query_groups=3, group_reduction="sum"),
    "rf_detr_seg": lambda: DETRLoss.rf_detr_seg(query_groups=2, num_points=64, seed=5),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_config_round_trip(name: str) -> None:
    loss = LOSSES[name]()
    config = loss.get_config()
    assert DETRLoss.from_config(config).get_config() == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


# One backend: the config round trip of every option is backend-independent (the test
# above checks it in process), and test_keras.py reloads a `.keras` file in a fresh
# process on every backend. TensorFlow: 12 s in CI against JAX's 21 s.
@pytest.mark.backends("tensorflow")
def test_keras_file_round_trip_in_a_fresh_process(tmp_path: Path) -> None:
    y_true, y_pred = make_data(7, sets=2, groups=2)
    inputs = keras.Input(y_pred.shape[1:])
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    loss = DETRLoss.deim(denoising_groups=2, mal_alpha=0.3, box_loss="giou")
    model.compile(loss=loss)
    expected = float(model.evaluate(y_pred, y_true, batch_size=B, verbose=0))
    model.save(tmp_path / "model.keras")
    # LW-DETR's options: IA-BCE, 3 query groups of 6, summed.
    groups = keras.Model(inputs, keras.layers.Identity()(inputs))
    groups.compile(loss=DETRLoss.lw_detr(query_groups=3, group_reduction="sum"))
    expected_groups = float(groups.evaluate(y_pred, y_true, batch_size=B, verbose=0))
    groups.save(tmp_path / "groups.keras")
    np.save(tmp_path / "y_true.npy", y_true)
    np.save(tmp_path / "y_pred.npy", y_pred)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import hungarian_loss
        model = keras.saving.load_model({str(tmp_path / "model.keras")!r})
        y_true = np.load({str(tmp_path / "y_true.npy")!r})
        y_pred = np.load({str(tmp_path / "y_pred.npy")!r})
        print(type(model.loss).__name__, model.loss.denoising_groups, model.loss.mal_alpha)
        print(float(model.evaluate(y_pred, y_true, batch_size={B}, verbose=0)))
        groups = keras.saving.load_model({str(tmp_path / "groups.keras")!r})
        loss = groups.loss
        print(loss.classification, loss.query_groups, loss.group_reduction)
        print(float(groups.evaluate(y_pred, y_true, batch_size={B}, verbose=0)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "DETRLoss 2 0.3"
    assert float(out[1]) == pytest.approx(expected, rel=1e-5)
    assert out[2] == "ia_bce 3 sum"
    assert float(out[3]) == pytest.approx(expected_groups, rel=1e-5)


# ----- several replicas ------------------------------------------------------------------------

DISTRIBUTED = """
import json, os, sys
import keras
import numpy as np
BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from hungarian_loss import DETRLoss

class LocalTotals(DETRLoss):
    def batch_total(self, total):  # each replica by its own half of the batch
        return total

rng = np.random.default_rng(0)
B, M, Q, K = 16, 4, 2 * 2 * 4 + 6, 3
y = np.full((B, M, 5), -1.0, "float32")
for b in range(B):  # the first half crowded, the second sparse
    count = M if b < B // 2 else b % 2
    y[b, :count, :2] = rng.uniform(0.3, 0.7, (count, 2))
    y[b, :count, 2:4] = rng.uniform(0.1, 0.3, (count, 2))
    y[b, :count, 4] = rng.integers(0, K, count)
x = rng.normal(size=(B, 8)).astype("float32")

def make_model():
    inputs = keras.Input((8,))
    boxes = keras.layers.Dense(Q * 4, activation="sigmoid")(inputs)
    logits = keras.layers.Dense(Q * K)(inputs)
    out = keras.layers.Concatenate()([keras.layers.Reshape((Q, 4))(boxes),
                                      keras.layers.Reshape((Q, K))(logits)])
    return keras.Model(inputs, out)

keras.utils.set_random_seed(0)
initial = make_model().get_weights()

def train(loss):
    model = make_model()
    model.set_weights(initial)
    model.compile(keras.optimizers.SGD(0.1), loss)
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()

def run(strategy, loss):
    if strategy is None:
        return train(loss)
    with strategy.scope():
        return train(loss)

if BACKEND == "tensorflow":
    one = run(tf.distribute.OneDeviceStrategy("/cpu:0"), DETRLoss.rt_detr(denoising_groups=2))
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    several = run(mirrored, DETRLoss.rt_detr(denoising_groups=2))
    local = run(mirrored, LocalTotals.rt_detr(denoising_groups=2))
    replicas = mirrored.num_replicas_in_sync
else:
    import jax
    one = train(DETRLoss.rt_detr(denoising_groups=2))
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    several = train(DETRLoss.rt_detr(denoising_groups=2))
    local = None  # the batch is global under JAX: there are no per-replica totals to try
    replicas = len(jax.devices())

def gap(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))

print("RESULT " + json.dumps({"replicas": replicas, "several": gap(one, several),
                              "local": None if local is None else gap(one, local),
                              "change": gap(one, initial)}))
"""


def test_batch_normalization_on_two_replicas_trains_like_one_device() -> None:
    backend = keras.backend.backend()
    if backend == "torch":  # Keras has no multi-device training on torch: nothing to combine
        loss = DETRLoss.rt_detr()
        assert float(to_numpy(loss.batch_total(keras.ops.convert_to_tensor(7.0)))) == 7.0
        return
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    process = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED], env={**os.environ, **env},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, process.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["replicas"] == 2
    assert result["change"] > 1e-3  # it trained
    assert result["several"] < 1e-5, result  # the replicas train as one device
    if backend == "tensorflow":  # each replica by its own totals would not
        assert result["local"] > 1e-3, result


# ----- the failure policy, every new mode ------------------------------------------------------

SPECIAL = [0.0, 1e-30, -1e-30, 1e20, -1e20, 3e38, -3e38, np.inf, -np.inf, np.nan]
P_B, P_M, P_N, P_S, P_G = 4, 2, 4, 2, 1  # property batches: samples, targets, queries, sets, groups
P_Q = P_G * 2 * P_M + P_N  # 8: LW-DETR's loss reads them as 4 query groups of 2
PROPERTY_LOSSES = {
    "rt_detr": lambda: DETRLoss.rt_detr(denoising_groups=P_G, reduction="none"),
    "deim": lambda: DETRLoss.deim(denoising_groups=P_G, reduction="none", mal_alpha=0.5),
    "d_fine_ciou": lambda: DETRLoss.d_fine(denoising_groups=P_G, box_loss="ciou", reduction="none"),
    "lw_detr": lambda: DETRLoss.lw_detr(query_groups=4, reduction="none"),
}


@functools.cache
def property_step(name: str) -> Callable[..., tuple[np.ndarray, ...]]:
    """Loss, gradients and matching of one batch, compiled once per loss."""
    return compile_for(with_grads(PROPERTY_LOSSES[name]()), "compiled")  # type: ignore[no-any-return]


@st.composite
def extreme_batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary boxes and logits with extreme values mixed in (about one in six), class ids
    in and out of range, and a random number of padding rows per sample."""

    def values(shape: tuple[int, ...], ordinary: st.SearchStrategy[float]) -> np.ndarray:
        base = draw(hnp.arrays("float32", shape, elements=ordinary))
        extreme = draw(hnp.arrays("float32", shape, elements=st.sampled_from(SPECIAL)))
        which = draw(hnp.arrays("int8", shape, elements=st.integers(0, 5)))
        return np.where(which == 0, extreme, base).astype("float32")

    y_true = values((P_B, P_M, 5), st.floats(0.0625, 0.9375, width=32))
    y_true[..., 4] = draw(
        hnp.arrays("float32", (P_B, P_M), elements=st.sampled_from([0, 1, 2, 2, 1, 3, -1, 1.5]))
    )
    y_pred = values((P_B, P_S, P_Q, 4 + K), st.floats(-3.0, 3.0, width=32))
    y_pred[..., :4] = np.where(np.isfinite(y_pred[..., :4]), np.abs(y_pred[..., :4]) / 3,
                               y_pred[..., :4])  # fmt: skip
    counts = draw(hnp.arrays("int8", (P_B,), elements=st.integers(0, P_M)))
    y_true[np.arange(P_M)[None, :] >= counts[:, None]] = -1.0
    return y_true, y_pred


@pytest.mark.parametrize("name", list(PROPERTY_LOSSES))
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(batch=extreme_batches())
def test_failure_policy_holds_for_every_new_mode(
    name: str, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    y_true, y_pred = batch
    value, grad_true, grad_pred, _ = property_step(name)(y_true, y_pred)
    real = ~np.all(y_true == -1.0, axis=-1)  # [B, M]
    for b in range(P_B):
        where = f"{name}, sample {b}: loss {value[b]}"
        targets = y_true[b][real[b]]
        ids = targets[:, 4]
        bad_id = np.any((ids != np.round(ids)) | (ids < 0) | (ids > K - 1))
        if np.isnan(targets).any() or np.isnan(y_pred[b]).any() or bad_id:
            assert np.isnan(value[b]), where
        broken = not np.all(np.isfinite(y_pred[b])) or not np.all(np.isfinite(targets)) or bad_id
        if broken:  # a non-finite loss, and the sample adds no gradient
            assert not np.isfinite(value[b]), where
            assert not np.any(grad_pred[b]) and not np.any(grad_true[b]), where
        if np.isfinite(value[b]):  # a finite loss has finite gradients
            assert np.all(np.isfinite(grad_pred[b])) and np.all(np.isfinite(grad_true[b])), where
        # (Finite inputs can still sum past float32's range, 3e38 logits: an `inf` loss.)
    if name == "lw_detr":  # no denoising queries
        return
    # The denoising queries of padding targets only say "no object": their boxes are not read.
    moved = y_pred.copy()
    for b in range(P_B):
        for g in range(P_G):
            for i in np.flatnonzero(~real[b]):
                for q in (g * 2 * P_M + i, g * 2 * P_M + P_M + i):
                    finite = np.all(np.isfinite(y_pred[b, :, q]), axis=-1)  # [S]
                    moved[b, finite, q, :4] = 0.5  # (a non-finite row is read by the policy)
    np.testing.assert_allclose(property_step(name)(y_true, moved)[0], value, rtol=1e-6,
                               equal_nan=True)  # fmt: skip
