r"""`DETRLoss`: the DETR set criterion (class, boxes and "no object") as a `HungarianLoss`.

DETR (Carion et al., 2020) matches its N predictions to the M objects of an image with a
cost that mixes the class and the box, trains the matched predictions to find their
object, and trains every other prediction to say "no object". Deformable DETR (Zhu et
al., 2021) uses independent sigmoid classes with a focal loss instead of a softmax with a
"no object" class. Both are here, with DETR's default weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from hungarian_loss.costs import (
    ClassProbabilityCost,
    FocalClassCost,
    GIoUCost,
    L1Cost,
    WeightedCost,
)
from hungarian_loss.loss import HungarianLoss

__all__ = ["DETRLoss", "DETRLossTerm"]

Tensor = Any

TERMS = ("class", "l1", "giou")
CLASSIFICATIONS = ("softmax", "focal")
NORMALIZATIONS = ("sample", "batch")


@keras.saving.register_keras_serializable(package="hungarian_loss")
class DETRLoss(HungarianLoss):
    r"""The DETR loss: class and box matching, then class, L1 and GIoU losses.

    Layouts (K classes; boxes in `box_format`, DETR's are `center_xywh` in `[0, 1]`):

    ```
    y_true [B, M, 5]            [box (4), class id in 0..K-1]; padding rows all -1
    y_pred [B, N, 4 + K + 1]    [box (4), logit_0 ... logit_{K-1}, logit_no_object]   softmax
    y_pred [B, N, 4 + K]        [box (4), logit_0 ... logit_{K-1}]                    focal
    ```

    `y_pred` may also hold S prediction sets, `[B, S, N, ...]` (decoder layers, query
    groups): every set is matched to the same targets, all in one solver call, and the
    sample's loss is the mean over sets (see `set_weights`). K is read from `y_pred`.

    Matching minimizes, over one-to-one matchings of targets i to predictions j,

    ```
    C[i, j] = class_weight * class_cost(j, c_i)
              + l1_weight * |box_i - box_j|_1 + giou_weight * (1 - GIoU(box_i, box_j))
    ```

    with `class_cost = -softmax(logits_j)[c_i]` (DETR) or the focal class cost of
    Deformable DETR (`classification="focal"`). With P the matched pairs of a sample,
    U its unmatched predictions, and `CE(j, c) = -log softmax(logits_j)[c]`:

    ```
    l1    = sum_{(i, j) in P} |box_i - box_j|_1 / |P|
    giou  = sum_{(i, j) in P} (1 - GIoU(box_i, box_j)) / |P|
    class = (sum_{(i, j) in P} CE(j, c_i) + eos_coef * sum_{j in U} CE(j, K))
            / (|P| + eos_coef * |U|)                                        softmax
    class = sum_{j, c} focal(logit_{j, c}, [j matched to a target of class c]) / |P|    focal
    loss  = class_weight * class + l1_weight * l1 + giou_weight * giou
    ```

    (`|P|` is taken as 1 when a sample has no target.) `focal(x, t)` is the sigmoid
    focal loss `alpha_t * (1 - p_t)^gamma * BCE(x, t)` with `focal_alpha` and
    `focal_gamma`. `terms` gives the three terms separately, and `term_metrics` makes
    Keras metrics of them.

    Normalization. DETR divides its box losses by `num_boxes`, the number of objects
    in the whole batch (averaged over replicas), and its cross-entropy by the total
    weight over the whole batch. A Keras loss returns one value per sample, to which
    Keras applies `sample_weight` and `reduction`, so by default
    (`normalization="sample"`) each sample is normalized by its own counts, and the
    default reduction averages the samples: images with few objects weigh as much as
    crowded ones. `normalization="batch"` divides each sample's sums by the batch's
    totals instead, so that with `reduction="sum"` the loss is exactly DETR's
    per-layer loss (averaged over the sets rather than summed: scale by S to get
    DETR's sum). With several replicas (`tf.distribute`), each replica sees its own
    batch; override `batch_total` to all-reduce the totals as DETR does (see the
    guide "DETR in Keras"). Under JAX data parallelism the batch is global already.

    Args:
        class_weight: Weight of the class cost in the matching and of the class loss
            (DETR: 1; Deformable DETR: 2).
        l1_weight: Weight of the L1 box distance in the matching and in the loss
            (DETR: 5).
        giou_weight: Weight of `1 - GIoU` in the matching and in the loss (DETR: 2).
        eos_coef: Relative weight of the "no object" cross-entropy of unmatched
            predictions (DETR: 0.1). Softmax only.
        classification: `"softmax"` (DETR: K + 1 logits, the last one "no object") or
            `"focal"` (Deformable DETR: K sigmoid logits and the focal loss).
        focal_alpha: The focal loss's (and the focal class cost's) alpha, in `[0, 1]`.
        focal_gamma: The focal loss's (and the focal class cost's) gamma, `>= 0`.
        normalization: `"sample"` (each sample by its own counts) or `"batch"` (by
            the batch's totals, DETR's, to use with `reduction="sum"`).
        box_format: Format of the boxes in both tensors (Keras's names).
        padding_value: Value that fills padding target rows, or `None` when every row
            is a target.
        matches_per_target: k, the predictions each target is matched to (H-DETR's
            one-to-many branch); 1 is DETR.
        set_weights: With S prediction sets, one weight per set (see `HungarianLoss`).
        reduction: Keras reduction of the per-sample losses.
        name: Name of the loss.
        dtype: Dtype of the loss's computations; defaults to `keras.backend.floatx()`.

    Raises:
        ValueError: if a weight or `eos_coef` is negative or not finite, all matching
            weights are 0, `classification` or `normalization` is unknown, or
            `box_format` is unknown; at trace time if `y_true` does not have 5
            channels or `y_pred` has no class logits.

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
    """

    def __init__(
        self,
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        eos_coef: float = 0.1,
        classification: str = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        normalization: str = "sample",
        box_format: str = "center_xywh",
        padding_value: float | None = -1.0,
        matches_per_target: int = 1,
        set_weights: Sequence[float] | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "detr_loss",
        dtype: Any = None,
    ) -> None:
        weights = {
            "class_weight": class_weight,
            "l1_weight": l1_weight,
            "giou_weight": giou_weight,
            "eos_coef": eos_coef,
        }
        for arg, value in weights.items():
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"Expected `{arg}` to be a finite number >= 0. Received: {arg}={value!r}"
                )
        if classification not in CLASSIFICATIONS:
            raise ValueError(
                f"Expected `classification` to be one of {CLASSIFICATIONS}. "
                f"Received: classification={classification!r}"
            )
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Expected `normalization` to be one of {NORMALIZATIONS}. "
                f"Received: normalization={normalization!r}"
            )
        # The box costs read channels 0:4; the class cost reads the id at channel 4 of
        # `y_true` and the logits from channel 4 on of `y_pred`.
        l1 = L1Cost(channels=[0, 4])
        giou = GIoUCost(box_format=box_format, channels=[0, 4])
        if classification == "softmax":
            classes: Any = ClassProbabilityCost(class_index=4, logits_start=4)
        else:  # raises for alpha outside [0, 1] or gamma < 0
            classes = FocalClassCost(
                alpha=focal_alpha, gamma=focal_gamma, class_index=4, logits_start=4
            )
        matching_cost = WeightedCost(
            [(classes, class_weight), (l1, l1_weight), (giou, giou_weight)]
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
        self._l1 = l1
        self._giou = giou
        self._num_sets = 1  # of the call being traced, for the batch normalization

    # ----- the extension points of HungarianLoss ---------------------------------------------

    def pairwise_cost(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The matching cost `[B, M, N]`: class, L1 and GIoU, weighted."""
        self._check_layout(y_true, y_pred)
        return super().pairwise_cost(y_true, y_pred)

    def matched_loss(
        self,
        y_true: Tensor,
        y_pred: Tensor,
        indices: Tensor,
        target_mask: Tensor,
    ) -> Tensor:
        """The weighted sum of the class, L1 and GIoU terms, per problem `[B]`.

        Args:
            y_true: Targets `[B, M, 5]`.
            y_pred: Predictions `[B, N, 4 + K (+ 1)]`.
            indices: int32 `[B, M]`, the prediction matched to each target or -1.
            target_mask: bool `[B, M]`, True for real targets.

        Returns:
            The loss of each problem, `[B]`.
        """
        del target_mask  # `indices` is -1 for padding targets already
        terms = self._terms(y_true, y_pred, indices)
        return (
            self.class_weight * terms["class"]
            + self.l1_weight * terms["l1"]
            + self.giou_weight * terms["giou"]
        )

    # ----- the terms, for metrics ------------------------------------------------------------

    def terms(self, y_true: Tensor, y_pred: Tensor) -> dict[str, Tensor]:
        """The three terms of the loss per sample, unweighted, averaged over sets.

        `loss = class_weight * class + l1_weight * l1 + giou_weight * giou` before
        Keras's reduction. The matching is the loss's own.

        Args:
            y_true: Targets `[B, M, 5]`.
            y_pred: Predictions `[B, N, 4 + K (+ 1)]` or `[B, S, N, 4 + K (+ 1)]`.

        Returns:
            `{"class": [B], "l1": [B], "giou": [B]}`.
        """
        indices = self.match(y_true, y_pred)  # [B, (S,) M, (k)]
        y_true, y_pred = self._prepare(y_true, y_pred)
        y_true, y_pred, num_sets = self._flatten_sets(y_true, y_pred)
        if self.matches_per_target > 1:
            y_true = ops.repeat(y_true, self.matches_per_target, axis=1)  # [B * S, M * k, 5]
        indices = ops.reshape(indices, (-1, y_true.shape[1]))  # [B * S, M * k]
        terms = self._terms(y_true, y_pred, indices)
        return {name: self._reduce_sets(value, num_sets) for name, value in terms.items()}

    def term_metrics(self) -> list[DETRLossTerm]:
        """Keras metrics of the three terms: `model.compile(..., metrics=loss.term_metrics())`.

        Each metric matches again (one more solver call per metric and step); they are
        cheapest in `evaluate`.

        Returns:
            `[DETRLossTerm(self, "class"), DETRLossTerm(self, "l1"), DETRLossTerm(self, "giou")]`.
        """
        return [DETRLossTerm(self, term) for term in TERMS]

    def batch_total(self, total: Tensor) -> Tensor:
        """The batch total used by `normalization="batch"`; the identity by default.

        Override it to combine the totals of several replicas as DETR does (the sum
        over replicas divided by their number), e.g. on TensorFlow with
        `tf.distribute.get_replica_context().all_reduce("sum", total) / replicas`.

        Args:
            total: Scalar, a count summed over this replica's batch.

        Returns:
            Scalar.
        """
        return total

    # ----- internals -------------------------------------------------------------------------

    def _flatten_sets(self, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor, int | None]:
        y_true, y_pred, num_sets = super()._flatten_sets(y_true, y_pred)
        self._num_sets = num_sets or 1  # the batch normalization counts per set
        return y_true, y_pred, num_sets

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

    def _terms(self, y_true: Tensor, y_pred: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """The class, L1 and GIoU terms of each problem `[P]` (P = B * S rows)."""
        dtype = y_pred.dtype
        matched = ops.cast(indices >= 0, dtype)  # [P, M]
        num_matched = ops.sum(matched, axis=1)  # [P]
        l1_sum = ops.sum(self.matched_cost(y_true, y_pred, indices, cost=self._l1), axis=1)
        giou_sum = ops.sum(self.matched_cost(y_true, y_pred, indices, cost=self._giou), axis=1)
        if self.classification == "softmax":
            class_sum, class_weight = self._softmax_class(y_true, y_pred, indices, matched)
        else:
            class_sum, class_weight = self._focal_class(y_true, y_pred, indices, matched)
        # [P] each: the box sums over the matched pairs, the class sum and its total weight.
        if self.normalization == "sample":
            boxes = ops.maximum(num_matched, 1.0)  # [P]
            classes = ops.where(class_weight > 0, class_weight, 1.0)  # [P]
        else:  # DETR's: the totals of the batch, per set, at least 1
            boxes = ops.maximum(self.batch_total(ops.sum(num_matched) / self._num_sets), 1.0)
            total_weight = self.batch_total(ops.sum(class_weight) / self._num_sets)
            classes = ops.where(total_weight > 0, total_weight, 1.0)  # []
        return {"class": class_sum / classes, "l1": l1_sum / boxes, "giou": giou_sum / boxes}

    def _true_classes(self, y_true: Tensor, num_classes: int) -> Tensor:
        """The class id of each target as int32 `[P, M]`, clipped into `[0, num_classes)`."""
        classes = ops.cast(ops.round(y_true[:, :, 4]), "int32")  # [P, M]
        return ops.clip(classes, 0, num_classes - 1)

    def _softmax_class(
        self, y_true: Tensor, y_pred: Tensor, indices: Tensor, matched: Tensor
    ) -> tuple[Tensor, Tensor]:
        """DETR's weighted cross-entropy: its sum `[P]` and total weight `[P]`."""
        log_probs = ops.log_softmax(y_pred[:, :, 4:], axis=-1)  # [P, N, K + 1]
        classes = self._true_classes(y_true, log_probs.shape[-1] - 1)[:, :, None]  # [P, M, 1]
        matched_log_probs = self.gather_matched(log_probs, indices)  # [P, M, K + 1]
        true_class = ops.take_along_axis(matched_log_probs, classes, axis=2)[:, :, 0]  # [P, M]
        matched_ce = -ops.sum(true_class * matched, axis=1)  # [P]
        unmatched = self.unmatched_predictions(indices, y_pred.shape[1])  # [P, N]
        unmatched = ops.cast(unmatched, y_pred.dtype)
        no_object_ce = -ops.sum(log_probs[:, :, -1] * unmatched, axis=1)  # [P]
        weight = ops.sum(matched, axis=1) + self.eos_coef * ops.sum(unmatched, axis=1)  # [P]
        return matched_ce + self.eos_coef * no_object_ce, weight

    def _focal_class(
        self, y_true: Tensor, y_pred: Tensor, indices: Tensor, matched: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Deformable DETR's sigmoid focal loss over all predictions and classes: sum, count."""
        logits = y_pred[:, :, 4:]  # [P, N, K]
        num_classes = logits.shape[-1]
        classes = self._true_classes(y_true, num_classes)  # [P, M]
        one_hot = ops.one_hot(classes, num_classes, dtype=logits.dtype) * matched[:, :, None]
        columns = ops.arange(y_pred.shape[1], dtype="int32")  # [N]
        hit = ops.cast(ops.equal(indices[:, :, None], columns[None, None, :]), logits.dtype)
        targets = ops.einsum("pmn,pmk->pnk", hit, one_hot)  # [P, N, K]: 1 at the matched class
        bce = ops.softplus(logits) - logits * targets  # [P, N, K]
        # (1 - p_t)^gamma = sigmoid(-x)^gamma for t = 1, sigmoid(x)^gamma for t = 0.
        modulating = ops.exp(self.focal_gamma * ops.log_sigmoid(logits * (1.0 - 2.0 * targets)))
        alpha = self.focal_alpha * targets + (1.0 - self.focal_alpha) * (1.0 - targets)
        focal = ops.sum(alpha * modulating * bce, axis=(1, 2))  # [P]
        return focal, ops.sum(matched, axis=1)

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
            }
        )
        return config


@keras.saving.register_keras_serializable(package="hungarian_loss")
class DETRLossTerm(keras.metrics.Mean):
    """A Keras metric: the mean of one term of a `DETRLoss` (`"class"`, `"l1"`, `"giou"`).

    Made by `DETRLoss.term_metrics()`; the metric is named `"{loss.name}_{term}"`.

    Args:
        loss: The `DETRLoss` (or its config).
        term: `"class"`, `"l1"` or `"giou"`.
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
        if term not in TERMS:
            raise ValueError(f"Expected `term` to be one of {TERMS}. Received: term={term!r}")
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
