r"""`HungarianLoss` and `hungarian_loss`: a set-prediction loss with optimal matching.

For each sample, the true items are matched one-to-one to the predicted items with the
lowest total cost (`linear_sum_assignment`, under `stop_gradient`), and the sample's
loss is the mean of the cost over the matched pairs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hungarian_loss import _backend
from hungarian_loss import boxes as box_lib
from hungarian_loss.assignment import linear_sum_assignment
from hungarian_loss.costs import (
    WeightedCost,
    _ClassCost,
    _elementwise_cost,
    _take_rows,
    get_cost,
    serialize_cost,
)

__all__ = ["HungarianLoss", "hungarian_loss"]

Tensor = Any

_INF = float("inf")
_NAN = float("nan")


@keras.saving.register_keras_serializable(package="hungarian_loss")
class HungarianLoss(keras.losses.Loss):
    r"""Set-prediction loss: optimal one-to-one matching, then the mean matched cost.

    With `y_true [B, M, D]` (M targets per sample, in any order) and `y_pred [B, N, D]`
    (N predictions), and a pairwise cost `C[b] = cost(y_true, y_pred)[b]` of shape
    `[M, N]`, the loss of sample `b` is

    ```
    loss[b] = 1/|P_b| * sum_{(i, j) in P_b} C[b, i, j]
    P_b     = argmin over one-to-one matchings P of the targets of b of sum_{(i, j) in P} C[b, i, j]
    ```

    The matching is exact (the same optimum as `scipy.optimize.linear_sum_assignment`),
    computed in the graph on the cost under `stop_gradient`; gradients flow through the
    matched costs only. `call` returns the per-sample loss `[B]`, to which Keras applies
    `sample_weight` and `reduction`.

    Padding: a target row whose every value equals `padding_value` is not a target
    (`tf.data`'s `padded_batch(padding_values=-1.0)` makes such rows). A sample without
    targets has loss 0 and zero gradient.

    Failure policy (no silent failures; the full table is in
    [How the matching works: Failure policy](../matching.md#failure-policy)):

    - A finite loss has finite gradients.
    - A real target that breaks a rule of the data (`invalid_targets`: a non-finite
      value; when the cost reads boxes, a box of negative width or height; when it
      reads class ids, an id that is not an integer in `[0, C)`) is never matched and
      makes its sample's loss `NaN`. `NaN` in a prediction or in a cost of a real
      target gives `NaN` too. A sample whose valid real targets are not all matched
      although predictions are available (at most `N` of them can be), because of
      non-finite predictions or costs, has loss `inf`. Such a sample adds nothing to
      the gradients, the rest of the batch trains normally;
      `keras.callbacks.TerminateOnNaN` and NaN guards see its loss, and
      `hungarian_loss.check_targets` finds the broken target in the data.
    - The built-in costs do not overflow where the true value is representable.

    Several prediction sets: `y_pred [B, S, N, D]` holds S sets of N predictions per
    sample (the outputs of S decoder layers, or S query groups). Each set is matched to
    the same targets `y_true [B, M, D]`, all `B * S` problems in one solver call, and
    the sample's loss is the mean of the S set losses (weighted by `set_weights` if
    given). Rank-3 `y_pred` is one set.

    One-to-many: with `matches_per_target=k`, every real target is repeated k times in
    its problem, so that it takes k distinct predictions (as in H-DETR's one-to-many
    branch); the loss is the mean over all matched pairs. If `k * M` exceeds N, the
    N predictions are all matched and the leftover copies are not.

    Extension points for subclasses:

    - `pairwise_cost(y_true, y_pred) -> [B, M, N]`: the cost used to match and, by
      default, the loss on the matched pairs.
    - `matched_loss(y_true, y_pred, indices, target_mask) -> [B]`: the loss from the
      matching (`indices [B, M]`, the prediction matched to each target or -1). Use
      `matched_cost` (a cost on the matched pairs, with gradients), `gather_matched`
      and `unmatched_predictions` to add a classification term and a "no object"
      term, as in DETR.
    - `invalid_targets(y_true, y_pred) -> [B, M]`: the data rules a real target must
      follow (True where it breaks one); override it, calling `super()`, to add
      rules of your layout, such as a class id in range.

    They see one matching problem per row: with sets, `B * S` rows (the targets tiled
    per set); with `matches_per_target=k`, `matched_loss` sees `M * k` targets per
    row (each repeated k times), the other two `M`.

    Args:
        cost: The pairwise cost: a name (`"l2"`, `"l1"`, `"squared_l2"`, `"iou"`,
            `"giou"`, or one registered with `hungarian_loss.costs.register_cost`), a
            dict of weights such as `{"l1": 5.0, "giou": 2.0}` (DETR's), a
            `hungarian_loss.costs.PairwiseCost`, or any callable
            `cost(y_true, y_pred) -> [B, M, N]`. Defaults to `"l2"`, the Euclidean
            distance.
        box_format: Format of the boxes for box costs: `"xyxy"`, `"yxyx"`, `"xywh"`,
            `"center_xywh"` or `"center_yxhw"` (Keras's names).
        padding_value: Value that fills padding target rows, or `None` when every
            row is a target.
        matches_per_target: k, the number of predictions each real target is
            matched to (one-to-many matching); 1 (the default) is one-to-one.
        set_weights: With `y_pred [B, S, N, D]`, one weight (>= 0) per set: the
            sample's loss is `sum_s w_s * loss_s / sum_s w_s`. `None` (the default)
            weights the sets equally.
        reduction: Keras reduction: `"sum_over_batch_size"` (default), `"sum"`,
            `"mean"`, `"mean_with_sample_weight"`, `"none"` or `None`.
        name: Name of the loss.
        dtype: Dtype of the loss's computations; defaults to `keras.backend.floatx()`.
            Under a `mixed_float16` policy the loss still computes in float32.

    Raises:
        ValueError: for an unknown cost or box format, invalid weights, an invalid
            `matches_per_target` or `set_weights`, or an invalid reduction; at trace
            time for inputs of the wrong rank or sizes, an unknown number of items, a
            `y_true` whose dtype cannot hold `padding_value` (say, `uint8` with -1) or,
            when the cost reads class ids, the ids `0..C-1` (say, `int8` with 200
            classes), or a cost whose output is not `[B, M, N]`.

    Examples:
        The upstream worked example: two true and two predicted boxes.

        >>> import numpy as np
        >>> from hungarian_loss import HungarianLoss
        >>> y_true = np.array([[[1., 2., 3., 4.], [5., 6., 7., 8.]]], dtype="float32")
        >>> y_pred = np.array([[[1., 1., 1., 1.], [2., 2., 2., 2.]]], dtype="float32")
        >>> loss = HungarianLoss()
        >>> print(f"{float(loss(y_true, y_pred)):.6f}")  # (3.7416575 + 9.273619) / 2
        6.507638
        >>> np.asarray(loss.match(y_true, y_pred)).tolist()
        [[0, 1]]

        DETR's box cost, with a padded target row:

        >>> detr = HungarianLoss(cost={"l1": 5.0, "giou": 2.0}, box_format="center_xywh")
        >>> y_true = np.array([[[.5, .5, .2, .2], [-1., -1., -1., -1.]]], dtype="float32")
        >>> y_pred = np.array([[[.1, .1, .1, .1], [.5, .5, .2, .2]]], dtype="float32")
        >>> print(f"{float(detr(y_true, y_pred)):.4f}")
        0.0000
        >>> np.asarray(detr.match(y_true, y_pred)).tolist()
        [[1, -1]]

        Two prediction sets (say, two decoder layers): `[B, S, N, D]`, one solver call.

        >>> y_sets = np.stack([y_pred, y_pred[:, ::-1]], axis=1)  # [1, 2, 2, 4]
        >>> np.asarray(detr.match(y_true, y_sets)).tolist()
        [[[1, -1], [0, -1]]]
    """

    def __init__(
        self,
        cost: Any = "l2",
        box_format: str = "xyxy",
        padding_value: float | None = -1.0,
        matches_per_target: int = 1,
        set_weights: Sequence[float] | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "hungarian_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.box_format = box_lib.standardize_box_format(box_format)
        self.cost = cost
        self.cost_fn = get_cost(cost, box_format=self.box_format)
        if padding_value is not None and (
            not isinstance(padding_value, numbers.Real) or isinstance(padding_value, bool)
        ):
            raise ValueError(
                "Expected `padding_value` to be a number or None. "
                f"Received: padding_value={padding_value!r}"
            )
        self.padding_value = None if padding_value is None else float(padding_value)
        if (
            not isinstance(matches_per_target, int)
            or isinstance(matches_per_target, bool)
            or matches_per_target < 1
        ):
            raise ValueError(
                "Expected `matches_per_target` to be an int >= 1. "
                f"Received: matches_per_target={matches_per_target!r}"
            )
        self.matches_per_target = matches_per_target
        self.set_weights = _standardize_set_weights(set_weights)

    # ----- extension points ------------------------------------------------------------------

    def pairwise_cost(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The matching cost `[B, M, N]` between targets and predictions.

        Override it to change what the matching minimizes (for example, to add a class
        cost). The default is the `cost` given to the constructor.

        Args:
            y_true: Targets `[B, M, D_true]`.
            y_pred: Predictions `[B, N, D_pred]`.

        Returns:
            Tensor `[B, M, N]`, differentiable with respect to `y_pred`.
        """
        return self.cost_fn(y_true, y_pred)

    def matched_loss(
        self,
        y_true: Tensor,
        y_pred: Tensor,
        indices: Tensor,
        target_mask: Tensor,
    ) -> Tensor:
        """The per-sample loss `[B]` from a matching.

        The default is the mean of `pairwise_cost` over the matched pairs (0 for a
        sample with no matched pair). Override it to compute other terms on the
        matched pairs, with `matched_cost`, `gather_matched` and
        `unmatched_predictions`.

        Args:
            y_true: Targets `[B, M, D_true]`.
            y_pred: Predictions `[B, N, D_pred]`.
            indices: int32 `[B, M]`: the prediction matched to each target, -1 for
                padding targets and unmatched ones.
            target_mask: bool `[B, M]`: True for real (not padding) targets.

        Returns:
            Tensor `[B]`.
        """
        del target_mask  # `indices` is -1 for padding targets
        pair_cost = self.matched_cost(y_true, y_pred, indices)  # [B, M]
        count = ops.sum(ops.cast(indices >= 0, pair_cost.dtype), axis=1, keepdims=True)  # [B, 1]
        # Divided before the sum, so that the mean does not overflow where it is finite.
        return ops.sum(pair_cost / ops.maximum(count, 1.0), axis=1)

    def invalid_targets(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """Mask `[B, M]` of bool: True for targets that break a rule of the data.

        A real target flagged here is never matched, and its sample's loss is `NaN`
        with no gradient (the failure policy): training on it would learn from a
        target that does not exist. The caller ANDs the mask with `target_mask`, so
        padding rows may be flagged or not. The rules:

        - a non-finite value (`NaN`, `inf`) in any channel;
        - when the cost reads boxes (`"iou"`, `"giou"`, a `WeightedCost` with one, or
          any cost whose `reads_boxes` is True), a box of negative width or height in
          that cost's `box_format` and channels: `x2 < x1` or `y2 < y1` in `"xyxy"`, a
          negative `w` or `h` in `"center_xywh"`. Boxes of zero size are legal;
        - when the cost reads class ids (a `ClassProbabilityCost` or `FocalClassCost`,
          alone or in a `WeightedCost` with a weight > 0), a class id at that cost's
          `class_index` that is not an integer in `[0, C)`, C the number of logits of
          `y_pred` from its `logits_start` on: COCO's id 90 with 80 logits, -1 on a
          real row, 1.5. (The cost alone would give such an id the cost 0.)

        Override it to add rules of your layout, with `super()` for these ones
        (`DETRLoss` adds its class ids in `[0, K)` without the "no object" logit,
        and its boxes). Use `hungarian_loss.check_targets` to find the broken targets
        of a data set.

        Args:
            y_true: Targets `[B, M, D_true]`, one matching problem per row (as
                `pairwise_cost` sees them).
            y_pred: Predictions `[B, N, D_pred]`, for rules that depend on them (the
                number of classes).

        Returns:
            bool tensor `[B, M]`.
        """
        invalid = ops.logical_not(_finite_rows(y_true))  # [B, M]
        for box_format, channels in _box_readers(self.cost_fn):
            start, stop = channels if channels is not None else (None, None)
            boxes = y_true[:, :, start:stop]  # [B, M, 4]
            if boxes.shape[-1] == 4:  # otherwise the cost itself raises
                invalid = ops.logical_or(invalid, _negative_size(boxes, box_format))
        for class_index, num_classes in _class_readers(self.cost_fn, y_true, y_pred):
            ids = y_true[:, :, class_index]  # [B, M]
            # Compared as floats: NaN and huge ids are invalid, and nothing is cast.
            integer = ops.equal(ids, ops.round(ids))
            in_range = ops.logical_and(ids >= 0.0, ids <= num_classes - 1)
            invalid = ops.logical_or(invalid, ops.logical_not(ops.logical_and(integer, in_range)))
        return invalid

    # ----- helpers for subclasses ------------------------------------------------------------

    def matched_cost(
        self,
        y_true: Tensor,
        y_pred: Tensor,
        indices: Tensor,
        cost: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The cost of each target with its matched prediction, `[B, M]`, with gradients.

        Computed on the matched pairs only, as `B * M` problems of one target and one
        prediction each, so the backward pass does not go through the whole
        `[B, M, N]` matrix, and no other pair (say, with an `inf` prediction) can put
        `NaN` into the gradients. Unmatched targets are computed against zeros in place
        of both items and give 0 with zero gradient.

        Args:
            y_true: Targets `[B, M, D_true]`.
            y_pred: Predictions `[B, N, D_pred]`.
            indices: int32 `[B, M]` from `match` (-1 where unmatched).
            cost: A pairwise cost `cost(y_true, y_pred) -> [B, M, N]`; defaults to
                `pairwise_cost`.

        Returns:
            Tensor `[B, M]`, 0 where a target is unmatched.

        Raises:
            ValueError: if `cost` does not return one value per pair.
        """
        cost = self.pairwise_cost if cost is None else cost
        matched = indices >= 0  # [B, M]
        if y_true.shape[1] == 0 or y_pred.shape[1] == 0:  # nothing can be matched
            return ops.zeros_like(ops.cast(indices, y_pred.dtype))  # [B, M]
        targets = _rows_where(matched, y_true)  # [B, M, D_true]: zeros where unmatched
        paired = self.gather_matched(y_pred, indices)  # [B, M, D_pred]: zeros where unmatched
        values = _paired_cost(cost, targets, paired, self._cost_label(cost))  # [B, M]
        return ops.where(matched, values, 0.0)

    @staticmethod
    def gather_matched(y_pred: Tensor, indices: Tensor) -> Tensor:
        """The prediction matched to each target: `[B, M, D]` (zeros where unmatched).

        Unmatched rows are zeros, not a copy of some prediction, and no gradient flows
        from them to `y_pred`: a term computed on them cannot bring `NaN` from an
        unused prediction into the gradients.

        Args:
            y_pred: Predictions `[B, N, D]` (`N` may be 0).
            indices: int32 `[B, M]` from `match` (-1 where unmatched).

        Returns:
            Tensor `[B, M, D]`; mask what you compute from it with `indices >= 0`.
        """
        if y_pred.shape[1] == 0:  # no prediction to gather: every target is unmatched
            zeros = ops.zeros_like(ops.cast(indices, y_pred.dtype))[:, :, None]  # [B, M, 1]
            return ops.repeat(zeros, _last_dim(y_pred), axis=2)  # [B, M, D]
        gathered = _take_rows(y_pred, ops.maximum(indices, 0))  # [B, M, D]
        return _rows_where(indices >= 0, gathered)

    @staticmethod
    def unmatched_predictions(indices: Tensor, num_predictions: int) -> Tensor:
        """Mask `[B, N]` of bool: True for the predictions no target is matched to.

        Args:
            indices: int32 `[B, M]` from `match` (-1 where unmatched).
            num_predictions: N.

        Returns:
            bool tensor `[B, N]`.
        """
        columns = ops.arange(num_predictions, dtype="int32")  # [N]
        hit = ops.equal(indices[:, :, None], columns[None, None, :])  # [B, M, N]
        return ops.logical_not(ops.any(hit, axis=1))

    # ----- the loss --------------------------------------------------------------------------

    def target_mask(self, y_true: Tensor) -> Tensor:
        """Mask `[B, M]` of bool: True for real targets, False for padding rows."""
        if self.padding_value is None:
            return ops.ones_like(y_true[:, :, 0], dtype="bool")
        if math.isnan(self.padding_value):
            return ops.logical_not(ops.all(ops.isnan(y_true), axis=2))
        return ops.logical_not(ops.all(ops.equal(y_true, self.padding_value), axis=2))

    def match(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The optimal matching: int32 `[B, M]`, the prediction of each target or -1.

        Args:
            y_true: Targets `[B, M, D]`, padding rows filled with `padding_value`.
            y_pred: Predictions `[B, N, D]`, or S sets of them, `[B, S, N, D]`.

        Returns:
            int32 tensor `[B, M]` (`[B, S, M]` with sets): -1 for padding targets, for
            targets left over when there are fewer predictions than targets, and for
            targets that could not be matched because their costs are not finite.
            With `matches_per_target=k > 1`, a last axis of size k: `[B, M, k]` or
            `[B, S, M, k]`, the k predictions of each target.
        """
        y_true, y_pred = self._prepare(y_true, y_pred)
        y_true, y_pred, num_sets = self._flatten_sets(y_true, y_pred)
        num_targets = y_true.shape[1]
        target_mask = self.target_mask(y_true)
        cost, _ = self._matching_cost(y_true, y_pred)  # [B * S, M, N], without gradient
        _, target_mask, cost = self._repeat_targets(y_true, target_mask, cost)
        indices = self._solve(cost, target_mask)  # [B * S, M * k]
        if self.matches_per_target > 1:
            indices = ops.reshape(indices, (-1, num_targets, self.matches_per_target))
        if num_sets is not None:
            indices = ops.reshape(indices, (-1, num_sets, *indices.shape[1:]))
        return indices

    @_backend.outside_torch_compile
    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """Per-sample loss `[B]`."""
        y_true, y_pred = self._prepare(y_true, y_pred)
        # S sets of predictions: B * S problems, one solver call; rows below are problems.
        y_true, y_pred, num_sets = self._flatten_sets(y_true, y_pred)
        real = self.target_mask(y_true)  # [B, M]
        cost, invalid = self._matching_cost(y_true, y_pred)  # [B, M, N] without gradient, [B, M]
        y_true, target_mask, cost = self._repeat_targets(y_true, real, cost)
        indices = self._solve(cost, target_mask)  # [B, M]; checks the mask's shape
        broken = ops.any(ops.logical_and(invalid, real), axis=1)  # [B]: a real target is invalid
        loss = self.matched_loss(y_true, y_pred, indices, target_mask)  # [B]
        loss = _failure_policy(loss, y_pred, cost, indices, target_mask, broken)
        return self._reduce_sets(loss, num_sets)

    # ----- several prediction sets and one-to-many matching ----------------------------------

    def _flatten_sets(self, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor, int | None]:
        """`y_pred [B, S, N, D]` -> `[B * S, N, D]`, `y_true` tiled to `[B * S, M, D]`.

        Returns the two tensors and S (`None`, and the tensors unchanged, for rank 3).
        Row `b * S + s` is set s of sample b.
        """
        if len(y_pred.shape) == 3:
            if self.set_weights is not None and len(self.set_weights) != 1:
                raise ValueError(
                    "Expected `y_pred` of rank 4 ([batch, sets, items, features]) with "
                    f"set_weights={list(self.set_weights)}. "
                    f"Received: y_pred.shape={tuple(y_pred.shape)}"
                )
            return y_true, y_pred, None
        num_sets = y_pred.shape[1]
        if self.set_weights is not None and len(self.set_weights) != num_sets:
            raise ValueError(
                f"Expected one weight per prediction set in `set_weights` ({num_sets} sets). "
                f"Received: set_weights={list(self.set_weights)}, "
                f"y_pred.shape={tuple(y_pred.shape)}"
            )
        y_pred = ops.reshape(y_pred, (-1, *y_pred.shape[2:]))  # [B * S, N, D]
        y_true = ops.repeat(y_true, num_sets, axis=0)  # [B * S, M, D]
        return y_true, y_pred, num_sets

    def _repeat_targets(
        self, y_true: Tensor, target_mask: Tensor, cost: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each target repeated `matches_per_target` (k) times: rows `i * k ... i * k + k - 1`.

        Returns `y_true [B, M * k, D]`, `target_mask [B, M * k]`, `cost [B, M * k, N]`.
        """
        k = self.matches_per_target
        if k == 1:
            return y_true, target_mask, cost
        return (
            ops.repeat(y_true, k, axis=1),
            ops.repeat(target_mask, k, axis=1),
            ops.repeat(cost, k, axis=1),
        )

    def _reduce_sets(self, loss: Tensor, num_sets: int | None) -> Tensor:
        """Per-problem loss `[B * S]` -> per-sample `[B]`, the (weighted) mean over sets.

        A sample whose loss is not finite in one set adds no gradient through any set.
        """
        if num_sets is None:
            return loss
        per_set = ops.reshape(loss, (-1, num_sets))  # [B, S]
        # A sample with a broken set is broken: its other sets add no gradient either.
        broken = ops.logical_not(ops.all(ops.isfinite(per_set), axis=1, keepdims=True))  # [B, 1]
        per_set = ops.where(broken, ops.stop_gradient(per_set), per_set)
        if self.set_weights is None:
            return ops.mean(per_set, axis=1)
        total = sum(self.set_weights)
        weights = ops.convert_to_tensor([w / total for w in self.set_weights], per_set.dtype)
        return ops.sum(per_set * weights[None, :], axis=1)

    # ----- the boundary: inputs, costs and masks are checked here ---------------------------

    def _matching_cost(
        self, y_true: Tensor, y_pred: Tensor, finite_pred: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The cost to match with, `[B, M, N]`, without gradient, and the invalid targets.

        The cost is `inf` (a forbidden pair) where the target is invalid (a non-finite
        value, or a rule of `invalid_targets`) or the prediction has a non-finite
        value. The loss recomputes the cost of the matched pairs with gradients.
        Returns the cost and the bool mask `[B, M]` of invalid targets (padding rows
        included: AND it with the target mask). `finite_pred [B, N]`, where the caller
        has it already: the predictions that are finite in every channel.
        """
        y_true, y_pred = ops.stop_gradient(y_true), ops.stop_gradient(y_pred)
        label = self._cost_label(self.pairwise_cost)
        cost = _checked_cost(self.pairwise_cost, y_true, y_pred, label)  # [B, M, N]
        invalid = self._checked_invalid_targets(y_true, y_pred)  # [B, M]
        # Non-finite targets stay unmatched even if an override forgets the rule.
        invalid = ops.logical_or(invalid, ops.logical_not(_finite_rows(y_true)))
        if finite_pred is None:
            finite_pred = _finite_rows(y_pred)  # [B, N]
        usable = ops.logical_and(ops.logical_not(invalid)[:, :, None], finite_pred[:, None, :])
        return ops.where(usable, cost, _INF), invalid

    def _checked_invalid_targets(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """`invalid_targets`, checked to be one bool per target: `[B, M]`."""
        invalid = ops.convert_to_tensor(self.invalid_targets(y_true, y_pred))
        expected, shape = tuple(y_true.shape[:2]), tuple(invalid.shape)
        if len(shape) != 2 or not _same_known(shape, expected):
            raise ValueError(
                f"Expected `invalid_targets` to return one bool per target: shape [B, M] = "
                f"{expected} for y_true.shape={tuple(y_true.shape)}. Received: shape={shape}"
            )
        return ops.cast(invalid, "bool")

    def _cost_label(self, cost: Any) -> str:
        """How error messages name a cost: the constructor's cost, or the callable."""
        if getattr(cost, "__func__", None) is HungarianLoss.pairwise_cost:
            cost = self.cost_fn
        return getattr(cost, "__qualname__", None) or repr(cost)

    @staticmethod
    def _solve(cost: Tensor, target_mask: Tensor) -> Tensor:
        """`linear_sum_assignment`, with the mask's shape checked against the cost's."""
        expected, shape = tuple(cost.shape[:2]), tuple(target_mask.shape)
        if len(shape) != 2 or not _same_known(shape, expected):
            raise ValueError(
                f"Expected `target_mask` of shape [B, M] = {expected} (the first two axes "
                f"of the cost). Received: target_mask.shape={shape}"
            )
        return linear_sum_assignment(cost, row_mask=target_mask)

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor = None) -> Tensor:
        """The reduced loss (Keras's `Loss.__call__`), with the dtype of `y_true` checked.

        Keras casts both inputs to the loss's dtype before `call`; the check sees the
        dtype they came with.
        """
        self._check_target_dtypes(y_true, y_pred)
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def _check_target_dtypes(self, y_true: Any, y_pred: Any) -> None:
        """Raises if an integer `y_true` cannot hold `padding_value` or the class ids.

        The class ids are `0..C-1` for every class cost of the loss's cost
        (`_class_readers`). Nothing is checked where `y_true` has no dtype (a dict).
        """
        _check_true_dtype(y_true, self.padding_value)
        dtype = getattr(y_true, "dtype", None)
        if dtype is None:
            return
        for _, num_classes in _class_readers(self.cost_fn, y_true, y_pred):
            _check_class_id_dtype(dtype, num_classes, "y_true")

    def _prepare(self, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor]:
        self._check_target_dtypes(y_true, y_pred)
        y_pred = _to_tensor(y_pred)
        y_true = ops.cast(_to_tensor(y_true), y_pred.dtype)
        for arg, tensor in (("y_true", y_true), ("y_pred", y_pred)):
            shape = tuple(tensor.shape)
            if len(shape) != 3 and not (arg == "y_pred" and len(shape) == 4):
                raise ValueError(
                    f"Expected `{arg}` of rank 3 ([batch, items, features])"
                    + (" or 4 ([batch, sets, items, features])" if arg == "y_pred" else "")
                    + f". Received: {arg}.shape={shape}"
                )
            if any(not isinstance(size, int) for size in shape[1:]):  # None or symbolic
                raise ValueError(
                    f"Expected the sizes of `{arg}` after the batch axis (the number of items "
                    "and of features) to be known when the graph is traced: pad every batch "
                    "to the same number of rows. With `tf.data`, give `padded_batch` fixed "
                    "`padded_shapes`, e.g. `dataset.padded_batch(batch_size, padded_shapes="
                    f"([...], [M, 4]), padding_values=-1.0)`. Received: {arg}.shape={shape}"
                )
        batch_true, batch_pred = y_true.shape[0], y_pred.shape[0]
        if batch_true is not None and batch_pred is not None and batch_true != batch_pred:
            raise ValueError(
                "Expected `y_true` and `y_pred` to have the same batch size. Received: "
                f"y_true.shape={tuple(y_true.shape)}, y_pred.shape={tuple(y_pred.shape)}"
            )
        return y_true, y_pred

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument; the cost by name or config."""
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "cost": serialize_cost(self.cost),
                "box_format": self.box_format,
                "padding_value": self.padding_value,
                "matches_per_target": self.matches_per_target,
                "set_weights": None if self.set_weights is None else list(self.set_weights),
                "dtype": self._dtype_policy.name,
            }
        )
        return config


def _standardize_set_weights(set_weights: Any) -> tuple[float, ...] | None:
    """`set_weights` as a tuple of floats, or `None`; raises unless valid."""
    if set_weights is None:
        return None
    try:
        weights = tuple(set_weights)
    except TypeError:
        weights = ()
    valid = bool(weights) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
        for w in weights
    )
    if not valid or sum(weights) <= 0:
        raise ValueError(
            "Expected `set_weights` to be None or a non-empty sequence of finite numbers "
            f">= 0, not all 0. Received: set_weights={set_weights!r}"
        )
    return tuple(float(w) for w in weights)


def _failure_policy(
    loss: Tensor,
    y_pred: Tensor,
    cost: Tensor,
    indices: Tensor,
    target_mask: Tensor,
    broken: Tensor,
    nan_pred: Tensor | None = None,
) -> Tensor:
    """The per-sample `loss [B]`, made `inf` or `NaN` where the sample is broken.

    `inf`: fewer real targets are matched than could be (`min(real targets, N)`: the
    solver matches as many as the finite costs allow). `NaN` (over `inf`): a real
    target is invalid (`broken [B]`: a non-finite value or a rule of
    `invalid_targets`), or `NaN` in a prediction of a sample with a real target, or in
    the cost of a real target. The `where` passes no gradient to such a sample's loss,
    nor to a loss that is not finite by itself (an overflow).
    `nan_pred [B]`, where the caller has it already: whether `y_pred` holds a `NaN`.
    """
    num_predictions = y_pred.shape[1]
    has_target = ops.any(target_mask, axis=1)  # [B]
    if nan_pred is None:
        nan_pred = ops.any(_nan_rows(y_pred), axis=1)  # [B]
    nan_pred = ops.logical_and(nan_pred, has_target)  # [B]
    nan_cost = ops.any(ops.logical_and(ops.isnan(cost), target_mask[:, :, None]), axis=(1, 2))
    is_nan = ops.logical_or(ops.logical_or(broken, nan_pred), nan_cost)  # [B]
    matched = ops.sum(ops.cast(indices >= 0, "int32"), axis=1)  # [B]
    matchable = ops.minimum(ops.sum(ops.cast(target_mask, "int32"), axis=1), num_predictions)
    loss = ops.where(matched < matchable, _INF, loss)
    # A loss that overflows from finite inputs (huge logits) stays `inf` and adds no
    # gradient either, like every other non-finite loss.
    loss = ops.where(ops.isfinite(loss), loss, ops.stop_gradient(loss))
    return ops.where(is_nan, _NAN, loss)


def _paired_cost(
    cost: Callable[[Tensor, Tensor], Tensor], y_true: Tensor, y_pred: Tensor, label: str
) -> Tensor:
    """`cost` of `y_true[b, i]` with `y_pred[b, i]` for every `(b, i)`: `[B, M]`.

    The built-in costs compute it elementwise; any other cost sees each pair as its own
    problem of one target and one prediction (`B * M` of them).
    """
    values = _elementwise_cost(cost, y_true, y_pred)  # [B, M], or None
    if values is not None:
        return values
    num_items = y_true.shape[1]
    flat_true = ops.reshape(y_true, (-1, 1, _last_dim(y_true)))  # [B * M, 1, D_true]
    flat_pred = ops.reshape(y_pred, (-1, 1, _last_dim(y_pred)))  # [B * M, 1, D_pred]
    values = _checked_cost(cost, flat_true, flat_pred, label)  # [B * M, 1, 1]
    return ops.reshape(values, (-1, num_items))  # [B, M]


def _checked_cost(
    cost: Callable[[Tensor, Tensor], Tensor], y_true: Tensor, y_pred: Tensor, label: str
) -> Tensor:
    """`cost(y_true, y_pred)`, checked to be `[B, M, N]`: one value per pair."""
    values = ops.convert_to_tensor(cost(y_true, y_pred))
    expected = (y_true.shape[0], y_true.shape[1], y_pred.shape[1])
    shape = tuple(values.shape)
    if len(shape) != 3 or not _same_known(shape, expected):
        raise ValueError(
            f"Expected the cost {label} to return one value per (target, prediction) "
            f"pair: shape [B, M, N] = {expected} for y_true.shape={tuple(y_true.shape)} "
            f"and y_pred.shape={tuple(y_pred.shape)}. Received: shape={shape}"
        )
    return values


def _box_readers(cost: Any) -> list[tuple[str, tuple[int, int | None] | None]]:
    """`(box_format, channels)` of every box cost that `cost` computes (weight > 0)."""
    if isinstance(cost, WeightedCost):
        return [
            reader for term, weight in cost.terms if weight != 0.0 for reader in _box_readers(term)
        ]
    if getattr(cost, "reads_boxes", False):
        return [(cost.box_format, cost.channels)]
    return []


def _class_readers(cost: Any, y_true: Tensor, y_pred: Tensor) -> list[tuple[int, int]]:
    """`(class_index, C)` of every class cost that `cost` computes (weight > 0).

    C is the number of logits the cost reads, those of `y_pred` from its
    `logits_start` on (`_ClassCost._logits`). A cost whose channels `y_true` or
    `y_pred` do not have (or not in a known number) is left out: it raises itself.
    """
    if isinstance(cost, WeightedCost):
        return [
            reader
            for term, weight in cost.terms
            if weight != 0.0
            for reader in _class_readers(term, y_true, y_pred)
        ]
    if not isinstance(cost, _ClassCost):
        return []
    depth_true, depth_pred = _static_depth(y_true), _static_depth(y_pred)
    if depth_true is None or depth_pred is None:
        return []
    if not -depth_true <= cost.class_index < depth_true:
        return []
    num_classes = len(range(depth_pred)[cost.logits_start :])
    return [(cost.class_index, num_classes)] if num_classes else []


def _static_depth(x: Any) -> int | None:
    """The size of the last axis of `x`, or `None` (a dict, a scalar, an unknown size)."""
    shape = getattr(x, "shape", None)
    try:
        depth = shape[-1] if shape is not None and len(shape) else None
    except (TypeError, ValueError):  # unknown rank
        return None
    return depth if isinstance(depth, int) else None


def _negative_size(boxes: Tensor, box_format: str) -> Tensor:
    """`[B, M]`: True where a box `[B, M, 4]` in `box_format` has a negative width or height.

    Compared in the box's own format: a corner format by its corners (no subtraction,
    which could overflow), a size format by its sizes. `NaN` compares as False.
    """
    if box_format in ("xyxy", "yxyx"):
        return ops.any(boxes[:, :, 2:] < boxes[:, :, :2], axis=-1)
    return ops.any(boxes[:, :, 2:] < 0.0, axis=-1)  # xywh, center_xywh, center_yxhw


def _check_true_dtype(y_true: Any, padding_value: float | None) -> None:
    """Raises if `y_true` has an integer (or bool) dtype that cannot hold `padding_value`.

    Keras casts `y_true` to the loss's float dtype before `call`: a `uint8` tensor that
    was meant to hold -1 has 255 there, and its padding rows become targets.
    """
    dtype = getattr(y_true, "dtype", None)
    if dtype is None or padding_value is None:
        return
    name = keras.backend.standardize_dtype(dtype)
    if name == "bool":
        low, high = 0, 1
    elif "int" in name:
        info = np.iinfo(name)
        low, high = int(info.min), int(info.max)
    else:
        return
    representable = math.isfinite(padding_value) and padding_value.is_integer()
    if representable and low <= padding_value <= high:
        return
    raise ValueError(
        f"Expected `y_true` of a dtype that can hold padding_value={padding_value} (the "
        f"value of padding rows): a float dtype such as float32. Received: "
        f"y_true.dtype={name}, which holds {low}..{high}, so padding rows cannot be told "
        "from targets. Make the targets float, e.g. `y_true.astype('float32')` or "
        "`keras.ops.cast(y_true, 'float32')` before padding them, or pass the "
        "`padding_value` your data uses (None if no row is padding)."
    )


def _check_class_id_dtype(dtype: Any, num_classes: int, arg_name: str) -> None:
    """Raises if `dtype` is an integer (or bool) dtype that cannot hold `0..num_classes - 1`.

    Targets stored in such a dtype had their larger ids wrapped around or cut before the
    loss saw them (an `int8` holds 127 at most): the loss cannot tell them from others.
    Float dtypes pass. `arg_name` names the argument in the message (`"y_true"`,
    `"labels"`).
    """
    name = keras.backend.standardize_dtype(dtype)
    if name == "bool":
        high = 1
    elif "int" in name:
        high = int(np.iinfo(name).max)
    else:
        return
    if num_classes - 1 <= high:
        return
    raise ValueError(
        f"Expected `{arg_name}` of a dtype that can hold the class ids 0..{num_classes - 1} "
        f"(num_classes={num_classes}). Received: {arg_name}.dtype={name}, which holds at "
        f"most {high}: larger ids wrapped around or were cut where the targets were "
        "converted to it, and the loss cannot tell them from others. Keep the targets in "
        "a dtype that holds them from the start, such as float32 or int32 (e.g. "
        "`np.asarray(targets, dtype='float32')` where they are built, not a cast of the "
        "narrow array)."
    )


def _same_known(shape: tuple[Any, ...], expected: tuple[Any, ...]) -> bool:
    """Whether two shapes of one rank agree on every dimension known in both."""
    return all(a is None or b is None or a == b for a, b in zip(shape, expected, strict=True))


def _finite_rows(x: Tensor) -> Tensor:
    """`[B, K]`: True where the row `x[b, k]` is finite in every channel."""
    return ops.all(ops.isfinite(x), axis=-1)


def _nan_rows(x: Tensor) -> Tensor:
    """`[B, K]`: True where the row `x[b, k]` has a NaN."""
    return ops.any(ops.isnan(x), axis=-1)


def _rows_where(mask: Tensor, x: Tensor) -> Tensor:
    """`x [B, K, D]` where `mask [B, K]`, zeros elsewhere (no gradient to those rows)."""
    return ops.where(mask[:, :, None], x, 0.0)


def _last_dim(x: Tensor) -> Any:
    """The size of the last axis of `x`, static if known."""
    size = x.shape[-1]
    return ops.shape(x)[-1] if size is None else size


def _to_tensor(x: Tensor) -> Tensor:
    """`x` as a tensor of the backend (a `tf.Variable` becomes its value)."""
    x = ops.convert_to_tensor(x)
    return x if hasattr(x, "ndim") else ops.copy(x)


_DEFAULT_LOSS = HungarianLoss()


@keras.saving.register_keras_serializable(package="hungarian_loss")
def hungarian_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    r"""Hungarian loss with the Euclidean cost, per sample: the function form.

    The same as `HungarianLoss()(y_true, y_pred)` before reduction: targets padded
    with rows of -1 are ignored, each sample's loss is the mean Euclidean distance
    over the optimally matched pairs. Use it like Keras's function losses:
    `model.compile(loss={"bbox": hungarian_loss}, loss_weights={"bbox": 1})`.

    Args:
        y_true: Targets `[B, M, D]`.
        y_pred: Predictions `[B, N, D]`.

    Returns:
        Per-sample loss `[B]`.

    Examples:
        >>> import numpy as np
        >>> from hungarian_loss import hungarian_loss
        >>> y_true = np.array([[[1., 2., 3., 4.], [5., 6., 7., 8.]]], dtype="float32")
        >>> y_pred = np.array([[[1., 1., 1., 1.], [2., 2., 2., 2.]]], dtype="float32")
        >>> print(np.round(np.asarray(hungarian_loss(y_true, y_pred)), 6))
        [6.507638]
    """
    return _DEFAULT_LOSS.call(y_true, y_pred)
