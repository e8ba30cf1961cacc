r"""An example subclass of `HungarianLoss`: the DETR set-prediction loss.

DETR (Carion et al., 2020, "End-to-End Object Detection with Transformers") matches
its N predictions to the M true objects of an image with a cost that mixes the class
and the box, then trains the matched predictions to find their object and every other
prediction to say "no object". This module shows how to write that recipe with the
two extension points of `HungarianLoss`:

- the matching cost, here a `WeightedCost` given to the base class (overriding
  `pairwise_cost` works too);
- `matched_loss`, the loss computed from the matching.

It is a test helper and a documentation example; import it with
`from detr_example import DETRLoss` when `tests/` is on the path.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from hungarian_loss import HungarianLoss
from hungarian_loss.costs import ClassProbabilityCost, GIoUCost, L1Cost, WeightedCost

__all__ = ["DETRLoss"]

Tensor = Any


@keras.saving.register_keras_serializable(package="hungarian_loss_examples")
class DETRLoss(HungarianLoss):
    r"""The DETR loss: class and box matching, box and class losses, "no object" term.

    Layouts (K classes):

    ```
    y_true [B, M, 5]      [box (4 channels, box_format), class id in 0..K-1]; padding rows all -1
    y_pred [B, N, 4+K+1]  [box (4 channels, box_format), logit_0, ..., logit_{K-1}, logit_none]
    ```

    The last logit is the "no object" class, so `K` is read from `y_pred`. Matching
    minimizes, over one-to-one matchings of the targets `i` to predictions `j`,

    ```
    C[i, j] = -class_weight * softmax(logits_j)[c_i]
              + l1_weight * |box_i - box_j|_1 + giou_weight * (1 - GIoU(box_i, box_j))
    ```

    and, with `P` the matched pairs and `U` the unmatched predictions of a sample,
    its loss is

    ```
    box   = 1/|P| * sum_{(i, j) in P} [l1_weight * |box_i - box_j|_1
                                       + giou_weight * (1 - GIoU(box_i, box_j))]  (0 if P is empty)
    class = (sum_{(i, j) in P} CE(logits_j, c_i) + eos_coef * sum_{j in U} CE(logits_j, K))
            / (|P| + eos_coef * |U|)
    loss  = box + class_weight * class
    CE(logits, c) = -log softmax(logits)[c]
    ```

    `class` is DETR's cross-entropy over all N predictions, the matched ones against
    their object's class and the others against "no object", weighted `eos_coef`
    (DETR's `empty_weight`). DETR normalizes its box terms by the number of objects in
    the whole batch; here each sample is its own mean, so that Keras applies
    `sample_weight` and `reduction`. A sample without objects has box loss 0 and its
    class loss is the mean "no object" cross-entropy.

    Args:
        class_weight: Weight of the class cost in the matching and of the class loss
            (DETR: 1).
        l1_weight: Weight of the L1 box distance in the matching and in the loss
            (DETR: 5).
        giou_weight: Weight of `1 - GIoU` in the matching and in the loss (DETR: 2).
        eos_coef: Relative weight of the "no object" cross-entropy of unmatched
            predictions (DETR: 0.1).
        box_format: Format of the boxes in both tensors (Keras's names; DETR's boxes
            are `"center_xywh"`, normalized to `[0, 1]`).
        padding_value: Value that fills padding target rows, or `None` when every row
            is a target.
        reduction: Keras reduction of the per-sample losses.
        name: Name of the loss.
        dtype: Dtype of the loss's computations; defaults to `keras.backend.floatx()`.

    Raises:
        ValueError: if a weight or `eos_coef` is negative or not finite, all matching
            weights are 0, or `box_format` is unknown.

    Examples:
        One object of class 1 (of K = 2) and three predictions: the second finds it,
        the others say "no object".

        >>> import numpy as np
        >>> from detr_example import DETRLoss
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
    """

    def __init__(
        self,
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        eos_coef: float = 0.1,
        box_format: str = "center_xywh",
        padding_value: float | None = -1.0,
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
        # The box costs read channels 0:4; the class cost reads the id at channel 4 of
        # `y_true` and the logits from channel 4 on of `y_pred`.
        l1 = L1Cost(channels=[0, 4])
        giou = GIoUCost(box_format=box_format, channels=[0, 4])
        classes = ClassProbabilityCost(class_index=4, logits_start=4)
        matching_cost = WeightedCost(
            [(classes, class_weight), (l1, l1_weight), (giou, giou_weight)]
        )  # raises if all three weights are 0
        super().__init__(
            cost=matching_cost,
            box_format=box_format,
            padding_value=padding_value,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.class_weight = float(class_weight)
        self.l1_weight = float(l1_weight)
        self.giou_weight = float(giou_weight)
        self.eos_coef = float(eos_coef)
        self._l1 = l1
        self._giou = giou

    def _box_cost(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The weighted box cost `[B, M, N]` of the loss: L1 and 1 - GIoU."""
        return self.l1_weight * self._l1(y_true, y_pred) + self.giou_weight * self._giou(
            y_true, y_pred
        )

    def matched_loss(
        self,
        y_true: Tensor,
        y_pred: Tensor,
        indices: Tensor,
        target_mask: Tensor,
    ) -> Tensor:
        """Box losses on the matched pairs plus the class and "no object" cross-entropy.

        Args:
            y_true: Targets `[B, M, 5]`.
            y_pred: Predictions `[B, N, 4 + K + 1]`.
            indices: int32 `[B, M]`, the prediction matched to each target or -1.
            target_mask: bool `[B, M]`, True for real targets.

        Returns:
            The per-sample loss `[B]`.
        """
        del target_mask  # `indices` is -1 for padding targets already
        matched = ops.cast(indices >= 0, y_pred.dtype)  # [B, M]: 1 where a target is matched
        num_matched = ops.sum(matched, axis=1)  # [B]

        # Boxes: the L1 and GIoU costs of the matched pairs, mean over the pairs.
        pair_cost = self.matched_cost(y_true, y_pred, indices, cost=self._box_cost)  # [B, M]
        box_loss = ops.sum(pair_cost, axis=1) / ops.maximum(num_matched, 1.0)  # [B]

        # Classes: each matched prediction against its object's class ...
        log_probs = ops.log_softmax(y_pred[:, :, 4:], axis=-1)  # [B, N, K + 1]
        num_logits = log_probs.shape[-1]
        # Ids of real targets are in 0..K-1; the clip keeps the gather in range for any input.
        classes = ops.cast(ops.round(y_true[:, :, 4]), "int32")  # [B, M]
        classes = ops.clip(classes, 0, num_logits - 1)[:, :, None]  # [B, M, 1]
        matched_log_probs = self.gather_matched(log_probs, indices)  # [B, M, K + 1]
        true_class = ops.take_along_axis(matched_log_probs, classes, axis=2)[:, :, 0]  # [B, M]
        matched_ce = -ops.sum(true_class * matched, axis=1)  # [B]
        # ... and each unmatched prediction against "no object" (the last logit).
        unmatched = self.unmatched_predictions(indices, y_pred.shape[1])  # [B, N]
        unmatched = ops.cast(unmatched, y_pred.dtype)
        no_object_ce = -ops.sum(log_probs[:, :, -1] * unmatched, axis=1)  # [B]
        # DETR's weighted mean: weight 1 per matched prediction, eos_coef per unmatched one.
        total_weight = num_matched + self.eos_coef * ops.sum(unmatched, axis=1)  # [B]
        total_weight = ops.where(total_weight > 0, total_weight, 1.0)  # eos_coef = 0, no targets
        class_loss = (matched_ce + self.eos_coef * no_object_ce) / total_weight  # [B]
        return box_loss + self.class_weight * class_loss

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
            }
        )
        return config
