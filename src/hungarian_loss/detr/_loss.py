r"""`DETRLoss`: the DETR-family set criterion as a `HungarianLoss`.

The criterion of DETR (Carion et al., 2020), Deformable DETR (Zhu et al., 2021), and the
real-time DETRs that keep their matching and change the terms around it: RT-DETR (Zhao
et al., 2024), D-FINE (Peng et al., 2024) and DEIM (Huang et al., 2025). The terms live
in `_classification` (one function per kind) and the query layouts in `_layout`; this
module matches, applies the weights and normalizes, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
from keras import ops

from hungarian_loss import _backend, boxes, costs
from hungarian_loss.detr import _classification as classification_terms
from hungarian_loss.detr import _layout
from hungarian_loss.detr._checks import (
    check_choice,
    check_unit,
    check_weight,
    standardize_weights,
)
from hungarian_loss.detr._masks import MaskTerms, invalid_masks
from hungarian_loss.loss import (
    HungarianLoss,
    _check_class_id_dtype,
    _check_true_dtype,
    _failure_policy,
    _finite_rows,
    _negative_size,
    _rows_where,
    _to_tensor,
)

__all__ = ["DETRLoss", "DETRLossTerm", "MaskTerms"]

Tensor = Any

CLASSIFICATIONS = ("softmax", "focal", "varifocal", "mal", "ia_bce")
GROUP_REDUCTIONS = ("mean", "sum")
NORMALIZATIONS = ("sample", "batch")
BOX_LOSSES = {"giou": "GIoUCost", "diou": "DIoUCost", "ciou": "CIoUCost"}
_NAN = float("nan")
_INF = float("inf")
# The loss's alpha and gamma per classification kind, when not given.
_DEFAULT_ALPHA = {"softmax": 0.25, "focal": 0.25, "varifocal": 0.75, "mal": 0.75, "ia_bce": 0.25}
_MATCHING_ALPHA, _MATCHING_GAMMA = 0.25, 2.0  # the focal class cost of the real-time DETRs


class _Problems(NamedTuple):
    """One call's matching problems, rows `b * S + s` (set s of sample b)."""

    y_true: Tensor  # [P, M * k, 5]: targets, each repeated k times
    queries: Tensor  # [P, N, D]: the matched queries, non-finite rows zeroed
    denoising: Tensor  # [P, G * 2M, D]: the denoising queries, non-finite rows zeroed
    target_mask: Tensor  # [P, M * k]
    cost: Tensor  # [P, M * k, N]: the matching cost, without gradient
    indices: Tensor  # [P, M * k]: the matched query of each target, -1 where unmatched
    num_sets: int | None  # S * G with query groups
    set_axis: bool  # whether y_pred had a set axis
    invalid: Tensor  # [P, M]: real targets that break a rule of the data (`invalid_targets`)
    nan_matched: Tensor  # [P]: a NaN in a matched query (not a denoising one)
    nan_any: Tensor  # [P]: a NaN in any query
    non_finite: Tensor  # [P]: a non-finite value in any query
    pred_masks: Tensor | None  # [P, N, h, w]: the matched queries' mask logits, broken rows zeroed
    target_masks: Tensor | None  # [B, M, H, W]: each image's target masks, once
    seed: Tensor | None  # int32 [2]: the call's seed of the mask terms' points


