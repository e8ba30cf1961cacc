r"""The classification terms of `DETRLoss`, one short function per kind.

Each term is computed over every query of a problem (a row of the flattened batch,
`P = B * S` rows) and returns its sum per row `[P]`; `DETRLoss` divides by the counts.
The matching enters as `indices [P, M]` (the query of each target, -1 where unmatched)
and `classes [P, M]` (each target's id, valid where matched).

```
softmax     CE(x_j, c_i) on matched j;  eos_coef * CE(x_j, no object) on the others
focal       alpha_t (1 - p_t)^gamma BCE(x, t),           t = onehot
varifocal   BCE(x, t) * (alpha p^gamma (1 - onehot) + t), t = IoU * onehot
mal         BCE(x, t) * (alpha p^gamma (1 - onehot) + onehot), t = IoU^gamma * onehot
```

with `p = sigmoid(x)` taken without gradient in the varifocal and matchability-aware
weights, and the IoU (of each matched query's box with its target's) without gradient.
"""

from __future__ import annotations

from typing import Any

from keras import ops

Tensor = Any


def query_targets(indices: Tensor, values: Tensor, num_queries: int) -> Tensor:
    """Scatters a value per target to its matched query: `[P, M, C] -> [P, Q, C]`.

    Args:
        indices: int32 `[P, M]`, the query matched to each target, -1 where unmatched.
        values: `[P, M, C]`, what each target gives its query (zeros where unmatched).
        num_queries: Q.

    Returns:
        `[P, Q, C]`: at each matched query its target's value, zeros elsewhere.
    """
    queries = ops.arange(num_queries, dtype="int32")  # [Q]
    hit = ops.cast(ops.equal(indices[:, :, None], queries[None, None, :]), values.dtype)
    return ops.einsum("pmq,pmc->pqc", hit, values)  # [P, Q, C]


def softmax_cross_entropy(
    logits: Tensor, classes: Tensor, indices: Tensor, eos_coef: float
) -> tuple[Tensor, Tensor]:
    """DETR's weighted cross-entropy with a "no object" class (the last logit).

    Args:
        logits: `[P, Q, K + 1]`.
        classes: int32 `[P, M]`, the class of each target, in `[0, K)`.
        indices: int32 `[P, M]`.
        eos_coef: Weight of the "no object" term of unmatched queries.

    Returns:
        The weighted sum `[P]` and the total weight `[P]`
        (`matched + eos_coef * unmatched`).
    """
    num_classes = logits.shape[-1] - 1
    log_probs = ops.log_softmax(logits, axis=-1)  # [P, Q, K + 1]
    one_hot = ops.one_hot(classes, num_classes + 1, dtype=logits.dtype)  # [P, M, K + 1]
    matched = ops.cast(indices >= 0, logits.dtype)[:, :, None]  # [P, M, 1]
    labels = query_targets(indices, one_hot * matched, logits.shape[1])  # [P, Q, K + 1]
    is_matched = ops.sum(labels, axis=-1)  # [P, Q]: 1 for matched queries
    no_object = ops.cast(ops.arange(num_classes + 1) == num_classes, logits.dtype)  # [K + 1]
    labels = labels + (1.0 - is_matched)[:, :, None] * no_object  # [P, Q, K + 1]
    weight = is_matched + eos_coef * (1.0 - is_matched)  # [P, Q]
    cross_entropy = -ops.sum(labels * log_probs, axis=-1)  # [P, Q]
    return ops.sum(weight * cross_entropy, axis=1), ops.sum(weight, axis=1)


def _bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of sigmoid logits with soft targets in `[0, 1]`, stable."""
    return ops.softplus(logits) - logits * targets


def _pow_sigmoid(logits: Tensor, gamma: float) -> Tensor:
    """`sigmoid(logits)^gamma` computed in log space (finite gradients for any gamma >= 0)."""
    return ops.exp(gamma * ops.log_sigmoid(logits))


def focal(logits: Tensor, one_hot: Tensor, alpha: float, gamma: float) -> Tensor:
    """Deformable DETR's sigmoid focal loss, summed over queries and classes `[P]`.

    Args:
        logits: `[P, Q, K]`.
        one_hot: `[P, Q, K]`, 1 at the class of each matched query's target.
        alpha: Weight of the positives (`1 - alpha` for the negatives).
        gamma: Focusing exponent.

    Returns:
        `[P]`.
    """
    # (1 - p_t)^gamma = sigmoid(-x)^gamma where t = 1, sigmoid(x)^gamma where t = 0.
    modulating = _pow_sigmoid(logits * (1.0 - 2.0 * one_hot), gamma)  # [P, Q, K]
    alpha_t = alpha * one_hot + (1.0 - alpha) * (1.0 - one_hot)  # [P, Q, K]
    return ops.sum(alpha_t * modulating * _bce_with_logits(logits, one_hot), axis=(1, 2))


def varifocal(logits: Tensor, one_hot: Tensor, iou: Tensor, alpha: float, gamma: float) -> Tensor:
    """The varifocal loss of RT-DETR and D-FINE, summed over queries and classes `[P]`.

    Args:
        logits: `[P, Q, K]`.
        one_hot: `[P, Q, K]`, 1 at the class of each matched query's target.
        iou: `[P, Q, 1]`, each matched query's IoU with its target (no gradient).
        alpha: Weight of the negatives.
        gamma: Focusing exponent of the negatives.

    Returns:
        `[P]`.
    """
    score = iou * one_hot  # [P, Q, K]: the target score
    p_gamma = ops.stop_gradient(_pow_sigmoid(logits, gamma))  # [P, Q, K]
    weight = alpha * p_gamma * (1.0 - one_hot) + score  # [P, Q, K]
    return ops.sum(weight * _bce_with_logits(logits, score), axis=(1, 2))


def matchability_aware(
    logits: Tensor, one_hot: Tensor, iou: Tensor, alpha: float | None, gamma: float
) -> Tensor:
    """DEIM's matchability-aware loss (MAL), summed over queries and classes `[P]`.

    Args:
        logits: `[P, Q, K]`.
        one_hot: `[P, Q, K]`, 1 at the class of each matched query's target.
        iou: `[P, Q, 1]`, each matched query's IoU with its target (no gradient).
        alpha: Weight of the negatives (`mal_alpha`); `None` for no factor.
        gamma: The exponent of the IoU in the target and of the negatives' weight.

    Returns:
        `[P]`.
    """
    score = _safe_pow(iou, gamma) * one_hot  # [P, Q, K]: IoU^gamma at the true class
    p_gamma = ops.stop_gradient(_pow_sigmoid(logits, gamma))  # [P, Q, K]
    negatives = p_gamma if alpha is None else alpha * p_gamma
    weight = negatives * (1.0 - one_hot) + one_hot  # [P, Q, K]
    return ops.sum(weight * _bce_with_logits(logits, score), axis=(1, 2))


def _safe_pow(x: Tensor, gamma: float) -> Tensor:
    """`x^gamma` for `x` in `[0, 1]` (no gradient flows: the IoU is a constant here)."""
    return ops.where(x > 0.0, ops.power(ops.maximum(x, 1e-30), gamma), 0.0)
