"""`hungarian_loss.keras_hub`: keras-hub's D-FINE trained with exact matching.

A tiny D-FINE (a two-stage HGNetV2, 6 queries, 32 x 32 images, one decoder layer) is
built once for the module, with denoising queries made from two images' labels (the
`LABELS` below), so that every loss term keras-hub has is exercised. The loss-term tests
run on synthetic outputs of the detector's shapes, compiled once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import keras_hub
import numpy as np
import pytest
import scipy.optimize
from helpers import BACKEND, to_numpy
from keras_hub.src.models.d_fine import d_fine_loss

from hungarian_loss import keras_hub as hk

# One pytest-xdist worker runs this module: its tests share the `detector` fixture.
pytestmark = pytest.mark.xdist_group("keras_hub")

NUM_CLASSES, QUERIES, DECODER_LAYERS, IMAGE = 3, 6, 1, 32
# Two images: two objects, and one object plus a padding row. `[cx, cy, w, h]`, normalized.
BOXES = np.array(
    [
        [[0.30, 0.30, 0.20, 0.20], [0.70, 0.60, 0.30, 0.20]],
        [[0.50, 0.40, 0.40, 0.30], [-1.0, -1.0, -1.0, -1.0]],
    ],
    dtype="float32",
)
LABELS = np.array([[0, 2], [1, -1]], dtype="int32")
# Denoising: 2 labels at most, num_denoising=4 -> 2 groups of 2 * 2 queries; the positive
# queries of an image are 0, 1, 4, 5 (those of image 1: 0, 4).
DN_GROUPS, DN_QUERIES = 2, 8


def build_detector() -> Any:
    """A tiny D-FINE from its config, with denoising queries made from `BOXES`/`LABELS`."""
    hgnetv2 = keras_hub.models.HGNetV2Backbone(
        stem_channels=[3, 8, 8],
        stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False],
        depths=[1, 1],
        hidden_sizes=[16, 32],
        embedding_size=8,
        use_learnable_affine_block=True,
        hidden_act="relu",
        image_shape=(IMAGE, IMAGE, 3),
        out_features=["stage1", "stage2"],
    )
    labels = [
        {"boxes": BOXES[i][LABELS[i] >= 0], "labels": LABELS[i][LABELS[i] >= 0]}
        for i in range(len(LABELS))
    ]
    backbone = keras_hub.models.DFineBackbone(
        backbone=hgnetv2,
        decoder_in_channels=[16, 16],
        encoder_hidden_dim=16,
        num_denoising=4,
        num_labels=NUM_CLASSES,
        hidden_dim=16,
        learn_initial_query=False,
        num_queries=QUERIES,
        anchor_image_size=(IMAGE, IMAGE),
        feat_strides=[4, 8],
        num_feature_levels=2,
        encoder_in_channels=[16, 32],
        encode_proj_layers=[1],
        num_attention_heads=2,
        encoder_ffn_dim=16,
        num_encoder_layers=1,
        hidden_expansion=0.5,
        depth_multiplier=0.5,
        eval_idx=-1,
        num_decoder_layers=DECODER_LAYERS,
        decoder_attention_heads=2,
        decoder_ffn_dim=16,
        decoder_n_points=[2, 2],
        lqe_hidden_dim=8,
        num_lqe_layers=1,
        out_features=["stage1", "stage2"],
        image_shape=(IMAGE, IMAGE, 3),
        labels=labels,
        seed=0,
    )
    return keras_hub.models.DFineObjectDetector(backbone=backbone, num_classes=NUM_CLASSES)


# Session scope: pytest-xdist's worker may run other modules' tests between this module's,
# and a module fixture would then be built again (40 s on JAX) for the next test here.
@pytest.fixture(scope="session")
def detector() -> Any:
    keras.utils.set_random_seed(0)
    return build_detector()


def compiled(fn: Any) -> Any:
    """`fn` compiled as a whole (XLA on TensorFlow and JAX; eager on torch, see conftest)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)

    def eager(*args: Any) -> Any:  # torch: tensors in, as a compiled function would get
        return fn(*keras.tree.map_structure(keras.ops.convert_to_tensor, args))

    return eager


# ----- synthetic outputs -----------------------------------------------------------------


