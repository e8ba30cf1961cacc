"""The mask terms of `DETRLoss` (MaskFormer, Mask2Former, EoMT): options, costs, sums.

`MaskTerms` holds the options of the mask and dice terms, in the matching and in the
loss; the functions below compute, for the `P = B * S` matching problems of a call
(set s of image b is row `b * S + s`), the pairwise mask cost of every (target, query)
and the sums of the two terms over the matched pairs. Predicted masks `[P, Q, h, w]`
and target masks `[B, M, H, W]` (each image's once, whatever S) are read at the same
normalized points (`hungarian_loss.masks`); nothing of size `[Q, M, points]` or
`[Q, M, H, W]` is built.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from hungarian_loss import masks as mask_lib
from hungarian_loss.detr._checks import check_weight, standardize_weights

__all__ = ["MaskTerms"]

Tensor = Any

MASK_LOSSES = ("bce", "focal")
# Salts of the two random streams of a call (the matching's points, the loss's points).
_MATCHING_STREAM, _LOSS_STREAM = 0, 0x2545F491


@keras.saving.register_keras_serializable(package="hungarian_loss")
class MaskTerms:
    r"""The mask and dice terms of a `DETRLoss`: what they weigh and where they read masks.

    Given to `DETRLoss(masks=MaskTerms(...))`; the recipes `DETRLoss.maskformer()` and
    `DETRLoss.mask2former()` make them. The options are grouped in this object rather
    than added to `DETRLoss`'s arguments: the class and box terms keep theirs, and a
    criterion without masks has none of these.

    With `x` the logits of a predicted mask and `y` its target, read at the same P
    points, `p = sigmoid(x)`:

    ```
    mask = (1 / P) sum_p [softplus(x_p) - x_p y_p]                     mask_loss="bce"
    mask = (1 / P) sum_p alpha_t (1 - p_t)^gamma BCE(x_p, y_p)        mask_loss="focal"
    dice = 1 - (2 sum_p p_p y_p + 1) / (sum_p p_p + sum_p y_p + 1)
    ```

    Matching: every (target, query) pair's `matching_weights[0] * mask +
    matching_weights[1] * dice` is added to the class (and box) cost, on P uniform
    points per matching problem shared by its queries and targets (Mask2Former's
    matcher), or on every pixel of the predictions (`num_points=None`, MaskFormer).
    Loss: the two terms on the matched pairs, summed and divided by the number of
    masks (the `DETRLoss`'s normalization), each pair read at its own P points chosen by
    uncertainty (`oversample_ratio * P` uniform candidates, the `importance_ratio * P`
    with the smallest `|logit|`, and uniform points for the rest: Mask2Former's and
    PointRend's importance sampling), or on every pixel of the predictions.

    Every pixel (`num_points=None`) means the centres of the predicted masks' pixels:
    predictions are read there as they are, and targets of another resolution
    bilinearly (a target at twice the resolution gives the mean of each 2 x 2 block).
    MaskFormer computes its loss at the targets' resolution instead, upsampling the
    predictions; at equal resolutions the two are the same.

    Randomness. The points of a call are drawn from `seed` and from the predicted masks
    themselves (a hash of their sum): new points at every training step, because the
    predictions change, and the same points for the same model, batch and seed, on
    every backend and inside any compiled step, JAX's stateless training step included,
    with no state to track. A `keras.random.SeedGenerator` as `seed` also moves on at
    each call on TensorFlow and torch; on JAX it is read and not advanced (an update of
    its state inside `jax.jit` would leak a tracer): there the predictions' hash alone
    gives new points. `seed=None` draws an int once, from Python's
    `random` (which `keras.utils.set_random_seed` seeds).

    Args:
        mask_weight: Weight of the mask term in the loss (Mask2Former: 5; MaskFormer: 20).
        dice_weight: Weight of the dice term in the loss (Mask2Former: 5; MaskFormer: 1).
        mask_loss: `"bce"` (sigmoid cross-entropy, Mask2Former) or `"focal"` (sigmoid
            focal loss, MaskFormer), in the loss and in the matching.
        num_points: P, the points per mask (Mask2Former: 112 * 112 = 12544), or None
            for every pixel of the predicted masks.
        oversample_ratio: Candidates per point of the importance sampling, >= 1 (3).
        importance_ratio: Fraction of the points chosen by uncertainty, in `[0, 1]` (0.75).
        matching_weights: `(mask, dice)` weights of the matching cost; None uses
            `(mask_weight, dice_weight)`.
        focal_alpha: The focal term's alpha, in `[0, 1]` (`mask_loss="focal"`).
        focal_gamma: The focal term's gamma, `>= 0`.
        seed: An int, a `keras.random.SeedGenerator`, or None.

    Raises:
        ValueError: if a weight is negative or not finite, `mask_loss` is unknown,
            `num_points` is not None or an int >= 1, a ratio is out of range, or `seed`
            is of another type.

    Examples:
        >>> from hungarian_loss import DETRLoss, MaskTerms
        >>> terms = MaskTerms(mask_weight=5.0, dice_weight=5.0, num_points=12544)
        >>> loss = DETRLoss(class_weight=2.0, l1_weight=0.0, giou_weight=0.0,
        ...                 matching_weights=(2.0, 0.0, 0.0), masks=terms)
        >>> loss.term_names()
        ('class', 'mask', 'dice')
    """

    def __init__(
        self,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        mask_loss: str = "bce",
        num_points: int | None = 12544,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
        matching_weights: Sequence[float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        seed: int | keras.random.SeedGenerator | None = None,
    ) -> None:
        for arg, value in (("mask_weight", mask_weight), ("dice_weight", dice_weight)):
            check_weight(arg, value)
        if mask_loss not in MASK_LOSSES:
            raise ValueError(
                f"Expected `mask_loss` to be one of {MASK_LOSSES}. "
                f"Received: mask_loss={mask_loss!r}"
            )
        if num_points is not None and (
            not isinstance(num_points, numbers.Integral)
            or isinstance(num_points, bool)
            or num_points < 1
        ):
            raise ValueError(
                "Expected `num_points` to be None (every pixel) or an int >= 1. "
                f"Received: num_points={num_points!r}"
            )
        if not mask_lib._is_real(oversample_ratio) or not oversample_ratio >= 1.0:
            raise ValueError(
                "Expected `oversample_ratio` to be a number >= 1. "
                f"Received: oversample_ratio={oversample_ratio!r}"
            )
        if not mask_lib._is_real(importance_ratio) or not 0.0 <= importance_ratio <= 1.0:
            raise ValueError(
                "Expected `importance_ratio` to be a number in [0, 1]. "
                f"Received: importance_ratio={importance_ratio!r}"
            )
        if matching_weights is None:
            matching_weights = (mask_weight, dice_weight)
        pair = standardize_weights("matching_weights", matching_weights, ("mask", "dice"))
        alpha, gamma = mask_lib._check_focal(focal_alpha, focal_gamma)
        mask_lib._keras_seed(seed)  # raises for a seed of another type
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.mask_loss = mask_loss
        self.num_points = None if num_points is None else int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_ratio = float(importance_ratio)
        self.matching_weights = (float(pair[0]), float(pair[1]))
        self.focal_alpha = alpha
        self.focal_gamma = gamma
        self.seed = seed
        # The int the random streams start from: `seed`, or one drawn now for None.
        self._base_seed = random.randrange(2**31) if seed is None else seed

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument (a `SeedGenerator` seed serialized)."""
        seed = self.seed
        if isinstance(seed, keras.random.SeedGenerator):
            seed = keras.saving.serialize_keras_object(seed)
        return {
            "mask_weight": self.mask_weight,
            "dice_weight": self.dice_weight,
            "mask_loss": self.mask_loss,
            "num_points": self.num_points,
            "oversample_ratio": self.oversample_ratio,
            "importance_ratio": self.importance_ratio,
            "matching_weights": list(self.matching_weights),
            "focal_alpha": self.focal_alpha,
            "focal_gamma": self.focal_gamma,
            "seed": seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskTerms:
        """The inverse of `get_config`."""
        config = dict(config)
        if isinstance(config.get("seed"), dict):
            config["seed"] = keras.saving.deserialize_keras_object(config["seed"])
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"MaskTerms({arguments})"

    # ----- what DETRLoss calls ---------------------------------------------------------------

    def call_seed(self, pred_masks: Tensor) -> Tensor:
        """The seed of one call, int32 `[2]`: `seed`'s, mixed with a hash of the predictions.

        The hash is the bits of the float32 sum of `pred_masks` (no gradient).
        """
        if isinstance(self._base_seed, keras.random.SeedGenerator):
            if keras.backend.backend() == "jax":  # read, not advanced: inside `jax.jit` an
                base = ops.cast(self._base_seed.state.value, "int32")  # update would leak
            else:
                base = ops.cast(self._base_seed.next(), "int32")  # [2]
        else:
            base = ops.convert_to_tensor([int(self._base_seed) % 2**31, 0], "int32")
        masks = ops.stop_gradient(ops.convert_to_tensor(pred_masks))
        total = ops.sum(ops.cast(masks, "float32"))
        digest = ops.view(ops.reshape(total, (1,)), "int32")  # [1]
        return ops.stack([ops.bitwise_xor(base[0], digest[0]), base[1]])

    def matching_cost(
        self, pred_masks: Tensor, target_masks: Tensor, num_sets: int, seed: Tensor
    ) -> Tensor:
        """`matching_weights`' mask + dice cost of every (target, query): `[P, M, Q]`.

        Args:
            pred_masks: Logits `[P, Q, h, w]`, `P = B * S`, without gradient.
            target_masks: `[B, M, H, W]`, finite.
            num_sets: S.
            seed: The call's seed (`call_seed`).

        Returns:
            float32 `[P, M, Q]`.
        """
        logits, targets = self._read_all(pred_masks, target_masks, num_sets, seed)
        w_mask, w_dice = self.matching_weights
        cost = None
        if w_mask:
            if self.mask_loss == "bce":
                mask = mask_lib.pairwise_sigmoid_bce(logits, targets)  # [P, Q, M]
            else:
                mask = mask_lib.pairwise_sigmoid_focal(
                    logits, targets, self.focal_alpha, self.focal_gamma
                )
            cost = w_mask * mask
        if w_dice:
            dice = w_dice * mask_lib.pairwise_dice(logits, targets)  # [P, Q, M]
            cost = dice if cost is None else cost + dice
        if cost is None:
            cost = ops.zeros((ops.shape(logits)[0], logits.shape[1], targets.shape[1]), "float32")
        return ops.swapaxes(ops.cast(cost, "float32"), 1, 2)  # [P, M, Q]

    def pair_sums(
        self,
        pred_masks: Tensor,
        target_masks: Tensor,
        indices: Tensor,
        num_sets: int,
        seed: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The mask and dice terms summed over the matched pairs: `[P]` each.

        Args:
            pred_masks: Logits `[P, Q, h, w]`, with gradient.
            target_masks: `[B, M, H, W]`, finite.
            indices: int32 `[P, M]`: the query of each target, -1 where unmatched.
            num_sets: S.
            seed: The call's seed (`call_seed`).
        """
        matched = indices >= 0  # [P, M]
        rows = ops.where(matched, indices, 0)  # [P, M]
        height, width = pred_masks.shape[2], pred_masks.shape[3]
        if self.num_points is None:
            flat = ops.reshape(pred_masks, (-1, pred_masks.shape[1], height * width))
            logits = ops.take_along_axis(flat, rows[:, :, None], axis=1)  # [P, M, h * w]
            targets = _targets_on_grid(target_masks, height, width, num_sets)  # [P, M, h * w]
        else:
            chosen = ops.take_along_axis(pred_masks, rows[:, :, None, None], axis=1)  # [P, M, h, w]
            points = mask_lib.importance_points(
                chosen,
                self.num_points,
                self.oversample_ratio,
                self.importance_ratio,
                seed=_stream(seed, _LOSS_STREAM),
            )  # [P, M, n, 2], no gradient
            logits = mask_lib.point_sample(chosen, points)  # [P, M, n]
            targets = _targets_at(target_masks, points, num_sets)  # [P, M, n]
        if self.mask_loss == "bce":
            mask = mask_lib.elementwise_sigmoid_bce(logits, targets)  # [P, M]
        else:
            mask = mask_lib.elementwise_sigmoid_focal(
                logits, targets, self.focal_alpha, self.focal_gamma
            )
        dice = mask_lib.elementwise_dice(logits, targets)  # [P, M]
        mask = ops.sum(ops.where(matched, mask, 0.0), axis=1)  # [P]
        dice = ops.sum(ops.where(matched, dice, 0.0), axis=1)  # [P]
        return mask, dice

    def _read_all(
        self, pred_masks: Tensor, target_masks: Tensor, num_sets: int, seed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Every query's and target's values at the matching's points: `[P, Q, n]`, `[P, M, n]`."""
        height, width = pred_masks.shape[2], pred_masks.shape[3]
        if self.num_points is None:
            logits = ops.reshape(pred_masks, (-1, pred_masks.shape[1], height * width))
            return logits, _targets_on_grid(target_masks, height, width, num_sets)
        problems = ops.shape(pred_masks)[0]
        points = mask_lib.uniform_points(
            problems, self.num_points, seed=_stream(seed, _MATCHING_STREAM)
        )  # [P, n, 2]
        logits = mask_lib.point_sample(pred_masks, points)  # [P, Q, n]
        return logits, _targets_at(target_masks, points, num_sets)


def invalid_masks(target_masks: Tensor) -> Tensor:
    """`[B, M]`: True where a target mask holds a value that is NaN or outside `[0, 1]`."""
    values = ops.convert_to_tensor(target_masks)
    if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(values.dtype)):
        values = ops.cast(values, "float32")  # bool and int masks: 0/1 or out of range
    inside = ops.logical_and(values >= 0.0, values <= 1.0)  # NaN: False
    return ops.logical_not(ops.all(inside, axis=(2, 3)))


def _targets_at(target_masks: Tensor, points: Tensor, num_sets: int) -> Tensor:
    """Targets `[B, M, H, W]` read at the points of the P = B * S problems.

    `points [P, n, 2]` (shared by a problem's masks) or `[P, M, n, 2]` (per mask). The
    S problems of an image read its targets in one call, at their points side by side,
    rather than from S copies of the targets. Values that are not finite read as 0 (the
    failure policy flags such targets). Returns float32 `[P, M, n]`, no gradient.
    """
    n = points.shape[-2]
    num_masks = target_masks.shape[1]
    if len(points.shape) == 3:  # [B * S, n, 2] -> [B, S * n, 2]
        merged = ops.reshape(points, (-1, num_sets * n, 2))
    else:  # [B * S, M, n, 2] -> [B, M, S * n, 2]
        merged = ops.reshape(points, (-1, num_sets, num_masks, n, 2))
        merged = ops.reshape(
            ops.transpose(merged, (0, 2, 1, 3, 4)), (-1, num_masks, num_sets * n, 2)
        )
    values = mask_lib.point_sample(target_masks, merged)  # [B, M, S * n]
    values = ops.reshape(values, (-1, num_masks, num_sets, n))  # [B, M, S, n]
    values = ops.reshape(ops.transpose(values, (0, 2, 1, 3)), (-1, num_masks, n))  # [P, M, n]
    values = ops.cast(values, "float32")
    return ops.stop_gradient(ops.where(ops.isfinite(values), values, 0.0))


def _targets_on_grid(target_masks: Tensor, height: int, width: int, num_sets: int) -> Tensor:
    """Targets `[B, M, H, W]` at the centres of an `h x w` grid, per problem: `[P, M, h * w]`."""
    num_masks = target_masks.shape[1]
    if tuple(target_masks.shape[2:]) == (height, width):
        values = ops.cast(ops.reshape(target_masks, (-1, num_masks, height * width)), "float32")
    else:
        rows = (ops.arange(height, dtype="float32") + 0.5) / height  # [h]
        columns = (ops.arange(width, dtype="float32") + 0.5) / width  # [w]
        grid = ops.stack(
            [ops.tile(columns[None, :], (height, 1)), ops.tile(rows[:, None], (1, width))], axis=-1
        )  # [h, w, 2]: (x, y)
        grid = ops.reshape(grid, (1, height * width, 2))
        grid = ops.broadcast_to(grid, (ops.shape(target_masks)[0], height * width, 2))
        values = ops.cast(mask_lib.point_sample(target_masks, grid), "float32")  # [B, M, h * w]
    values = ops.where(ops.isfinite(values), values, 0.0)
    return ops.stop_gradient(ops.repeat(values, num_sets, axis=0))  # [P, M, h * w]


def _stream(seed: Tensor, salt: int) -> Tensor:
    """One of a call's random streams: its seed `[2]` with the second word salted."""
    return ops.stack([seed[0], ops.bitwise_xor(seed[1], ops.convert_to_tensor(salt, "int32"))])
