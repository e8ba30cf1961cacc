r"""Train keras-hub's D-FINE detector with exact, batched matching.

`keras_hub.models.DFineObjectDetector` (keras-hub 0.32) computes its training loss in
`compute_loss`: it matches the predictions of the last decoder layer, of each auxiliary
decoder layer and of the encoder to the targets, then applies its loss terms (varifocal,
L1, CIoU, FGL, DDF) to the matched pairs. In keras-hub 0.32 that criterion

- matches one image at a time with a matcher that is not optimal;
- hands its loss terms per-image target positions that they read from the batch's
  flattened targets, so every image is trained against the first image's targets;
- counts padding rows as targets (in the matching and in `num_boxes`);
- gives the denoising terms query positions where they expect target positions.

[`exact_matching`][hungarian_loss.keras_hub.exact_matching] gives one detector a
`compute_loss` that keeps keras-hub's loss terms and weights, and hands them what they
should get: matchings by
[`linear_sum_assignment`][hungarian_loss.linear_sum_assignment] (all layers and images
of a step in one solver call, on the detector's own matching cost, padding targets
masked out), target positions that point at each image's own targets, and a `num_boxes`
that counts real targets only. Nothing else about the detector changes.

keras-hub is imported only when a function of this module is called; install it with
the extra: `pip install "hungarian-loss[keras-hub]"` (from a clone: `".[keras-hub]"`).
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import keras
from keras import ops

from hungarian_loss.assignment import linear_sum_assignment

__all__ = ["DenoisingWarning", "exact_matching", "loss_terms", "matching_cost"]

Tensor = Any

# The keras-hub releases this module is tested with: [first, last], by (major, minor).
TESTED_KERAS_HUB = ((0, 32), (0, 32))
_INSTALL = 'pip install "hungarian-loss[keras-hub]"'


class DenoisingWarning(UserWarning):
    """The detector's denoising queries come from fixed labels, not from each batch.

    keras-hub 0.32 builds D-FINE's denoising queries once, from the `labels` given to
    `DFineBackbone`, and feeds the same queries with every batch. No loss can make them
    denoise each batch's targets; see
    [Training keras-hub's D-FINE](../howto/keras-hub.md#denoising) for what to do.
    """


def exact_matching(detector: Any) -> Any:
    """Makes a keras-hub D-FINE detector train with exact matching and its own targets.

    Sets the detector's `compute_loss` (the method Keras's `fit` and `evaluate` call)
    to one that keeps keras-hub's loss terms, their weights and their normalization,
    and hands them

    1. the optimal matchings of the last decoder layer, of every auxiliary decoder
       layer and of the encoder, by
       [`linear_sum_assignment`][hungarian_loss.linear_sum_assignment], for the whole
       batch in one call, on the detector's own matching cost (its focal or softmax
       class cost, L1 and CIoU, with its `matcher_*` weights); padding targets (label
       `< 0`) are never matched;
    2. target positions that point at each image's own targets, and a `num_boxes` that
       counts real targets only;
    3. for the denoising queries (a backbone built with `labels`): each query's own
       target position (query `k` of a denoising group denoises target
       `k mod (group size)` of its image), normalized by the real targets times the
       number of groups.

    The weights, the outputs, inference and saving are those of keras-hub: the
    `.keras` file is a plain `DFineObjectDetector` (call `exact_matching` again after
    loading it to train on). Call it before `fit`, or `compile` again afterwards.
    The targets `y` are what keras-hub's loss reads: `{"boxes": [B, T, 4],
    "labels": [B, T]}`, boxes as normalized `center_xywh`, padding rows with label -1.

    Example (`detector` is a `keras_hub.models.DFineObjectDetector`):

    ```python
    from hungarian_loss.keras_hub import exact_matching

    detector = exact_matching(detector)
    detector.compile(optimizer="adam")
    detector.fit(images, {"boxes": boxes, "labels": labels})
    ```

    Args:
        detector: a `keras_hub.models.DFineObjectDetector`.

    Returns:
        The same detector object.

    Raises:
        ImportError: if keras-hub is not installed, or its version is outside the
            tested range.
        TypeError: if `detector` is not a `DFineObjectDetector`.

    Warns:
        DenoisingWarning: if the backbone was built with `labels` (denoising on): its
            denoising queries come from those labels, not from each batch's targets.
    """
    detector_class = _detector_class()
    if not isinstance(detector, detector_class):
        raise TypeError(
            "Expected a keras_hub.models.DFineObjectDetector. "
            f"Received: detector of type {type(detector).__name__}"
        )
    if detector.backbone.dn_split_point is not None:
        warnings.warn(
            "This D-FINE backbone was built with `labels`, so its denoising queries are "
            "noisy copies of those fixed labels, the same for every batch, not of each "
            "batch's targets. exact_matching trains each denoising query against the "
            "target of its own image at its own position, which is right only when the "
            "batch's targets are the labels the backbone was built with. To train on a "
            "data set, build the DFineBackbone without `labels` (no denoising). See "
            "docs/howto/keras-hub.md, 'Denoising'.",
            DenoisingWarning,
            stacklevel=2,
        )
    detector.compute_loss = types.MethodType(_compute_loss, detector)
    # A step function traced before holds the previous loss: let Keras trace it again.
    detector.train_function = None
    detector.test_function = None
    return detector


def loss_terms(detector: Any, y: dict[str, Tensor], y_pred: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weighted loss terms that `exact_matching`'s `compute_loss` sums, by name.

    The names are keras-hub's: `loss_vfl`, `loss_bbox`, `loss_ciou`, `loss_fgl` and
    `loss_ddf` for the last decoder layer, the same with `_aux_{i}` for auxiliary layer
    `i`, `_enc` for the encoder (`loss_vfl`, `loss_bbox`, `loss_ciou`) and `_dn_{i}` for
    the denoising queries of layer `i` (when the backbone has them). Each is already
    multiplied by its weight in the detector (`weight_loss_*`); the loss is their sum.

    Args:
        detector: a `keras_hub.models.DFineObjectDetector`.
        y: the targets, `{"boxes": [B, T, 4], "labels": [B, T]}` (see `exact_matching`).
        y_pred: the detector's outputs for the batch (a dict, as `detector(images)`).

    Returns:
        A dict of scalar tensors.

    Raises:
        ImportError: if keras-hub is not installed, or its version is outside the
            tested range.
    """
    _detector_class()
    from keras_hub.src.models.d_fine import d_fine_loss

    labels = ops.cast(y["labels"], "int32")  # [B, T]
    target_boxes = ops.cast(y["boxes"], y_pred["pred_boxes"].dtype)  # [B, T, 4]
    real = ops.greater_equal(labels, 0)  # [B, T]
    batch_size, num_targets = ops.shape(labels)[0], ops.shape(labels)[1]
    targets = [{"labels": ops.reshape(labels, [-1]), "boxes": ops.reshape(target_boxes, [-1, 4])}]
    num_boxes = ops.maximum(ops.sum(ops.cast(real, "float32")), 1.0)
    # Position of target t of image b in the flattened targets the loss terms read.
    flat_position = ops.arange(batch_size * num_targets, dtype="int32")
    flat_position = ops.reshape(flat_position, [batch_size, num_targets])  # [B, T]

    sets = _prediction_sets(detector, y_pred)
    matched = _match_sets(detector, sets, labels, target_boxes, real)  # name -> [B, T]
    weights = detector.weight_dict
    terms: dict[str, Tensor] = {}

    def add(suffix: str, values: dict[str, Tensor]) -> None:
        for key, value in values.items():
            if key in weights:
                terms[key + suffix] = value * weights[key]

    for name, outputs in sets.items():
        query = matched[name]  # [B, T]
        indices = (ops.maximum(query, 0), flat_position, ops.greater_equal(query, 0))
        suffix = "" if name == "last" else f"_{name}"
        add(suffix, _vfl_and_box_terms(detector, outputs, targets, indices, num_boxes))
        if name != "enc":
            # keras-hub: a DDF term for the auxiliary layers but the last of them.
            last_aux = f"aux_{detector.backbone.num_decoder_layers - 1}"
            add(
                suffix,
                d_fine_loss.compute_local_losses(
                    outputs,
                    targets,
                    indices,
                    num_boxes,
                    detector.backbone,
                    detector.ddf_temperature,
                    compute_ddf=name not in ("last", last_aux),
                ),
            )
    if "dn_positive_idx" in y_pred:
        indices, group_count = _denoising_indices(detector, y_pred, real, flat_position)
        num_boxes_dn = num_boxes * group_count
        for layer, outputs in enumerate(_denoising_sets(detector, y_pred)):
            suffix = f"_dn_{layer}"
            add(suffix, _vfl_and_box_terms(detector, outputs, targets, indices, num_boxes_dn))
            add(
                suffix,
                d_fine_loss.compute_local_losses(
                    outputs,
                    targets,
                    indices,
                    num_boxes_dn,
                    detector.backbone,
                    detector.ddf_temperature,
                    compute_ddf=layer < detector.backbone.num_decoder_layers,
                ),
            )
    return terms


def _compute_loss(
    self: Any,
    x: Any = None,
    y: Any = None,
    y_pred: Any = None,
    sample_weight: Any = None,
    **kwargs: Any,
) -> Tensor:
    """`compute_loss` of a detector given to `exact_matching`: the sum of its terms."""
    del x, sample_weight, kwargs  # keras-hub's loss ignores them too
    terms = loss_terms(self, y, y_pred)
    return ops.sum(ops.stack([ops.cast(value, "float32") for value in terms.values()]))


# ----- the prediction sets and their matching ------------------------------------------------


def _prediction_sets(detector: Any, y_pred: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The matched prediction sets of a step, as keras-hub's loss terms take them.

    `last` (the last decoder layer), `aux_{i}` (decoder layer `i`, with the last layer as
    the teacher of its DDF term) and `enc` (the encoder's top queries), the denoising
    queries left out.
    """
    split = detector.backbone.dn_split_point or 0
    logits = y_pred["intermediate_logits"][:, :, split:]  # [B, L + 1, Q, C]
    boxes = y_pred["intermediate_reference_points"][:, :, split:]  # [B, L + 1, Q, 4]
    corners = y_pred["intermediate_predicted_corners"][:, :, split:]  # [B, L + 1, Q, 4 * bins]
    references = y_pred["initial_reference_points"][:, :, split:]  # [B, L + 1, Q, 4]
    sets = {
        "last": {
            "logits": logits[:, -1],
            "pred_boxes": ops.clip(boxes[:, -1], 0, 1),
            "pred_corners": corners[:, -1],
            "ref_points": references[:, -1],
            "teacher_corners": ops.zeros_like(corners[:, -1]),
            "teacher_logits": ops.zeros_like(logits[:, -1]),
        }
    }
    for layer in range(detector.backbone.num_decoder_layers):
        sets[f"aux_{layer}"] = {
            "logits": logits[:, layer],
            "pred_boxes": ops.clip(boxes[:, layer], 0, 1),
            "pred_corners": corners[:, layer],
            "ref_points": references[:, layer],
            "teacher_corners": corners[:, -1],
            "teacher_logits": logits[:, -1],
        }
    sets["enc"] = {
        "logits": y_pred["enc_topk_logits"],
        "pred_boxes": ops.clip(y_pred["enc_topk_bboxes"], 0, 1),
    }
    return sets


def _match_sets(
    detector: Any,
    sets: dict[str, dict[str, Tensor]],
    labels: Tensor,
    target_boxes: Tensor,
    real: Tensor,
) -> dict[str, Tensor]:
    """Each set's matching `[B, T]` (the query of each target, -1 if none).

    Sets with the same number of queries are solved in one call, `B * S` problems.
    """
    by_size: dict[int, list[str]] = {}
    for name, outputs in sets.items():
        by_size.setdefault(int(outputs["logits"].shape[1]), []).append(name)
    matched = {}
    for names in by_size.values():
        logits = ops.stack([sets[name]["logits"] for name in names], axis=1)  # [B, S, Q, C]
        boxes = ops.stack([sets[name]["pred_boxes"] for name in names], axis=1)  # [B, S, Q, 4]
        count = len(names)
        shape = ops.shape(logits)
        cost = matching_cost(
            detector,
            ops.reshape(logits, [-1, shape[2], shape[3]]),
            ops.reshape(boxes, [-1, shape[2], 4]),
            _repeat_sets(labels, count),
            _repeat_sets(target_boxes, count),
        )  # [B * S, T, Q]
        query = linear_sum_assignment(
            ops.stop_gradient(cost), row_mask=_repeat_sets(real, count)
        )  # [B * S, T]
        query = ops.reshape(query, [shape[0], count, -1])  # [B, S, T]
        for position, name in enumerate(names):
            matched[name] = query[:, position]
    return matched


def _repeat_sets(x: Tensor, count: int) -> Tensor:
    """`[B, ...]` -> `[B * count, ...]`, each sample repeated `count` times in a row."""
    return ops.repeat(x, count, axis=0)


def matching_cost(
    detector: Any, logits: Tensor, pred_boxes: Tensor, labels: Tensor, target_boxes: Tensor
) -> Tensor:
    """The detector's matching cost, `[N, T, Q]` (targets x queries), for N problems.

    keras-hub's: `matcher_class_cost` times the focal class cost (or minus the softmax
    probability of the target's class when `use_focal_loss=False`), plus
    `matcher_bbox_cost` times the L1 distance of the `center_xywh` boxes, minus
    `matcher_ciou_cost` times their CIoU. A padding label (< 0) is read as class 0;
    `exact_matching` masks padding targets out of the matching.

    Args:
        detector: a `keras_hub.models.DFineObjectDetector` (its `matcher_*` settings).
        logits: class logits, `[N, Q, C]`.
        pred_boxes: predicted boxes, `[N, Q, 4]`, normalized `center_xywh`.
        labels: target class ids, `[N, T]`.
        target_boxes: target boxes, `[N, T, 4]`, normalized `center_xywh`.

    Returns:
        The cost of each target and query, `[N, T, Q]`.
    """
    num_classes = ops.shape(logits)[-1]
    one_hot = ops.one_hot(ops.maximum(labels, 0), num_classes, dtype=logits.dtype)  # [N, T, C]
    if detector.use_focal_loss:
        prob = ops.einsum("ntc,nqc->ntq", one_hot, ops.sigmoid(logits))  # [N, T, Q]
        alpha, gamma = detector.matcher_alpha, detector.matcher_gamma
        positive = alpha * ops.power(1 - prob, gamma) * -ops.log(prob + 1e-8)
        negative = (1 - alpha) * ops.power(prob, gamma) * -ops.log(1 - prob + 1e-8)
        class_cost = positive - negative
    else:
        class_cost = -ops.einsum("ntc,nqc->ntq", one_hot, ops.softmax(logits, axis=-1))
    l1 = ops.sum(ops.abs(target_boxes[:, :, None] - pred_boxes[:, None]), axis=-1)  # [N, T, Q]
    convert = keras.utils.bounding_boxes.convert_format
    ciou = keras.utils.bounding_boxes.compute_ciou(
        convert(pred_boxes, source="center_xywh", target="xyxy")[:, None],
        convert(target_boxes, source="center_xywh", target="xyxy")[:, :, None],
        bounding_box_format="xyxy",
    )  # [N, T, Q]
    return (
        detector.matcher_bbox_cost * l1
        + detector.matcher_class_cost * class_cost
        - detector.matcher_ciou_cost * ciou
    )


def _vfl_and_box_terms(
    detector: Any,
    outputs: dict[str, Tensor],
    targets: list[dict[str, Tensor]],
    indices: tuple[Tensor, Tensor, Tensor],
    num_boxes: Tensor,
) -> dict[str, Tensor]:
    """keras-hub's varifocal, L1 and CIoU terms of one prediction set."""
    from keras_hub.src.models.d_fine import d_fine_loss

    terms = d_fine_loss.compute_vfl_loss(
        outputs,
        targets,
        indices,
        num_boxes,
        detector.num_classes,
        detector.matcher_alpha,
        detector.matcher_gamma,
    )
    terms.update(d_fine_loss.compute_box_losses(outputs, targets, indices, num_boxes))
    return dict(terms)


# ----- denoising ---------------------------------------------------------------------------


def _denoising_sets(detector: Any, y_pred: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The denoising queries of every decoder layer, the last layer as the teacher."""
    split = detector.backbone.dn_split_point
    logits = y_pred["intermediate_logits"][:, :, :split]
    boxes = y_pred["intermediate_reference_points"][:, :, :split]
    corners = y_pred["intermediate_predicted_corners"][:, :, :split]
    references = y_pred["initial_reference_points"][:, :, :split]
    return [
        {
            "logits": logits[:, layer],
            "pred_boxes": ops.clip(boxes[:, layer], 0, 1),
            "pred_corners": corners[:, layer],
            "ref_points": references[:, layer],
            "teacher_corners": corners[:, -1],
            "teacher_logits": logits[:, -1],
        }
        for layer in range(detector.backbone.num_decoder_layers + 1)
    ]


def _denoising_indices(
    detector: Any, y_pred: dict[str, Tensor], real: Tensor, flat_position: Tensor
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """Indices of the positive denoising queries and their targets, and the group count.

    The denoising part is `G` groups of `2 K` queries (K the most labels of an image the
    backbone was built with): in each group, query `k < K` is a noisy copy of label `k`
    of its image (a positive), query `K + k` a negative. keras-hub gives the positive
    query positions (`dn_positive_idx`, -1 padded); the target of position `p` is
    `p mod 2 K`.
    """
    positions = ops.cast(y_pred["dn_positive_idx"], "int32")  # [B, P]
    group_count = ops.cast(y_pred["dn_num_group"][0], "int32")
    group_size = ops.floor_divide(detector.backbone.dn_split_point, group_count)  # 2 K
    target = ops.mod(ops.maximum(positions, 0), group_size)  # [B, P]
    num_targets = ops.shape(real)[1]
    in_range = ops.less(target, num_targets)
    safe_target = ops.minimum(target, num_targets - 1)
    is_real = ops.take_along_axis(real, safe_target, axis=1)
    valid = ops.greater_equal(positions, 0) & in_range & is_real
    indices = (
        ops.maximum(positions, 0),
        ops.take_along_axis(flat_position, safe_target, axis=1),
        valid,
    )
    return indices, ops.cast(group_count, "float32")


# ----- keras-hub ---------------------------------------------------------------------------


def _detector_class() -> Any:
    """`keras_hub.models.DFineObjectDetector`, after checking the installed keras-hub."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            f"hungarian_loss.keras_hub needs keras-hub. Install it with: {_INSTALL}"
        ) from error
    _check_version(keras_hub.__version__)
    return keras_hub.models.DFineObjectDetector


def _check_version(version: str) -> None:
    """Raises `ImportError` if a keras-hub version is outside the tested range.

    Args:
        version: a version string, e.g. `keras_hub.__version__`.

    Raises:
        ImportError: if `version` is not a tested keras-hub release.

    Examples:
        >>> _check_version("0.32.0")
        >>> _check_version("0.33.0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ImportError: ...tested with keras-hub 0.32.x. Received: keras-hub 0.33.0. ...
    """
    parts = version.split(".")
    try:
        release = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        release = None
    first, last = TESTED_KERAS_HUB
    if release is None or not first <= release <= last:
        tested = (
            f"{first[0]}.{first[1]}.x"
            if first == last
            else f"{first[0]}.{first[1]} to {last[0]}.{last[1]}"
        )
        raise ImportError(
            f"hungarian_loss.keras_hub is tested with keras-hub {tested}. "
            f"Received: keras-hub {version}. Install a tested version with: {_INSTALL}"
        )