def synthetic_outputs(detector: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Outputs of the detector's shapes for `len(LABELS)` images, queries at random."""
    batch, layers = len(LABELS), DECODER_LAYERS + 1
    queries = DN_QUERIES + QUERIES
    bins = detector.backbone.decoder.max_num_bins + 1

    def boxes(*shape: int) -> np.ndarray:
        centers = rng.uniform(0.2, 0.8, (*shape, 2))
        sizes = rng.uniform(0.05, 0.3, (*shape, 2))
        return np.concatenate([centers, sizes], axis=-1).astype("float32")

    positives = np.array([[0, 1, 4, 5], [0, 4, -1, -1]], dtype="int32")
    return {
        "intermediate_logits": rng.normal(size=(batch, layers, queries, NUM_CLASSES)),
        "intermediate_reference_points": boxes(batch, layers, queries),
        "intermediate_predicted_corners": rng.normal(size=(batch, layers, queries, 4 * bins)),
        "initial_reference_points": boxes(batch, layers, queries),
        "enc_topk_logits": rng.normal(size=(batch, QUERIES, NUM_CLASSES)),
        "enc_topk_bboxes": boxes(batch, QUERIES),
        "pred_boxes": boxes(batch, QUERIES),
        "dn_positive_idx": positives,
        "dn_num_group": np.full((batch,), DN_GROUPS, dtype="int32"),
        "dn_num_split": np.tile(np.array([[DN_QUERIES, QUERIES]], dtype="int32"), (batch, 1)),
    }


def as_float32(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype("float32") if v.dtype.kind == "f" else v for k, v in outputs.items()}


def on_targets(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Query `t` of every image sits exactly on the image's target `t` (in every layer and
    in the encoder), and predicts its class; so does every positive denoising query."""
    outputs = {key: value.copy() for key, value in outputs.items()}
    for image in range(len(LABELS)):
        for target in np.flatnonzero(LABELS[image] >= 0):
            box, label = BOXES[image, target], LABELS[image, target]
            for query in (DN_QUERIES + target, target, target + 4):  # matching, dn groups
                outputs["intermediate_reference_points"][image, :, query] = box
                outputs["intermediate_logits"][image, :, query, label] = 8.0
            outputs["enc_topk_bboxes"][image, target] = box
            outputs["enc_topk_logits"][image, target, label] = 8.0
    return outputs


_LOSS_TERMS: dict[int, Any] = {}


def loss_terms(detector: Any, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """The integration's weighted terms, compiled once per detector."""
    if id(detector) not in _LOSS_TERMS:
        _LOSS_TERMS[id(detector)] = compiled(lambda y, y_pred: hk.loss_terms(detector, y, y_pred))
    y = {"boxes": BOXES, "labels": LABELS}
    return {
        k: float(to_numpy(v)) for k, v in _LOSS_TERMS[id(detector)](y, as_float32(outputs)).items()
    }


# ----- the loss terms read each image's own targets ------------------------------------------


def test_queries_on_their_targets_give_zero_box_losses(detector: Any) -> None:
    terms = loss_terms(detector, on_targets(synthetic_outputs(detector, np.random.default_rng(0))))
    box_terms = {k: v for k, v in terms.items() if k.startswith(("loss_bbox", "loss_ciou"))}
    suffixes = ["", *[f"_aux_{i}" for i in range(DECODER_LAYERS)], "_enc"]
    suffixes += [f"_dn_{i}" for i in range(DECODER_LAYERS + 1)]
    assert sorted(box_terms) == sorted(
        f"{t}{s}" for t in ("loss_bbox", "loss_ciou") for s in suffixes
    )
    assert all(abs(value) < 1e-4 for value in box_terms.values()), box_terms
    assert all(math.isfinite(value) for value in terms.values()), terms


def test_keras_hubs_own_criterion_reads_the_first_images_targets(detector: Any) -> None:
    # The same outputs through keras-hub 0.32's own matcher and index layout: the second
    # image is compared with the first image's targets, so the box losses are not zero.
    # If this fails, keras-hub has changed: check the integration against the new release.
    outputs = as_float32(on_targets(synthetic_outputs(detector, np.random.default_rng(0))))
    batch, targets = LABELS.shape

    def keras_hub_box_losses(y_pred: dict[str, Any]) -> dict[str, Any]:
        flat = {
            "labels": keras.ops.reshape(LABELS, [-1]),
            "boxes": keras.ops.reshape(BOXES, [-1, 4]),
        }
        last = {
            "logits": y_pred["intermediate_logits"][:, -1, DN_QUERIES:],
            "pred_boxes": y_pred["intermediate_reference_points"][:, -1, DN_QUERIES:],
        }
        indices = d_fine_loss.hungarian_matcher(
            last,
            [flat],
            keras.ops.full((batch,), targets, dtype="int32"),
            detector.use_focal_loss,
            detector.matcher_alpha,
            detector.matcher_gamma,
            detector.matcher_bbox_cost,
            detector.matcher_class_cost,
            detector.matcher_ciou_cost,
            detector.backbone,
        )
        return d_fine_loss.compute_box_losses(last, [flat], indices, float(batch * targets))

    losses = {k: float(to_numpy(v)) for k, v in compiled(keras_hub_box_losses)(outputs).items()}
    assert losses["loss_bbox"] > 0.05 and losses["loss_ciou"] > 0.05, losses


# ----- the matching ----------------------------------------------------------------------------


def np_cost(
    detector: Any, logits: np.ndarray, boxes: np.ndarray, labels: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """The detector's matching cost in NumPy (float64): `[T, Q]` for one image."""
    prob = 1 / (1 + np.exp(-logits.astype("float64")))[:, np.maximum(labels, 0)].T  # [T, Q]
    alpha, gamma = detector.matcher_alpha, detector.matcher_gamma
    class_cost = alpha * (1 - prob) ** gamma * -np.log(prob + 1e-8) - (
        (1 - alpha) * prob**gamma * -np.log(1 - prob + 1e-8)
    )
    l1 = np.abs(targets[:, None] - boxes[None]).sum(-1)
    eps = keras.backend.epsilon()
    (cx1, cy1, w1, h1), (cx2, cy2, w2, h2) = (
        np.moveaxis(boxes[None], -1, 0),
        np.moveaxis(targets[:, None], -1, 0),
    )
    inter_w = np.maximum(
        np.minimum(cx1 + w1 / 2, cx2 + w2 / 2) - np.maximum(cx1 - w1 / 2, cx2 - w2 / 2), 0
    )
    inter_h = np.maximum(
        np.minimum(cy1 + h1 / 2, cy2 + h2 / 2) - np.maximum(cy1 - h1 / 2, cy2 - h2 / 2), 0
    )
    inter = inter_w * inter_h
    union = w1 * (h1 + eps) + w2 * (h2 + eps) - inter + eps
    iou = inter / (union + eps)
    hull_w = np.maximum(cx1 + w1 / 2, cx2 + w2 / 2) - np.minimum(cx1 - w1 / 2, cx2 - w2 / 2)
    hull_h = np.maximum(cy1 + h1 / 2, cy2 + h2 / 2) - np.minimum(cy1 - h1 / 2, cy2 - h2 / 2)
    rho = ((cx1 - cx2) ** 2 + (cy1 - cy2) ** 2) / (hull_w**2 + hull_h**2 + eps)
    v = 4 / math.pi**2 * (np.arctan(w2 / (h2 + eps)) - np.arctan(w1 / (h1 + eps))) ** 2
    ciou = iou - (rho + v * v / (v - iou + 1 + eps))
    return (
        detector.matcher_bbox_cost * l1
        + detector.matcher_class_cost * class_cost
        - detector.matcher_ciou_cost * ciou
    )


def test_matching_is_scipys_optimum_of_the_detectors_cost(detector: Any) -> None:
    rng = np.random.default_rng(1)
    outputs = as_float32(synthetic_outputs(detector, rng))
    labels, boxes = LABELS, BOXES

    def match(y_pred: dict[str, Any]) -> Any:
        t_labels, t_boxes = keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(boxes)
        sets = hk._prediction_sets(detector, y_pred)
        real = keras.ops.greater_equal(t_labels, 0)
        matched = hk._match_sets(detector, sets, t_labels, t_boxes, real)
        costs = {
            name: hk.matching_cost(detector, s["logits"], s["pred_boxes"], t_labels, t_boxes)
            for name, s in sets.items()
        }
        return matched, costs

    matched, costs = compiled(match)(outputs)
    sets = {
        "last": (-1, DN_QUERIES),
        **{f"aux_{i}": (i, DN_QUERIES) for i in range(DECODER_LAYERS)},
    }
    assert sorted(matched) == sorted([*sets, "enc"])
    for name in matched:
        for image in range(len(labels)):
            if name == "enc":
                logits = outputs["enc_topk_logits"][image]
                pred = np.clip(outputs["enc_topk_bboxes"][image], 0, 1)
            else:
                layer, start = sets[name]
                logits = outputs["intermediate_logits"][image, layer, start:]
                pred = np.clip(outputs["intermediate_reference_points"][image, layer, start:], 0, 1)
            real = labels[image] >= 0
            cost = np_cost(detector, logits, pred, labels[image], boxes[image])  # [T, Q]
            np.testing.assert_allclose(
                to_numpy(costs[name])[image][real], cost[real], rtol=1e-4, atol=1e-4
            )
            assignment = to_numpy(matched[name])[image]  # [T]
            assert np.all(assignment[~real] == -1)  # padding targets never matched
            taken = assignment[real]
            assert len(set(taken.tolist())) == real.sum() and np.all(taken >= 0)
            rows, cols = scipy.optimize.linear_sum_assignment(cost[real])
            optimum = cost[real][rows, cols].sum()
            assert cost[real][np.arange(real.sum()), taken].sum() == pytest.approx(
                optimum, abs=1e-4
            )


# ----- the detector ---------------------------------------------------------------------------


def test_exact_matching_warns_about_denoising_and_changes_only_the_loss(detector: Any) -> None:
    config = detector.get_config()
    with pytest.warns(hk.DenoisingWarning, match="built with `labels`"):
        assert hk.exact_matching(detector) is detector
    assert type(detector) is keras_hub.models.DFineObjectDetector
    assert detector.get_config() == config
    assert detector.compute_loss.__func__ is hk._compute_loss


# One backend: what the fit checks (the integration's loss trains the detector, and the
# detector saves and reloads) does not depend on the backend, and the loss terms it trains
# with are checked on every backend above. JAX: its fit of this detector takes a quarter of
# TensorFlow's on a 2-core CPU (42 s against 187 s) and a fraction of torch's eager steps.
@pytest.mark.backends("jax")
def test_fit_lowers_the_loss_then_saves_and_reloads(detector: Any, tmp_path: Path) -> None:
    with pytest.warns(hk.DenoisingWarning):
        hk.exact_matching(detector)
    # D-FINE's and RT-DETR's own recipe clips the gradient's global norm at 0.1: without
    # it, this tiny detector's loss came back up after 20 steps on some CPUs (TensorFlow:
    # 28.1 -> 22.1 -> 26.0 over the 40 steps).
    optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=0.1)
    detector.compile(optimizer=optimizer, jit_compile=True)
    images = np.random.default_rng(0).uniform(0, 255, (2, IMAGE, IMAGE, 3)).astype("float32")
    y = {"boxes": BOXES, "labels": LABELS}  # the labels the denoising queries come from
    history = detector.fit(images, y, batch_size=2, epochs=40, shuffle=False, verbose=0)
    losses = history.history["loss"]  # one step per epoch, each loss before its update
    assert all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:2]), losses

    path = tmp_path / "d_fine.keras"
    detector.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is keras_hub.models.DFineObjectDetector
    assert "compute_loss" not in vars(reloaded)  # keras-hub's own criterion until asked
    for saved, loaded in zip(detector.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(saved), to_numpy(loaded))


# ----- errors ----------------------------------------------------------------------------------


def test_rejects_other_models() -> None:
    with pytest.raises(TypeError, match=r"Expected a keras_hub\.models\.DFineObjectDetector"):
        hk.exact_matching(keras.Sequential([keras.layers.Dense(1)]))


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0", "nightly"])
def test_rejects_untested_keras_hub(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras_hub, "__version__", version)
    with pytest.raises(ImportError, match=f"Received: keras-hub {version}"):
        hk.exact_matching(None)


def test_accepts_the_tested_release() -> None:
    assert keras_hub.__version__.startswith("0.32.")
    hk._check_version("0.32.9")