@keras.saving.register_keras_serializable(package="hungarian_loss")
class DETRLoss(HungarianLoss):
    r"""The DETR-family loss: class and box matching, then class, L1 and IoU-family terms.

    Layouts (K classes; boxes in `box_format`, DETR's are `center_xywh` in `[0, 1]`):

    ```
    y_true [B, M, 5]            [box (4), class id in 0..K-1]; padding rows all -1
    y_pred [B, Q, 4 + K + 1]    [box (4), logit_0 ... logit_{K-1}, logit_no_object]   softmax
    y_pred [B, Q, 4 + K]        [box (4), logit_0 ... logit_{K-1}]       focal, varifocal, mal
    ```

    or the same as dicts, which read better when the parts differ in shape, and which
    masks need (keras-hub's detectors take `{"boxes", "labels"}` targets too):

    ```
    y_true = {"labels": [B, M] int (-1: padding), "boxes": [B, M, 4], "masks": [B, M, H, W]}
    y_pred = {"logits": [B, (S,) Q, K (+ 1)], "boxes": [B, (S,) Q, 4], "masks": [B, (S,) Q, h, w]}
    ```

    `"masks"` on both sides with `masks=MaskTerms(...)` (MaskFormer, Mask2Former, EoMT:
    see `MaskTerms` and the recipes `maskformer()` and `mask2former()`), where target
    masks (bool or float in `[0, 1]`) may have another resolution than the predicted
    mask logits; `"boxes"` on both sides, or on neither where no box term weighs them
    (the mask recipes). A model whose outputs are such a dict is trained with the loss
    of the whole dict in its `compute_loss` (Keras's `compile` applies a single loss to
    each output of a dict on its own): see the segmentation guide.

    `y_pred` may hold S prediction sets, `[B, S, Q, ...]` (decoder layers, the encoder's
    proposals, query groups): every set is matched to the same targets, all in one
    solver call, and the sample's loss is the mean over sets (see `set_weights`). K is
    read from `y_pred`. With `denoising_groups=G`, the query axis holds `G * 2 * M`
    denoising queries first, then the `N` matched queries (`Q = G * 2 * M + N`; see
    "Denoising" below); otherwise `Q = N`.

    Matching minimizes, over one-to-one matchings of targets i to queries j,

    ```
    C[i, j] = w_class * class_cost(j, c_i) + w_l1 * |box_i - box_j|_1
              + w_box * (1 - IoU_family(box_i, box_j))
    ```

    with `(w_class, w_l1, w_box) = matching_weights` (the loss's weights by default),
    `class_cost = -softmax(logits_j)[c_i]` (softmax) or the focal class cost of Deformable
    DETR with `matching_alpha` and `matching_gamma` (the sigmoid kinds), and the IoU
    family of `box_loss` (GIoU, DIoU or CIoU). With P the matched pairs of a problem, U
    its other queries, `CE(j, c) = -log softmax(logits_j)[c]`, `x` the logits,
    `p = sigmoid(x)`, `onehot[j, c] = [j is matched to a target of class c]` and
    `IoU_j` the IoU of a matched query's box with its target's (no gradient):

    ```
    l1    = sum_{(i, j) in P} |box_i - box_j|_1 / |P|
    box   = sum_{(i, j) in P} (1 - IoU_family(box_i, box_j)) / |P|
    class = (sum_P CE(j, c_i) + eos_coef * sum_U CE(j, K)) / (|P| + eos_coef * |U|)  softmax
    class = sum_{j, c} alpha_t (1 - p_t)^gamma BCE(x, onehot) / |P|                  focal
    class = sum_{j, c} BCE(x, t) (alpha p^gamma (1 - onehot) + t) / |P|,
            t = IoU_j * onehot                                                      varifocal
    class = sum_{j, c} BCE(x, t) (mal_alpha p^gamma (1 - onehot) + onehot) / |P|,
            t = IoU_j^gamma * onehot                                                mal
    class = sum_{j, c} BCE(x, t) (p^gamma (1 - onehot) + onehot) / |P|,
            t = max(p^alpha IoU_j^(1 - alpha), 0.01) * onehot                      ia_bce
    loss  = class_weight * class + l1_weight * l1 + giou_weight * box
    ```

    (`|P|` is taken as 1 when a problem has no target; `p^gamma` in the varifocal and
    matchability-aware weights carries no gradient, nor does IA-BCE's target t; `alpha`
    is `focal_alpha`, `gamma` `focal_gamma`, and mal's `mal_alpha` may be `None`, no
    factor.) `terms` gives the
    three terms (`"class"`, `"l1"` and the `box_loss` name) separately, and
    `term_metrics` makes Keras metrics of them.

    Denoising (RT-DETR, D-FINE, DEIM): with `denoising_groups=G`, query `g * 2M + i` of
    group g is the positive of target i and reconstructs it (a fixed assignment, no
    matching); query `g * 2M + M + i`, and every denoising query of a padding target,
    says "no object". The same three terms are computed on the denoising queries with
    that assignment, normalized by the number of boxes times G, and added to the matched
    queries' terms; the matching and the matched queries' terms never see a denoising
    query. `hungarian_loss.denoising` builds such queries from `y_true`.

    Query groups (Group DETR; LW-DETR, RF-DETR: `query_groups=G`): the N queries of a
    set are G contiguous groups of `N / G`; each group is matched to all targets on its
    own (every group, set and sample in one solver call) and its terms computed as
    above; the sample's loss is the mean over groups (`group_reduction="sum"`: their
    sum), then over sets. `match` gives `[B, (S,) M, G]`, query indices on the whole
    axis. Inference reads group 0.

    Dense one-to-one (DEIM, `dense_one_to_one=True`): the L1 and box terms of every set
    use, for each matched query, the target it is matched to in the most sets (ties:
    the latest such set), normalized by the number of such pairs; the class term keeps
    each set's own matching.

    Normalization. DETR divides its terms by `num_boxes`, the number of objects in the
    whole batch (averaged over replicas), and its cross-entropy by the total weight
    over the whole batch. A Keras loss returns one value per sample, to which Keras
    applies `sample_weight` and `reduction`, so by default (`normalization="sample"`)
    each sample is normalized by its own counts, and the default reduction averages the
    samples: images with few objects weigh as much as crowded ones.
    `normalization="batch"` divides each sample's sums by the batch's totals instead,
    so that with `reduction="sum"` the loss is exactly the source criterion's per-set
    loss (averaged over the sets rather than summed: scale by S for their sum). Under
    `tf.distribute` the totals are combined across replicas by `batch_total`, so that
    several replicas train as one device with the whole batch; under JAX data
    parallelism the batch is global already. The recipes (`DETRLoss.rt_detr()` and the
    others) use the batch normalization and `reduction="sum"`.

    Args:
        class_weight: Weight of the class term in the loss (DETR: 1; Deformable DETR: 2).
        l1_weight: Weight of the L1 term (DETR: 5).
        giou_weight: Weight of the IoU-family box term, `1 - GIoU` (or DIoU, CIoU, see
            `box_loss`) (DETR: 2).
        eos_coef: Relative weight of the "no object" cross-entropy of unmatched queries
            (DETR: 0.1). Softmax only.
        classification: `"softmax"` (DETR: K + 1 logits, the last one "no object"),
            `"focal"` (Deformable DETR), `"varifocal"` (RT-DETR, D-FINE), `"mal"`
            (DEIM's matchability-aware loss) or `"ia_bce"` (LW-DETR's and RF-DETR's
            IoU-aware BCE); the last four read K sigmoid logits.
        focal_alpha: The class term's alpha, in `[0, 1]`: the focal loss's weight of the
            positives, the varifocal loss's weight of the negatives, or IA-BCE's
            exponent of the probability in its target. Defaults to 0.25 for `"focal"`
            and `"ia_bce"`, 0.75 for `"varifocal"` (and `"mal"` when `mal_alpha` is
            given).
        focal_gamma: The class term's gamma, `>= 0` (the IoU's exponent too for
            `"mal"`; DEIM uses 1.5).
        normalization: `"sample"` (each sample by its own counts) or `"batch"` (by the
            batch's totals, the source criteria's, to use with `reduction="sum"`).
        box_loss: The IoU-family box term, in the matching and in the loss: `"giou"`,
            `"diou"` or `"ciou"` (keras-hub's D-FINE uses CIoU).
        matching_weights: `(class, l1, box)` weights of the matching cost, where they
            differ from the loss's (RT-DETR: `(2, 5, 2)` against a loss of `(1, 5, 2)`).
            `None` uses `(class_weight, l1_weight, giou_weight)`.
        matching_alpha: The focal class cost's alpha (sigmoid kinds). Defaults to
            `focal_alpha` for `"focal"` (Deformable DETR matches and trains with one
            alpha) and to 0.25 for `"varifocal"` and `"mal"`.
        matching_gamma: The focal class cost's gamma. Defaults to `focal_gamma` for
            `"focal"` and to 2 for the others.
        mal_alpha: The weight of the negatives in the matchability-aware loss; `None`
            (DEIM's default) for no factor.
        denoising_groups: G, the number of contrastive denoising groups at the front
            of the query axis (0: none).
        dense_one_to_one: Whether the box terms use DEIM's dense one-to-one pairs.
        masks: A `MaskTerms`: the mask and dice terms, in the matching and the loss,
            on dict inputs with masks (None: no masks).
        query_groups: G (Group DETR, LW-DETR, RF-DETR): the query axis holds G groups of
            equal size, each matched to every target on its own; 1 for none.
        group_reduction: `"mean"` (the groups' mean; with `normalization="batch"`,
            each term divided by the batch's number of boxes times G, as LW-DETR's) or
            `"sum"` over the groups.
        box_format: Format of the boxes in both tensors (Keras's names).
        padding_value: Value that fills padding target rows, or `None` when every row
            is a target.
        matches_per_target: k, the queries each target is matched to (H-DETR's
            one-to-many branch); 1 is DETR.
        set_weights: With S prediction sets, one weight per set (see `HungarianLoss`).
        reduction: Keras reduction of the per-sample losses.
        name: Name of the loss.
        dtype: Dtype of the loss's computations; defaults to `keras.backend.floatx()`.

    Raises:
        ValueError: if a weight or `eos_coef` is negative or not finite, all matching
            weights are 0, `classification`, `normalization`, `box_loss` or `box_format`
            is unknown, an alpha is outside `[0, 1]` or a gamma negative, or
            `denoising_groups` is not an int >= 0 or `query_groups` an int >= 1, or
            `masks` or `query_groups` > 1 comes with denoising groups, dense one-to-one
            pairs or several matches per target; at trace time
            if `y_true` does not have 5 channels, `y_pred` has no class logits, its
            query axis is shorter than the denoising queries, or dict inputs miss a key
            or have shapes that do not agree.

    Examples:
        One object of class 1 (of K = 2) and three predictions: the second finds it,
        the others say "no object".

        >>> import numpy as np
        >>> from hungarian_loss import DETRLoss
        >>> y_true = np.array([[[0.5, 0.5, 0.2, 0.2, 1.0],
        ...                     [-1.0, -1.0, -1.0, -1.0, -1.0]]], dtype="float32")
        >>> sure, no_object = 20.0, [0.0, 0.0, 20.0]
        >>> y_pred = np.array([[[0.1, 0.1, 0.1, 0.1, *no_object],
        ...                     [0.5, 0.5, 0.2, 0.2, 0.0, sure, 0.0],
        ...                     [0.9, 0.9, 0.1, 0.1, *no_object]]], dtype="float32")
        >>> loss = DETRLoss()
        >>> np.asarray(loss.match(y_true, y_pred)).tolist()
        [[1, -1]]
        >>> print(f"{float(loss(y_true, y_pred)):.4f}")
        0.0000
        >>> terms = loss.terms(y_true, y_pred)  # per sample, unweighted
        >>> {name: f"{abs(float(value[0])):.4f}" for name, value in terms.items()}
        {'class': '0.0000', 'l1': '0.0000', 'giou': '0.0000'}

        RT-DETR's recipe (varifocal, matching 2/5/2, batch normalization), with one
        denoising group in front of the queries: `Q = 1 * 2 * M + N`.

        >>> rt_detr = DETRLoss.rt_detr(denoising_groups=1)
        >>> logits = np.full((1, 2 * 2 + 3, 2), -20.0, dtype="float32")
        >>> logits[0, [0, 5], 1] = 20.0  # the positive of target 0 and matched query 1
        >>> boxes = np.tile(y_true[:, :1, :4], (1, 7, 1))
        >>> y_dn = np.concatenate([boxes, logits], axis=-1)  # [1, 7, 6]
        >>> np.asarray(rt_detr.match(y_true, y_dn)).tolist()  # indexes the query axis
        [[5, -1]]
        >>> print(f"{float(rt_detr(y_true, y_dn)):.4f}")
        0.0000
    """

    def __init__(
        self,
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        eos_coef: float = 0.1,
        classification: str = "softmax",
        focal_alpha: float | None = None,
        focal_gamma: float = 2.0,
        normalization: str = "sample",
        box_loss: str = "giou",
        matching_weights: Sequence[float] | None = None,
        matching_alpha: float | None = None,
        matching_gamma: float | None = None,
        mal_alpha: float | None = None,
        denoising_groups: int = 0,
        dense_one_to_one: bool = False,
        masks: MaskTerms | dict[str, Any] | None = None,
        query_groups: int = 1,
        group_reduction: str = "mean",
        box_format: str = "center_xywh",
        padding_value: float | None = -1.0,
        matches_per_target: int = 1,
        set_weights: Sequence[float] | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "detr_loss",
        dtype: Any = None,
    ) -> None:
        check_choice("classification", classification, CLASSIFICATIONS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_choice("box_loss", box_loss, tuple(BOX_LOSSES))
        check_choice("group_reduction", group_reduction, GROUP_REDUCTIONS)
        weights = {
            "class_weight": class_weight,
            "l1_weight": l1_weight,
            "giou_weight": giou_weight,
            "eos_coef": eos_coef,
        }
        for arg, value in weights.items():
            check_weight(arg, value)
        if matching_weights is None:
            matching_weights = (class_weight, l1_weight, giou_weight)
        matching = standardize_weights("matching_weights", matching_weights, ("class", "l1", "box"))
        if focal_alpha is None:
            focal_alpha = _DEFAULT_ALPHA[classification]
        if classification == "focal":  # Deformable DETR: one alpha and gamma for both
            matching_alpha = focal_alpha if matching_alpha is None else matching_alpha
            matching_gamma = focal_gamma if matching_gamma is None else matching_gamma
        matching_alpha = _MATCHING_ALPHA if matching_alpha is None else matching_alpha
        matching_gamma = _MATCHING_GAMMA if matching_gamma is None else matching_gamma
        for arg, value in (("focal_alpha", focal_alpha), ("matching_alpha", matching_alpha)):
            check_unit(arg, value)
        if mal_alpha is not None:
            check_unit("mal_alpha", mal_alpha)
        for arg, value in (("focal_gamma", focal_gamma), ("matching_gamma", matching_gamma)):
            check_weight(arg, value)
        if (
            not isinstance(denoising_groups, int)
            or isinstance(denoising_groups, bool)
            or denoising_groups < 0
        ):
            raise ValueError(
                "Expected `denoising_groups` to be an int >= 0. "
                f"Received: denoising_groups={denoising_groups!r}"
            )
        if not isinstance(query_groups, int) or isinstance(query_groups, bool) or query_groups < 1:
            raise ValueError(
                "Expected `query_groups` to be an int >= 1. "
                f"Received: query_groups={query_groups!r}"
            )
        if query_groups > 1 and (denoising_groups or dense_one_to_one or matches_per_target > 1):
            raise ValueError(
                "Expected `query_groups` > 1 without `denoising_groups`, `dense_one_to_one` or "
                "`matches_per_target` > 1 (Group DETR matches each group one-to-one on its "
                f"own). Received: query_groups={query_groups!r}, "
                f"denoising_groups={denoising_groups!r}, dense_one_to_one={dense_one_to_one!r}, "
                f"matches_per_target={matches_per_target!r}"
            )
        if isinstance(masks, dict):
            masks = MaskTerms.from_config(masks)
        if masks is not None and not isinstance(masks, MaskTerms):
            raise ValueError(
                "Expected `masks` to be None or a `hungarian_loss.MaskTerms`. "
                f"Received: masks={masks!r}"
            )
        if masks is not None and (denoising_groups or dense_one_to_one or matches_per_target > 1):
            raise ValueError(
                "Expected `masks` without `denoising_groups`, `dense_one_to_one` or "
                "`matches_per_target` > 1: the mask terms match each target to one query. "
                f"Received: denoising_groups={denoising_groups!r}, "
                f"dense_one_to_one={dense_one_to_one!r}, "
                f"matches_per_target={matches_per_target!r}"
            )
        # The box costs read channels 0:4; the class cost reads the id at channel 4 of
        # `y_true` and the logits from channel 4 on of `y_pred`.
        box_format = boxes.standardize_box_format(box_format)
        l1 = costs.L1Cost(channels=[0, 4])
        box = getattr(costs, BOX_LOSSES[box_loss])(box_format=box_format, channels=[0, 4])
        if classification == "softmax":
            class_cost: Any = costs.ClassProbabilityCost(class_index=4, logits_start=4)
        else:
            class_cost = costs.FocalClassCost(
                alpha=matching_alpha, gamma=matching_gamma, class_index=4, logits_start=4
            )
        matching_cost = costs.WeightedCost(
            [(class_cost, matching[0]), (l1, matching[1]), (box, matching[2])]
        )  # raises if all three weights are 0
        super().__init__(
            cost=matching_cost,
            box_format=box_format,
            padding_value=padding_value,
            matches_per_target=matches_per_target,
            set_weights=set_weights,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.class_weight = float(class_weight)
        self.l1_weight = float(l1_weight)
        self.giou_weight = float(giou_weight)
        self.eos_coef = float(eos_coef)
        self.classification = classification
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.normalization = normalization
        self.box_loss = box_loss
        self.matching_weights = matching
        self.matching_alpha = float(matching_alpha)
        self.matching_gamma = float(matching_gamma)
        self.mal_alpha = None if mal_alpha is None else float(mal_alpha)
        self.denoising_groups = denoising_groups
        self.dense_one_to_one = bool(dense_one_to_one)
        self.masks = masks
        self.query_groups = query_groups
        self.group_reduction = group_reduction
        # A mask criterion whose box weights are all 0 reads no boxes (MaskFormer).
        self._has_boxes = masks is None or any(
            weight != 0.0 for weight in (l1_weight, giou_weight, *matching[1:])
        )
        self._l1 = l1
        self._box = box
        self._iou = costs.IoUCost(box_format=box_format, channels=[0, 4])
        self._num_sets = 1  # of the call being traced, for the batch normalization

    # ----- recipes ---------------------------------------------------------------------------

    @classmethod
    def detr(cls, **kwargs: Any) -> DETRLoss:
        """DETR's criterion (Carion et al., 2020): softmax, weights 1/5/2, `eos_coef` 0.1.

        Args:
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        recipe: dict[str, Any] = {
            "classification": "softmax",
            "class_weight": 1.0,
            "l1_weight": 5.0,
            "giou_weight": 2.0,
            "eos_coef": 0.1,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def deformable_detr(cls, **kwargs: Any) -> DETRLoss:
        """Deformable DETR's criterion (Zhu et al., 2021): focal, weights 2/5/2.

        Sigmoid focal loss and focal class cost with alpha 0.25, gamma 2.

        Args:
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        recipe: dict[str, Any] = {
            "classification": "focal",
            "class_weight": 2.0,
            "l1_weight": 5.0,
            "giou_weight": 2.0,
            "focal_alpha": 0.25,
            "focal_gamma": 2.0,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def rt_detr(cls, denoising_groups: int = 0, **kwargs: Any) -> DETRLoss:
        """RT-DETR's criterion (Zhao et al., 2024).

        Varifocal loss (alpha 0.75, gamma 2) with weights class/L1/GIoU 1/5/2; matching
        2/5/2 with the focal class cost's alpha 0.25, gamma 2; normalized by the batch's
        number of boxes. RT-DETR's default is 100 denoising queries: with M padded
        targets, `denoising_groups = max(1, 100 // M)`.

        Args:
            denoising_groups: G, the denoising groups at the front of the query axis.
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        recipe: dict[str, Any] = {
            "classification": "varifocal",
            "class_weight": 1.0,
            "l1_weight": 5.0,
            "giou_weight": 2.0,
            "focal_alpha": 0.75,
            "focal_gamma": 2.0,
            "matching_weights": (2.0, 5.0, 2.0),
            "matching_alpha": 0.25,
            "matching_gamma": 2.0,
            "denoising_groups": denoising_groups,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def d_fine(cls, denoising_groups: int = 0, **kwargs: Any) -> DETRLoss:
        """D-FINE's class and box terms (Peng et al., 2024); FGL and DDF are the model's.

        As RT-DETR's recipe: varifocal (alpha 0.75, gamma 2), weights 1/5/2, matching
        2/5/2 with alpha 0.25, gamma 2, GIoU. keras-hub's D-FINE uses CIoU instead:
        `DETRLoss.d_fine(box_loss="ciou")`.

        Args:
            denoising_groups: G, the denoising groups at the front of the query axis.
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        return cls.rt_detr(denoising_groups=denoising_groups, **kwargs)

    @classmethod
    def deim(cls, denoising_groups: int = 0, **kwargs: Any) -> DETRLoss:
        """DEIM's criterion (Huang et al., 2025): the matchability-aware loss, dense o2o.

        MAL with gamma 1.5 and no alpha factor, weights 1/5/2, matching 2/5/2 with the
        focal class cost's alpha 0.25, gamma 2, and the box terms on the dense
        one-to-one pairs over the sets.

        Args:
            denoising_groups: G, the denoising groups at the front of the query axis.
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        recipe: dict[str, Any] = {
            "classification": "mal",
            "class_weight": 1.0,
            "l1_weight": 5.0,
            "giou_weight": 2.0,
            "focal_gamma": 1.5,
            "mal_alpha": None,
            "matching_weights": (2.0, 5.0, 2.0),
            "matching_alpha": 0.25,
            "matching_gamma": 2.0,
            "dense_one_to_one": True,
            "denoising_groups": denoising_groups,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def maskformer(
        cls, seed: int | keras.random.SeedGenerator | None = None, **kwargs: Any
    ) -> DETRLoss:
        """MaskFormer's criterion (Cheng et al., 2021): masks on every pixel, no boxes.

        | term | loss weight | matching weight |
        |---|---|---|
        | class: softmax cross-entropy, "no object" 0.1 | 1 | 1 (`-softmax` probability) |
        | mask: sigmoid focal (alpha 0.25, gamma 2), mean over pixels | 20 | 20 |
        | dice | 1 | 1 |

        Every pixel of the predicted masks (`num_points=None`), normalized by the batch's
        number of masks (`reduction="sum"`). Inputs are dicts (see `DETRLoss`).

        Args:
            seed: Unused by the dense terms; kept for the same call as `mask2former`.
            **kwargs: Any constructor argument, to override the recipe's (`masks=` for
                other mask terms).

        Returns:
            A `DETRLoss`.
        """
        terms = MaskTerms(
            mask_weight=20.0, dice_weight=1.0, mask_loss="focal", num_points=None, seed=seed
        )
        recipe: dict[str, Any] = {
            "classification": "softmax",
            "class_weight": 1.0,
            "l1_weight": 0.0,
            "giou_weight": 0.0,
            "eos_coef": 0.1,
            "matching_weights": (1.0, 0.0, 0.0),
            "masks": terms,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def mask2former(
        cls,
        num_points: int | None = 12544,
        seed: int | keras.random.SeedGenerator | None = None,
        **kwargs: Any,
    ) -> DETRLoss:
        """Mask2Former's criterion (Cheng et al., 2022), EoMT's too: masks on sampled points.

        | term | loss weight | matching weight |
        |---|---|---|
        | class: softmax cross-entropy, "no object" 0.1 | 2 | 2 (`-softmax` probability) |
        | mask: sigmoid cross-entropy, mean over points | 5 | 5 |
        | dice | 5 | 5 |

        `num_points` P = 12544 (112 x 112) per mask: uniform points per image for the
        matching; importance sampling for the loss (3 P candidates, the 0.75 P most
        uncertain, 0.25 P uniform). Normalized by the batch's number of masks
        (`reduction="sum"`). EoMT (Kerssies et al., 2025) trains every block's
        predictions with this criterion: pass them as sets, `[B, S, Q, ...]`.

        Args:
            num_points: P, or None for every pixel.
            seed: The mask terms' seed (`MaskTerms`).
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        terms = _sampled_bce_dice(num_points, seed)
        recipe: dict[str, Any] = {
            "classification": "softmax",
            "class_weight": 2.0,
            "l1_weight": 0.0,
            "giou_weight": 0.0,
            "eos_coef": 0.1,
            "matching_weights": (2.0, 0.0, 0.0),
            "masks": terms,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def lw_detr(cls, query_groups: int = 13, **kwargs: Any) -> DETRLoss:
        """LW-DETR's criterion (Chen et al., 2024): IA-BCE and Group DETR.

        | term | loss weight | matching weight |
        |---|---|---|
        | class: IA-BCE (alpha 0.25, gamma 2) / focal class cost (alpha 0.25, gamma 2) | 1 | 2 |
        | L1 | 5 | 5 |
        | GIoU | 2 | 2 |

        The queries are `query_groups` groups of equal size, each matched to every target
        on its own (13 in training; inference reads group 0 alone). The terms are divided
        by the batch's number of boxes times G (the mean over groups) with
        `reduction="sum"`. The decoder layers and the encoder's proposals are sets
        `[B, S, G * N, ...]`: the loss is their mean (LW-DETR sums them: scale by S).

        Args:
            query_groups: G, the query groups (1 for an evaluation-time criterion).
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        recipe: dict[str, Any] = {
            "classification": "ia_bce",
            "class_weight": 1.0,
            "l1_weight": 5.0,
            "giou_weight": 2.0,
            "focal_alpha": 0.25,
            "focal_gamma": 2.0,
            "matching_weights": (2.0, 5.0, 2.0),
            "matching_alpha": 0.25,
            "matching_gamma": 2.0,
            "query_groups": query_groups,
            "normalization": "batch",
            "reduction": "sum",
        }
        return cls(**{**recipe, **kwargs})

    @classmethod
    def rf_detr(cls, query_groups: int = 13, **kwargs: Any) -> DETRLoss:
        """RF-DETR's criterion (Robinson et al., 2025): LW-DETR's, which it keeps.

        The same values as `lw_detr()` (transformers trains both with
        `LwDetrForObjectDetectionLoss`): IA-BCE 1, L1 5, GIoU 2; matching 2/5/2 with the
        focal class cost; G = 13 query groups.

        Args:
            query_groups: G, the query groups.
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        return cls.lw_detr(query_groups=query_groups, **kwargs)

    @classmethod
    def rf_detr_seg(
        cls,
        query_groups: int = 13,
        num_points: int | None = 729,
        seed: int | keras.random.SeedGenerator | None = None,
        **kwargs: Any,
    ) -> DETRLoss:
        """RF-DETR-Seg's criterion: RF-DETR's class and box terms, plus masks on points.

        | term | loss weight | matching weight |
        |---|---|---|
        | class: IA-BCE / focal class cost | 1 | 2 |
        | L1, GIoU | 5, 2 | 5, 2 |
        | mask: sigmoid cross-entropy, mean over points | 5 | 5 |
        | dice | 5 | 5 |

        RF-DETR-Seg samples `h * w // 16` points of its `h x w` mask logits (at a quarter
        of the input's resolution; 729 for 108 x 108 masks: set `num_points` from yours), uniform
        ones for the matching and importance-sampled ones (3 P candidates, 0.75 P most
        uncertain) for the loss, and reads the targets at them by nearest neighbour
        (`MaskTerms` reads them bilinearly: equal on the pixels' insides, a blend across
        their edges). Inputs are dicts with `"boxes"` and `"masks"` (see `DETRLoss`).

        Args:
            query_groups: G, the query groups.
            num_points: P, the points per mask (None: every pixel).
            seed: The mask terms' seed (`MaskTerms`).
            **kwargs: Any constructor argument, to override the recipe's.

        Returns:
            A `DETRLoss`.
        """
        terms = _sampled_bce_dice(num_points, seed)
        return cls.lw_detr(query_groups=query_groups, **{"masks": terms, **kwargs})

    # ----- the loss --------------------------------------------------------------------------

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Tensor = None) -> Tensor:
        """The reduced loss; dict inputs (`{"labels", ...}`, `{"logits", ...}`) too."""
        if isinstance(y_true, dict):  # Keras's `Loss.__call__` takes nested structures
            self._check_target_dtypes(y_true, y_pred)
            return keras.losses.Loss.__call__(self, y_true, y_pred, sample_weight=sample_weight)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    @_backend.outside_torch_compile
    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """Per-sample loss `[B]`."""
        problems = self._problems(y_true, y_pred)
        terms = self._problem_terms(problems)
        weights = self._term_weights()
        loss = sum(weights[name] * terms[name] for name in self.term_names())  # [P]
        loss = self._policy(loss, problems)
        return self._reduce_sets(loss, problems.num_sets)

    def match(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The optimal matching, indexing the query axis of `y_pred`.

        Args:
            y_true: Targets `[B, M, 5]`, or a dict (see `DETRLoss`).
            y_pred: Predictions `[B, Q, D]` or `[B, S, Q, D]`, or a dict.

        Returns:
            int32 `[B, M]` (`[B, S, M]` with sets; a last axis of k with
            `matches_per_target=k`, of G with `query_groups=G` > 1): the query of each
            target, `>= G * 2 * M` with denoising groups, -1 for padding and unmatched
            targets.
        """
        problems = self._problems(y_true, y_pred)
        num_targets = problems.y_true.shape[1] // self.matches_per_target
        offset = _layout.num_denoising(self.denoising_groups, num_targets)
        indices = ops.where(problems.indices >= 0, problems.indices + offset, -1)
        if self.query_groups > 1:
            return self._group_indices(indices, problems)
        return self._shape_indices(indices, problems.num_sets)

    def terms(self, y_true: Tensor, y_pred: Tensor) -> dict[str, Tensor]:
        """The terms of the loss per sample, unweighted, averaged over sets.

        `loss = class_weight * class + l1_weight * l1 + giou_weight * box` before Keras's
        reduction, the box term named by `box_loss`, plus `mask_weight * mask +
        dice_weight * dice` with mask terms (`term_names()`). Denoising terms are included. The
        failure policy holds for each term as for the loss: where a sample's loss is
        `NaN` or `inf` because of its inputs, so is each of its terms.

        Args:
            y_true: Targets `[B, M, 5]`, or a dict (see `DETRLoss`).
            y_pred: Predictions `[B, Q, D]` or `[B, S, Q, D]`, or a dict.

        Returns:
            `{name: [B] for name in term_names()}`.
        """
        problems = self._problems(y_true, y_pred)
        terms = self._problem_terms(problems)
        names = list(terms)
        # One failure policy for all terms: its masks `[P]` broadcast over `[T, P]`.
        checked = self._policy(ops.stack([terms[name] for name in names]), problems)
        return {
            name: self._reduce_sets(checked[i], problems.num_sets) for i, name in enumerate(names)
        }

    def term_names(self) -> tuple[str, ...]:
        """The names of the terms: `("class", "l1", box_loss)`, then `("mask", "dice")`.

        Without boxes (a mask criterion whose box weights are all 0): `("class", "mask",
        "dice")`.
        """
        names: tuple[str, ...] = ("class",)
        if self._has_boxes:
            names += ("l1", self.box_loss)
        if self.masks is not None:
            names += ("mask", "dice")
        return names

    def _term_weights(self) -> dict[str, float]:
        weights = {
            "class": self.class_weight,
            "l1": self.l1_weight,
            self.box_loss: self.giou_weight,
        }
        if self.masks is not None:
            weights.update(mask=self.masks.mask_weight, dice=self.masks.dice_weight)
        return weights

    def term_metrics(self) -> list[DETRLossTerm]:
        """Keras metrics of the three terms: `model.compile(..., metrics=loss.term_metrics())`.

        Each metric matches again (one more solver call per metric and step); they are
        cheapest in `evaluate`.

        Returns:
            One `DETRLossTerm` per name of `term_names()`.
        """
        return [DETRLossTerm(self, term) for term in self.term_names()]

    def batch_total(self, total: Tensor) -> Tensor:
        """A count summed over the batch, for `normalization="batch"`.

        Under `tf.distribute`, the sum over the replicas: Keras adds the replicas'
        gradients, so each replica divides by the global count (DETR's `num_boxes`, which
        is the mean over replicas because PyTorch's DDP averages gradients instead). The
        count itself elsewhere. Override it for another scheme.

        Args:
            total: Scalar, a count summed over this replica's batch.

        Returns:
            Scalar.
        """
        return _backend.replica_sum(total)

    def invalid_targets(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """Where a target breaks a rule: `HungarianLoss`'s, or a bad class id.

        `HungarianLoss.invalid_targets` (a non-finite value), a box of negative width or
        height in `box_format` (the box terms read it even where the matching weights
        leave the box cost out), and a class id that is not an integer in `[0, K)`.
        Read on every row; the caller keeps the real targets. Such a real target is
        never matched, and its sample gets a `NaN` loss (a class id of 90 for K = 80,
        -1 on a row whose box is real, 1.5).

        Args:
            y_true: Targets `[P, M, 5]`.
            y_pred: Predictions `[P, N, D]`, for K.

        Returns:
            bool tensor `[P, M]`.
        """
        invalid = super().invalid_targets(y_true, y_pred)  # [P, M]
        invalid = ops.logical_or(invalid, _negative_size(y_true[:, :, :4], self.box_format))
        num_classes = self._num_classes(y_pred)
        ids = y_true[:, :, 4]  # [P, M]
        integer = ops.equal(ids, ops.round(ids))
        in_range = ops.logical_and(ids >= 0, ids <= num_classes - 1)
        return ops.logical_or(invalid, ops.logical_not(ops.logical_and(integer, in_range)))

    # ----- internals -------------------------------------------------------------------------

    def _problems(self, y_true: Tensor, y_pred: Tensor) -> _Problems:
        """Checks, flattens the sets, splits off the denoising queries, and matches."""
        self._check_target_dtypes(y_true, y_pred)
        y_true, y_pred, target_masks, pred_masks = self._unpack(y_true, y_pred)
        y_true, y_pred = self._prepare(y_true, y_pred)
        self._check_layout(y_true, y_pred)
        y_true, y_pred, num_sets = self._flatten_sets(y_true, y_pred)  # [P, M, 5], [P, Q, D]
        set_axis = num_sets is not None
        y_true, y_pred, num_sets = self._split_groups(y_true, y_pred, num_sets)
        # One look at every value: which rows are broken, and the rows zeroed where they
        # are, so that nothing computed from them reaches the gradients.
        finite_rows, nan_rows = _broken_rows(y_pred)  # [P, Q], [P, Q]
        seed = None
        mask_terms = self.masks
        if pred_masks is not None and mask_terms is not None:  # broken mask logits: a broken query
            pred_masks = ops.reshape(
                pred_masks, (-1, y_pred.shape[1], *pred_masks.shape[-2:])
            )  # [P, Q, h, w], the groups split as y_pred's
            flat = ops.reshape(pred_masks, (*ops.shape(pred_masks)[:2], -1))  # [P, Q, h * w]
            finite_masks, nan_masks = _broken_rows(flat)
            finite_rows = ops.logical_and(finite_rows, finite_masks)
            nan_rows = ops.logical_or(nan_rows, nan_masks)
            pred_masks = ops.where(finite_rows[:, :, None, None], pred_masks, 0.0)
            seed = mask_terms.call_seed(pred_masks)
        clean = _rows_where(finite_rows, y_pred)  # [P, Q, D]
        count = _layout.num_denoising(self.denoising_groups, y_true.shape[1])
        _, queries = _layout.split_queries(y_pred, self.denoising_groups, y_true.shape[1])
        real = self.target_mask(y_true)  # [P, M]
        # Without gradient; invalid targets (`invalid_targets`) are never matched.
        cost, invalid = self._matching_cost(
            y_true, queries, finite_pred=finite_rows[:, count:]
        )  # [P, M, N], [P, M]
        if pred_masks is not None and mask_terms is not None:
            bad_masks = ops.repeat(invalid_masks(target_masks), num_sets or 1, axis=0)  # [P, M]
            invalid = ops.logical_or(invalid, bad_masks)
            mask_cost = mask_terms.matching_cost(
                ops.stop_gradient(pred_masks), target_masks, num_sets or 1, seed
            )  # [P, M, N]
            cost = ops.where(invalid[:, :, None], _INF, cost + ops.cast(mask_cost, cost.dtype))
        y_true, target_mask, cost = self._repeat_targets(y_true, real, cost)
        indices = self._solve(cost, target_mask)  # [P, M * k]
        return _Problems(
            y_true=y_true,
            queries=clean[:, count:],
            denoising=clean[:, :count],
            target_mask=target_mask,
            cost=cost,
            indices=indices,
            num_sets=num_sets,
            set_axis=set_axis,
            invalid=ops.logical_and(invalid, real),
            nan_matched=ops.any(nan_rows[:, count:], axis=1),
            nan_any=ops.any(nan_rows, axis=1),
            non_finite=ops.logical_not(ops.all(finite_rows, axis=1)),
            pred_masks=pred_masks,
            target_masks=target_masks,
            seed=seed,
        )

    def _check_target_dtypes(self, y_true: Any, y_pred: Any) -> None:
        """Raises if integer targets (or labels) cannot hold `padding_value` or ids `0..K-1`.

        K is read from the logits (`y_pred` packed, or its `"logits"`), before Keras
        casts the targets to the loss's dtype.
        """
        is_dict = isinstance(y_true, dict)
        ids = y_true.get("labels") if is_dict else y_true
        logits = y_pred.get("logits") if isinstance(y_pred, dict) else y_pred
        _check_true_dtype(ids, self.padding_value)
        dtype, size = getattr(ids, "dtype", None), getattr(logits, "shape", (None,))[-1]
        if dtype is None or size is None:
            return
        extra = 1 if self.classification == "softmax" else 0  # "no object"
        num_classes = int(size) - extra - (0 if isinstance(y_pred, dict) else 4)
        _check_class_id_dtype(dtype, num_classes, "labels" if is_dict else "y_true")

    def _unpack(
        self, y_true: Any, y_pred: Any
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Dict inputs as the packed tensors, and the masks: `y_true, y_pred, target, pred`.

        `y_true = {"labels" [B, M], "boxes" [B, M, 4], "masks" [B, M, H, W]}` becomes
        `[B, M, 5]` (a label of `padding_value` makes its row padding) and
        `y_pred = {"logits" [B, (S,) Q, C], "boxes" [..., 4], "masks" [B, (S,) Q, h, w]}`
        becomes `[B, (S,) Q, 4 + C]`. Without boxes (a criterion that weighs none), both
        get the same unit box, whose box terms are 0. Tensors pass through.
        """
        true_dict, pred_dict = isinstance(y_true, dict), isinstance(y_pred, dict)
        if not true_dict and not pred_dict:
            if self.masks is not None:
                raise ValueError(
                    "Expected dict inputs with mask terms: y_true = {'labels', 'masks'"
                    "(, 'boxes')} and y_pred = {'logits', 'masks'(, 'boxes')}. Received: "
                    f"y_true of type {type(y_true).__name__}, y_pred of type "
                    f"{type(y_pred).__name__}"
                )
            return y_true, y_pred, None, None
        keys = ("masks",) if self.masks is not None else ()
        _check_keys("y_true", y_true, ("labels", *keys), ("boxes",))
        _check_keys("y_pred", y_pred, ("logits", *keys), ("boxes",))
        if ("boxes" in y_true) != ("boxes" in y_pred) or (
            self._has_boxes and "boxes" not in y_true
        ):
            raise ValueError(
                "Expected 'boxes' in both y_true and y_pred"
                + (" (the box terms weigh them)" if self._has_boxes else ", or in neither")
                + f". Received: y_true keys {sorted(y_true)}, y_pred keys {sorted(y_pred)}"
            )
        logits = _to_tensor(y_pred["logits"])
        dtype = logits.dtype
        labels = ops.cast(_to_tensor(y_true["labels"]), dtype)
        if len(labels.shape) != 2 or len(logits.shape) not in (3, 4):
            raise ValueError(
                "Expected y_true['labels'] of shape [B, M] and y_pred['logits'] of shape "
                f"[B, Q, C] or [B, S, Q, C]. Received: labels.shape={tuple(labels.shape)}, "
                f"logits.shape={tuple(logits.shape)}"
            )
        if "boxes" in y_true:
            true_boxes = ops.cast(_to_tensor(y_true["boxes"]), dtype)
            pred_boxes = ops.cast(_to_tensor(y_pred["boxes"]), dtype)
        else:
            unit = [0.5, 0.5, 1.0, 1.0] if self.box_format.startswith("center") else [0, 0, 1, 1]
            unit = ops.convert_to_tensor(unit, dtype)
            true_boxes = ops.broadcast_to(unit, (*ops.shape(labels), 4))
            pred_boxes = ops.broadcast_to(unit, (*ops.shape(logits)[:-1], 4))
        _check_shape("y_true['boxes']", true_boxes, (*labels.shape, 4))
        _check_shape("y_pred['boxes']", pred_boxes, (*logits.shape[:-1], 4))
        packed_true = ops.concatenate([true_boxes, labels[:, :, None]], axis=-1)  # [B, M, 5]
        if self.padding_value is not None:
            padding = ops.equal(labels, self.padding_value)[:, :, None]  # [B, M, 1]
            packed_true = ops.where(padding, self.padding_value, packed_true)
        packed_pred = ops.concatenate([pred_boxes, logits], axis=-1)  # [B, (S,) Q, 4 + C]
        if self.masks is None:
            return packed_true, packed_pred, None, None
        target_masks = _to_tensor(y_true["masks"])
        pred_masks = ops.cast(_to_tensor(y_pred["masks"]), dtype)
        true_shape, pred_shape = tuple(target_masks.shape), tuple(pred_masks.shape)
        if (
            len(true_shape) != 4
            or len(pred_shape) != len(logits.shape) + 1
            or not all(isinstance(size, int) for size in (*true_shape[1:], *pred_shape[1:]))
        ):
            raise ValueError(
                "Expected y_true['masks'] of shape [B, M, H, W] and y_pred['masks'] of shape "
                "[B, (S,) Q, h, w] (the logits' axes, then the mask's), with known sizes "
                f"after the batch axis. Received: y_true['masks'].shape={true_shape}, "
                f"y_pred['masks'].shape={pred_shape}, logits.shape={tuple(logits.shape)}"
            )
        _check_shape("y_true['masks']", target_masks, (*labels.shape, *true_shape[2:]))
        _check_shape("y_pred['masks']", pred_masks, (*logits.shape[:-1], *pred_shape[-2:]))
        return packed_true, packed_pred, target_masks, pred_masks

    def _problem_terms(self, problems: _Problems) -> dict[str, Tensor]:
        """The three terms per problem `[P]`: matched queries, plus denoising."""
        queries = problems.queries
        box_pairs = None
        if self.dense_one_to_one and problems.num_sets is not None:
            box_pairs = _layout.dense_one_to_one(
                problems.indices, problems.num_sets, queries.shape[1]
            )  # [B, N]
            box_pairs = ops.repeat(box_pairs, problems.num_sets, axis=0)  # [P, N]
        owners = _layout.query_owners(problems.indices, queries.shape[1])  # [P, N]
        sums = self._sums(problems.y_true, queries, problems.indices, owners, box_pairs)
        if self.masks is not None:
            mask, dice = self.masks.pair_sums(
                problems.pred_masks,
                problems.target_masks,
                problems.indices,
                problems.num_sets or 1,
                problems.seed,
            )  # [P] each, float32: the means over points are taken in float32
            sums["mask"], sums["dice"] = (
                ops.cast(mask, queries.dtype),
                ops.cast(dice, queries.dtype),
            )
        if self.denoising_groups:
            # The first copy of each target (rows i * k with `matches_per_target=k`).
            real = problems.target_mask[:, :: self.matches_per_target]  # [P, M]
            # An invalid target is not reconstructed (its sample's loss is NaN anyway), and
            # non-finite rows are zeroed: nothing computed from them reaches the gradients.
            real = ops.logical_and(real, ops.logical_not(problems.invalid))
            y_true = problems.y_true[:, :: self.matches_per_target]
            y_true = _rows_where(_finite_rows(y_true), y_true)
            dn_true, dn_indices = _layout.denoising_targets(y_true, real, self.denoising_groups)
            dn_owners = _layout.denoising_owners(real, self.denoising_groups)  # [P, G * 2M]
            dn_sums = self._sums(dn_true, problems.denoising, dn_indices, dn_owners)
        else:
            dn_sums = None
        return self._normalize(sums, dn_sums, self._broken_samples(problems))

    def _sums(
        self,
        y_true: Tensor,
        y_pred: Tensor,
        indices: Tensor,
        owners: Tensor,
        box_pairs: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The sums of the terms per problem `[P]` and their counts, for one assignment.

        `indices [P, M]` is the query of each target and `owners [P, Q]` the target of
        each query (-1: none). `box_pairs [P, N]`, if given, is the target of each query
        for the box terms (dense one-to-one) in place of `indices`.
        """
        boxes_pred = y_pred[:, :, :4]  # the box terms read nothing else
        if box_pairs is None:
            box_true, box_indices = y_true, indices
        else:  # the pairs (target of query n, query n)
            box_true = self.gather_matched(y_true, box_pairs)  # [P, N, 5]
            columns = ops.arange(y_pred.shape[1], dtype="int32")[None, :]  # [1, N]
            box_indices = ops.where(box_pairs >= 0, columns, -1)  # [P, N]
        l1 = self.matched_cost(box_true, boxes_pred, box_indices, cost=self._l1)  # [P, R]
        box = self.matched_cost(box_true, boxes_pred, box_indices, cost=self._box)  # [P, R]
        pairs = ops.sum(ops.cast(box_indices >= 0, y_pred.dtype), axis=1)  # [P]
        class_sum, class_count = self._class_sum(y_true, y_pred, indices, owners)
        return {
            "class": class_sum,
            "class_count": class_count,
            "l1": ops.sum(l1, axis=1),
            self.box_loss: ops.sum(box, axis=1),
            "box_count": pairs,
        }

    def _class_sum(
        self, y_true: Tensor, y_pred: Tensor, indices: Tensor, owners: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The class term's sum `[P]` over all queries, and what it is divided by `[P]`."""
        logits = y_pred[:, :, 4:]  # [P, Q, K (+ 1)]
        num_classes = self._num_classes(y_pred)
        classes = ops.cast(ops.clip(ops.round(y_true[:, :, 4]), 0, num_classes - 1), "int32")
        query_class = _layout.values_at_queries(classes, owners, -1)  # [P, Q]
        if self.classification == "softmax":
            return classification_terms.softmax_cross_entropy(logits, query_class, self.eos_coef)
        count = ops.sum(ops.cast(indices >= 0, logits.dtype), axis=1)  # [P]
        if self.classification == "focal":
            total = classification_terms.focal(
                logits, query_class, self.focal_alpha, self.focal_gamma
            )
            return total, count
        # The IoU of each matched query's box with its target's, without gradient.
        boxes_pred = y_pred[:, :, :4]
        iou = 1.0 - self.matched_cost(y_true, boxes_pred, indices, cost=self._iou)  # [P, M]
        iou = ops.stop_gradient(ops.clip(iou, 0.0, 1.0))  # [P, M]
        query_iou = _layout.values_at_queries(iou, owners, 0.0)  # [P, Q]
        if self.classification == "varifocal":
            total = classification_terms.varifocal(
                logits, query_class, query_iou, self.focal_alpha, self.focal_gamma
            )
        elif self.classification == "ia_bce":
            total = classification_terms.iou_aware_bce(
                logits, query_class, query_iou, self.focal_alpha, self.focal_gamma
            )
        else:
            total = classification_terms.matchability_aware(
                logits, query_class, query_iou, self.mal_alpha, self.focal_gamma
            )
        return total, count

    def _normalize(
        self, sums: dict[str, Tensor], dn_sums: dict[str, Tensor] | None, broken: Tensor
    ) -> dict[str, Tensor]:
        """Each term divided by its count (per problem, or the batch's), denoising added.

        The counts of a broken sample (`broken [P]`, its loss `NaN` or `inf`) do not
        enter the batch's totals: the other samples are normalized as without it.
        """
        terms = {}
        for name in self.term_names():
            count = "class_count" if name == "class" else "box_count"
            terms[name] = sums[name] / self._normalizer(ops.where(broken, 0.0, sums[count]))
            if dn_sums is not None:
                dn_count = ops.where(broken, 0.0, dn_sums[count])
                terms[name] = terms[name] + dn_sums[name] / self._normalizer(dn_count)
        return terms

    def _broken_samples(self, problems: _Problems) -> Tensor:
        """`[P]`: the problems of a sample whose loss the failure policy makes `NaN` or `inf`.

        A problem is broken by a broken query, an invalid real target, or a real target
        left unmatched although queries are free (non-finite costs); a sample is broken
        where any of its sets is (`_reduce_sets`).
        """
        matched = ops.sum(ops.cast(problems.indices >= 0, "int32"), axis=1)  # [P]
        real = ops.sum(ops.cast(problems.target_mask, "int32"), axis=1)  # [P]
        matchable = ops.minimum(real, problems.queries.shape[1])
        broken = ops.logical_or(problems.non_finite, ops.any(problems.invalid, axis=1))
        broken = ops.logical_or(broken, matched < matchable)  # [P]
        if problems.num_sets is None:
            return broken
        per_sample = ops.any(ops.reshape(broken, (-1, problems.num_sets)), axis=1)  # [B]
        return ops.repeat(per_sample, problems.num_sets, axis=0)  # [P]

    def _normalizer(self, count: Tensor) -> Tensor:
        """A count `[P]` made a divisor: itself per problem, or the batch's total per set."""
        if self.normalization == "sample":
            return ops.where(count > 0, count, 1.0)  # [P]
        total = self.batch_total(ops.sum(count) / self._num_sets)  # []
        return ops.where(total > 0, total, 1.0)

    def _policy(self, loss: Tensor, problems: _Problems) -> Tensor:
        """The failure policy: the matched problem's, the predictions', the targets'.

        Every query enters the class term, so a non-finite value in any query makes the
        loss non-finite (`NaN` for `NaN`, else `inf`); so does a real target that breaks
        a rule of `invalid_targets` (`NaN`). Such a problem adds no gradient.
        """
        broken = ops.any(problems.invalid, axis=1)  # [P]
        loss = _failure_policy(
            loss,
            problems.queries,
            problems.cost,
            problems.indices,
            problems.target_mask,
            broken,  # NaN where a real target is invalid (`invalid_targets`)
            nan_pred=problems.nan_matched,
        )
        loss = ops.where(problems.non_finite, _INF, loss)
        return ops.where(ops.logical_or(problems.nan_any, broken), _NAN, loss)

    def _shape_indices(self, indices: Tensor, num_sets: int | None) -> Tensor:
        """`[P, M * k]` -> `[B, (S,) M (, k)]`."""
        if self.matches_per_target > 1:
            indices = ops.reshape(
                indices, (-1, indices.shape[1] // self.matches_per_target, self.matches_per_target)
            )
        if num_sets is not None:
            indices = ops.reshape(indices, (-1, num_sets, *indices.shape[1:]))
        return indices

    def _num_classes(self, y_pred: Tensor) -> int:
        extra = 5 if self.classification == "softmax" else 4
        return int(y_pred.shape[-1]) - extra

    def _flatten_sets(self, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor, int | None]:
        y_true, y_pred, num_sets = super()._flatten_sets(y_true, y_pred)
        self._num_sets = num_sets or 1  # the batch normalization counts per set
        return y_true, y_pred, num_sets

    def _split_groups(
        self, y_true: Tensor, y_pred: Tensor, num_sets: int | None
    ) -> tuple[Tensor, Tensor, int | None]:
        """Query groups as problems of their own: `[B * S, G * N, D]` -> `[B * S * G, N, D]`.

        Row `(b * S + s) * G + g` is group g of set s of sample b; the returned count of
        problems per sample is `S * G`. Without groups, the tensors pass through.

        Raises:
            ValueError: if the query axis is not a multiple of G.
        """
        groups = self.query_groups
        if groups == 1:
            return y_true, y_pred, num_sets
        num_queries = y_pred.shape[1]
        if num_queries % groups:
            raise ValueError(
                f"Expected the query axis of `y_pred` to hold query_groups={groups} groups of "
                f"equal size. Received: {num_queries} queries (y_pred.shape="
                f"{tuple(y_pred.shape)} after the sets are flattened)"
            )
        y_pred = ops.reshape(y_pred, (-1, num_queries // groups, y_pred.shape[2]))
        y_true = ops.repeat(y_true, groups, axis=0)
        num_sets = (num_sets or 1) * groups
        self._num_sets = num_sets  # the batch normalization counts per group and set
        return y_true, y_pred, num_sets

    def _reduce_sets(self, loss: Tensor, num_sets: int | None) -> Tensor:
        """`[P]` -> `[B]`: the groups' mean (or sum), then the sets' (weighted) mean."""
        groups = self.query_groups
        if groups == 1 or num_sets is None:
            return super()._reduce_sets(loss, num_sets)
        per_group = ops.reshape(loss, (-1, groups))  # [B * S, G]
        reduce = ops.mean if self.group_reduction == "mean" else ops.sum
        return super()._reduce_sets(reduce(per_group, axis=1), num_sets // groups)

    def _group_indices(self, indices: Tensor, problems: _Problems) -> Tensor:
        """`[B * S * G, M]` -> `[B, (S,) M, G]`, each group's queries on the whole axis."""
        groups = self.query_groups
        size = problems.queries.shape[1]  # N, the queries of a group
        num_targets = indices.shape[1]
        per_group = ops.reshape(indices, (-1, groups, num_targets))  # [B * S, G, M]
        offset = ops.arange(groups, dtype="int32")[None, :, None] * size
        per_group = ops.where(per_group >= 0, per_group + offset, -1)
        per_group = ops.transpose(per_group, (0, 2, 1))  # [B * S, M, G]
        if problems.set_axis:
            num_sets = (problems.num_sets or groups) // groups
            return ops.reshape(per_group, (-1, num_sets, num_targets, groups))
        return per_group

    def _check_layout(self, y_true: Tensor, y_pred: Tensor) -> None:
        """Raises unless `y_true` has 5 channels and `y_pred` at least one class logit."""
        extra = 2 if self.classification == "softmax" else 1
        if y_true.shape[-1] != 5 or y_pred.shape[-1] is None or y_pred.shape[-1] < 4 + extra:
            layout = "4 + K + 1" if self.classification == "softmax" else "4 + K"
            raise ValueError(
                "Expected `y_true` with 5 channels ([box, class id]) and `y_pred` with "
                f"{layout} channels (box, K >= 1 class logits"
                + (', then "no object")' if extra == 2 else ")")
                + f" for classification={self.classification!r}. Received: "
                f"y_true.shape={tuple(y_true.shape)}, y_pred.shape={tuple(y_pred.shape)}"
            )

    def get_config(self) -> dict[str, Any]:
        """The base config and every constructor argument (the cost follows from them)."""
        config = super().get_config()
        del config["cost"]  # built from the weights, not an argument
        config.update(
            {
                "class_weight": self.class_weight,
                "l1_weight": self.l1_weight,
                "giou_weight": self.giou_weight,
                "eos_coef": self.eos_coef,
                "classification": self.classification,
                "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma,
                "normalization": self.normalization,
                "box_loss": self.box_loss,
                "matching_weights": list(self.matching_weights),
                "matching_alpha": self.matching_alpha,
                "matching_gamma": self.matching_gamma,
                "mal_alpha": self.mal_alpha,
                "denoising_groups": self.denoising_groups,
                "dense_one_to_one": self.dense_one_to_one,
                "masks": None if self.masks is None else self.masks.get_config(),
                "query_groups": self.query_groups,
                "group_reduction": self.group_reduction,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="hungarian_loss")
class DETRLossTerm(keras.metrics.Mean):
    """A Keras metric: the mean of one term of a `DETRLoss` (`"class"`, `"l1"`, the box term).

    Made by `DETRLoss.term_metrics()`; the metric is named `"{loss.name}_{term}"`.

    Args:
        loss: The `DETRLoss` (or its config).
        term: One of `loss.term_names()`: `"class"`, `"l1"` or the `box_loss` name.
        name: Name of the metric; defaults to `"{loss.name}_{term}"`.
        dtype: Dtype of the metric's result.

    Raises:
        ValueError: if `term` is unknown or `loss` is not a `DETRLoss`.
    """

    def __init__(self, loss: Any, term: str, name: str | None = None, dtype: Any = None) -> None:
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, DETRLoss):
            raise ValueError(f"Expected `loss` to be a DETRLoss. Received: loss={loss!r}")
        if term not in loss.term_names():
            raise ValueError(
                f"Expected `term` to be one of {loss.term_names()}. Received: term={term!r}"
            )
        super().__init__(name=name or f"{loss.name}_{term}", dtype=dtype)
        self.loss = loss
        self.term = term

    def update_state(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor = None) -> None:
        """Adds the term of each sample of the batch to the mean."""
        values = self.loss.terms(y_true, y_pred)[self.term]  # [B]
        super().update_state(values, sample_weight=sample_weight)

    def get_config(self) -> dict[str, Any]:
        """The loss (serialized), the term, the name and the dtype."""
        return {
            "loss": keras.saving.serialize_keras_object(self.loss),
            "term": self.term,
            "name": self.name,
            "dtype": self.dtype,
        }


def _sampled_bce_dice(num_points: int | None, seed: Any) -> MaskTerms:
    """Mask2Former's and RF-DETR-Seg's mask terms: BCE 5 and dice 5 on importance-sampled points."""
    return MaskTerms(
        mask_weight=5.0,
        dice_weight=5.0,
        mask_loss="bce",
        num_points=num_points,
        oversample_ratio=3.0,
        importance_ratio=0.75,
        seed=seed,
    )


def _broken_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Which rows of `x [P, Q, D]` are all finite, and which hold a `NaN`: bool `[P, Q]` each.

    First the sum of each row, which is finite only where every value of the row is (a
    `NaN` or an infinity makes it `NaN` or infinite). Only when some sum is not (a
    broken row, or finite values whose sum overflows) does the exact check run: the
    largest `int8` code of each row (0 finite, 1 infinite, 2 `NaN`). XLA's CPU compiler
    hands a `float32` sum to YNNPACK, which reads `x` as it is, while the codes are
    written out before they are reduced. On RT-DETR's `[48, 900, 84]` predictions the
    check took 0.3-0.8 ms less, and the step 0.5-1.4 ms less, on TensorFlow and JAX
    (`benchmarks/results/detr_family.md`).
    """

    def all_finite() -> tuple[Tensor, Tensor]:
        none = ops.zeros_like(x[:, :, 0], dtype="bool")  # [P, Q]
        return ops.logical_not(none), none

    if 0 in x.shape:  # no rows (Keras's max refuses empty tensors)
        return all_finite()

    def exact() -> tuple[Tensor, Tensor]:
        code = ops.where(ops.isfinite(x), 0, ops.where(ops.isnan(x), 2, 1))
        worst = ops.max(ops.cast(code, "int8"), axis=-1)  # [P, Q]
        return worst == 0, worst == 2

    sums_finite = ops.all(ops.isfinite(ops.sum(x, axis=-1)))
    finite, nan = ops.cond(sums_finite, all_finite, exact)
    return finite, nan


def _check_keys(arg: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """Raises unless `value` is a dict with the `required` keys and no others but `optional`."""
    keys = set(value) if isinstance(value, dict) else None
    if keys is None or not set(required) <= keys or not keys <= set(required) | set(optional):
        expected = ", ".join(repr(key) for key in required)
        if optional:
            expected += ", optionally " + ", ".join(repr(key) for key in optional)
        received = sorted(keys) if keys is not None else type(value).__name__
        raise ValueError(
            f"Expected `{arg}` to be a dict with the keys {expected} (y_true and y_pred "
            f"are both dicts or both tensors). Received: {arg}={received}"
        )


def _check_shape(name: str, tensor: Tensor, expected: tuple[Any, ...]) -> None:
    """Raises unless `tensor`'s shape agrees with `expected` wherever both are known."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or not all(
        a is None or b is None or a == b for a, b in zip(shape, expected, strict=True)
    ):
        raise ValueError(
            f"Expected {name} of shape {tuple(expected)} (None: any size). "
            f"Received: {name}.shape={shape}"
        )
