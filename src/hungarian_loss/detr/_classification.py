r"""The classification terms of `DETRLoss`, one short function per kind.

Each term is computed over every query and class of a problem (a row of the flattened
batch, `P = B * S` rows) and returns its sum per row `[P]`; `DETRLoss` divides by the
counts. The matching enters per query: `query_class [P, Q]`, the class of the target a
query is assigned to (-1 for none), and for the IoU-aware kinds `query_iou [P, Q]`, the
IoU of its box with that target's (0 for none, no gradient).

```
softmax     CE(x_j, c_i) on matched j;  eos_coef * CE(x_j, no object) on the others
focal       alpha_t (1 - p_t)^gamma BCE(x, t),           t = onehot
varifocal   BCE(x, t) * (alpha p^gamma (1 - onehot) + t), t = IoU * onehot
mal         BCE(x, t) * (alpha p^gamma (1 - onehot) + onehot), t = IoU^gamma * onehot
ia_bce      BCE(x, t) * (p^gamma (1 - onehot) + onehot),
            t = max(p^alpha IoU^(1 - alpha), 0.01) * onehot
```

with `p = sigmoid(x)` taken without gradient in the varifocal and matchability-aware
weights and in IA-BCE's target (its negatives' `p^gamma` keeps it, as the focal loss's).

Speed. With denoising groups these terms cover `[B * S, Q, K]` logits (RT-DETR: 48 x 900
x 80 floats, 14 MB), and on the CPU their time is passes over memory. The sigmoid kinds
therefore have a hand-written gradient (`_fused_sigmoid_term`): in the forward pass, one
reduction reads the logits for the values and one elementwise pass writes the gradients,
each from the logits alone, where automatic differentiation kept the sigmoid, the
softplus and the weight as tensors of their own. The value's reduction computes only the
negatives' term, with the positives masked out by a bool tensor made by a scatter; the
positives' term comes from their gathered logits, `[P, Q]`. The gradient's pass chooses
between the two by a one-hot compared inside it (`benchmarks/results/detr_family.md`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

Tensor = Any
# (x, p = sigmoid(x), softplus(x), t) -> value or gradient, elementwise; t is the target
# score [P, Q, 1] of a positive.
_Elementwise = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def softmax_cross_entropy(
    logits: Tensor, query_class: Tensor, eos_coef: float
) -> tuple[Tensor, Tensor]:
    """DETR's weighted cross-entropy with a "no object" class (the last logit).

    Args:
        logits: `[P, Q, K + 1]`.
        query_class: int32 `[P, Q]`, the class of each query's target in `[0, K)`, -1
            for a query without one ("no object").
        eos_coef: Weight of the "no object" term of unmatched queries.

    Returns:
        The weighted sum `[P]` and the total weight `[P]`
        (`matched + eos_coef * unmatched`).
    """
    no_object = logits.shape[-1] - 1
    matched = query_class >= 0  # [P, Q]
    label = ops.where(matched, query_class, no_object)  # [P, Q]
    log_probs = ops.log_softmax(logits, axis=-1)  # [P, Q, K + 1]
    picked = ops.sum(ops.where(_one_hot(label, no_object + 1), log_probs, 0.0), axis=-1)
    weight = ops.cast(ops.where(matched, 1.0, eos_coef), picked.dtype)  # [P, Q]
    return -ops.sum(weight * picked, axis=1), ops.sum(weight, axis=1)


def focal(logits: Tensor, query_class: Tensor, alpha: float, gamma: float) -> Tensor:
    """Deformable DETR's sigmoid focal loss, summed over queries and classes `[P]`.

    Args:
        logits: `[P, Q, K]`.
        query_class: int32 `[P, Q]`, the class of each query's target (-1: none).
        alpha: Weight of the positives (`1 - alpha` for the negatives).
        gamma: Focusing exponent.

    Returns:
        `[P]`.
    """

    def positive(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return alpha * _power(1.0 - p, gamma, -softplus) * (softplus - x)  # BCE(x, 1)

    def positive_grad(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        modulating = alpha * _power(1.0 - p, gamma, -softplus)
        return -modulating * (gamma * p * (softplus - x) + (1.0 - p))

    zeros = ops.zeros_like(ops.cast(query_class, logits.dtype))
    negative = _focal_negative(1.0 - alpha, gamma)
    return _fused_sigmoid_term(logits, query_class, zeros, negative, (positive, positive_grad))


def varifocal(
    logits: Tensor, query_class: Tensor, query_iou: Tensor, alpha: float, gamma: float
) -> Tensor:
    """The varifocal loss of RT-DETR and D-FINE, summed over queries and classes `[P]`.

    Args:
        logits: `[P, Q, K]`.
        query_class: int32 `[P, Q]`, the class of each query's target (-1: none).
        query_iou: `[P, Q]`, each matched query's IoU with its target (no gradient).
        alpha: Weight of the negatives.
        gamma: Focusing exponent of the negatives.

    Returns:
        `[P]`.
    """

    def positive(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return t * (softplus - x * t)  # weight t, target t = IoU

    def positive_grad(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return t * (p - t)

    negative = _constant_weight_negative(alpha, gamma)
    return _fused_sigmoid_term(logits, query_class, query_iou, negative, (positive, positive_grad))


def matchability_aware(
    logits: Tensor,
    query_class: Tensor,
    query_iou: Tensor,
    alpha: float | None,
    gamma: float,
) -> Tensor:
    """DEIM's matchability-aware loss (MAL), summed over queries and classes `[P]`.

    Args:
        logits: `[P, Q, K]`.
        query_class: int32 `[P, Q]`, the class of each query's target (-1: none).
        query_iou: `[P, Q]`, each matched query's IoU with its target (no gradient).
        alpha: Weight of the negatives (`mal_alpha`); `None` for no factor.
        gamma: The exponent of the IoU in the target and of the negatives' weight.

    Returns:
        `[P]`.
    """
    factor = 1.0 if alpha is None else alpha
    score = ops.where(
        query_iou > 0.0, ops.power(ops.maximum(query_iou, 1e-30), gamma), 0.0
    )  # [P, Q]: IoU^gamma, the positives' target

    negative = _constant_weight_negative(factor, gamma)
    return _fused_sigmoid_term(logits, query_class, score, negative, _soft_target_positive())


def iou_aware_bce(
    logits: Tensor, query_class: Tensor, query_iou: Tensor, alpha: float, gamma: float
) -> Tensor:
    """LW-DETR's and RF-DETR's IoU-aware BCE (IA-BCE), summed over queries and classes `[P]`.

    At each matched query's class, `BCE(x, t)` with the target
    `t = max(sigmoid(x)^alpha * IoU^(1 - alpha), 0.01)` (no gradient through t); at
    every other logit `p^gamma BCE(x, 0)`, the gradient flowing through `p^gamma` too.
    `BCE(x, t) = softplus(x) - t x` and `BCE(x, 0) = softplus(x)`: finite for every
    finite logit (the reference's `-t log p - (1 - t) log(1 - p)` is `inf` or `NaN`
    once `p` rounds to 0 or 1).

    Args:
        logits: `[P, Q, K]`.
        query_class: int32 `[P, Q]`, the class of each query's target (-1: none).
        query_iou: `[P, Q]`, each matched query's IoU with its target (no gradient).
        alpha: The exponent of the probability in the target (0.25).
        gamma: Focusing exponent of the negatives (2).

    Returns:
        `[P]`.
    """
    x_class = ops.take_along_axis(logits, ops.maximum(query_class, 0)[:, :, None], axis=2)
    log_p = -_sigmoid_and_softplus(-x_class[:, :, 0])[1]  # [P, Q]: log sigmoid(x), <= 0
    log_iou = ops.log(ops.maximum(query_iou, 1e-30))  # [P, Q]: IoU 0 gives the floor 0.01
    quality = ops.exp(alpha * log_p + (1.0 - alpha) * log_iou)
    score = ops.stop_gradient(ops.maximum(quality, 0.01))  # [P, Q]
    negative = _focal_negative(1.0, gamma)
    return _fused_sigmoid_term(logits, query_class, score, negative, _soft_target_positive())


def _focal_negative(factor: float, gamma: float) -> tuple[_Elementwise, _Elementwise]:
    """`factor p^gamma BCE(x, 0)`, value and gradient, the gradient through `p^gamma` too.

    The negatives of the focal loss (`factor = 1 - alpha`) and of IA-BCE (1).
    """

    def value(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return factor * _power(p, gamma, x - softplus) * softplus

    def gradient(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        modulating = factor * _power(p, gamma, x - softplus)
        return modulating * (gamma * (1.0 - p) * softplus + p)

    return value, gradient


def _soft_target_positive() -> tuple[_Elementwise, _Elementwise]:
    """`BCE(x, t) = softplus(x) - t x` at a positive of target score t, and `p - t`.

    The positives of MAL (t = IoU^gamma) and of IA-BCE (its quality).
    """

    def value(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return softplus - x * t

    def gradient(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return p - t

    return value, gradient


def _constant_weight_negative(factor: float, gamma: float) -> tuple[_Elementwise, _Elementwise]:
    """The negatives of the varifocal and MAL terms: `factor p^gamma BCE(x, 0)`, value and gradient.

    `p^gamma` is a weight without gradient, so the derivative is `factor p^gamma p`.
    """

    def value(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return factor * _power(p, gamma, x - softplus) * softplus

    def gradient(x: Tensor, p: Tensor, softplus: Tensor, t: Tensor) -> Tensor:
        return factor * _power(p, gamma, x - softplus) * p

    return value, gradient


def _fused_sigmoid_term(
    logits: Tensor,
    query_class: Tensor,
    score: Tensor,
    negative: tuple[_Elementwise, _Elementwise],
    positive: tuple[_Elementwise, _Elementwise],
) -> Tensor:
    """`sum_{q, k}` of `positive` at each query's class, `negative` elsewhere: `[P]`.

    Each of `negative` and `positive` is `(value, gradient)`: the elementwise loss of a
    logit, and its derivative with respect to the logit. The gradient is computed in
    the forward pass, beside the value, and the backward pass scales it by the upstream
    gradient of each problem.

    The value is the negatives' sum over every logit but the positives, plus the
    positives' sum over their gathered logits: nothing is added and then taken out, so
    a small total keeps float32 precision (a confident negative's term is about 20 at a
    logit of +30; subtracting it again would leave noise of 1e-6 in a focal total of
    1e-7).
    """
    num_classes = logits.shape[-1]
    target = score[:, :, None]  # [P, Q, 1]

    @ops.custom_gradient
    def term(x: Tensor) -> tuple[Tensor, Callable[..., Tensor]]:
        # The positives are masked out of the value's pass by a tensor made before it
        # (a scatter): with a one-hot compared inside the pass, every logit computed
        # both values, and the pass took twice as long.
        p_value, softplus = _sigmoid_and_softplus(x)
        negative_values = negative[0](x, p_value, softplus, target)
        keep = _negative_logits(query_class, num_classes)  # [P, Q, K]
        negatives = ops.sum(ops.where(keep, negative_values, 0.0), axis=(1, 2))
        x_class = ops.take_along_axis(x, ops.maximum(query_class, 0)[:, :, None], axis=2)
        positive_values = positive[0](x_class, *_sigmoid_and_softplus(x_class), target)
        has_class = query_class >= 0  # [P, Q]
        positives = ops.sum(ops.where(has_class, positive_values[:, :, 0], 0.0), axis=1)
        is_positive = _one_hot(query_class, num_classes)  # [P, Q, K]
        # The gradient takes its sigmoid from another formula than the value's, so
        # that XLA computes each inside its own pass rather than keeping one as a
        # tensor for both (a pass fewer).
        p = ops.sigmoid(x)
        gradient = ops.where(
            is_positive, positive[1](x, p, softplus, target), negative[1](x, p, softplus, target)
        )

        def grad(*args: Tensor, upstream: Tensor = None) -> Tensor:
            if upstream is None:  # TensorFlow and JAX pass it by position, torch by name
                (upstream,) = args
            return upstream[:, None, None] * gradient

        return negatives + positives, grad

    return term(logits)


def _sigmoid_and_softplus(x: Tensor) -> tuple[Tensor, Tensor]:
    """`sigmoid(x)` and `softplus(x)` from one exponential, `e = exp(-|x|)` in `(0, 1]`."""
    e = ops.exp(-ops.abs(x))
    inverse = 1.0 / (1.0 + e)  # sigmoid(|x|)
    return ops.where(x >= 0.0, inverse, e * inverse), ops.relu(x) + _log1p_unit(e)


def _negative_logits(query_class: Tensor, num_classes: int) -> Tensor:
    """A bool `[P, Q, K]`, False at each query's class, by a scatter (a tensor of its own)."""
    rows, queries = ops.shape(query_class)  # the rows may be dynamic (a tensor)
    flat = ops.reshape(query_class, (-1,))  # [P * Q]
    index = ops.stack(
        [ops.arange(ops.shape(flat)[0], dtype="int32"), ops.maximum(flat, 0)], axis=-1
    )  # [P * Q, 2]: (query, class)
    keep = ops.scatter_update(
        ops.ones((rows * queries, num_classes), dtype="bool"), index, flat < 0
    )
    return ops.reshape(keep, (rows, queries, num_classes))


# log(1 + e) = e * r(e) on [0, 1], r a polynomial of degree 8 fitted to log1p(e) / e for
# the least relative error (at most 2.2e-7, 2.4 ulps, over float32 inputs in [0, 1]).
_LOG1P_UNIT = (
    0.99999994,
    -0.49999493,
    0.33319098,
    -0.24842982,
    0.19106007,
    -0.13663246,
    0.07822596,
    -0.029505244,
    0.0052326955,
)


def _log1p_unit(e: Tensor) -> Tensor:
    """`log(1 + e)` for `e` in `[0, 1]`, elementwise, to float32 rounding (2.4 ulps at most).

    Eight multiply-adds. On the CPU, XLA's `log` was about a quarter of the sigmoid
    terms' value pass (6.8 ms with it, 5.1 ms with the polynomial, over RT-DETR's
    `[48, 900, 80]` logits; `benchmarks/results/detr_family.md`).
    """
    r = _LOG1P_UNIT[-1] * e + _LOG1P_UNIT[-2]
    for coefficient in reversed(_LOG1P_UNIT[:-2]):
        r = r * e + coefficient
    return e * r


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """A bool `[P, Q, C]`: True at each query's label (none where it is outside `[0, C)`)."""
    return ops.equal(ops.arange(num_classes, dtype="int32"), labels[:, :, None])


def _power(p: Tensor, gamma: float, log_p: Tensor) -> Tensor:
    """`p^gamma` for `p` in `[0, 1]`, with `log_p = log(p)` given for a gamma that is not whole.

    Multiplications for a whole `gamma` (and a square root for a half one), else
    `exp(gamma * log_p)`: no `0^gamma` with a non-finite derivative anywhere.
    """
    if float(gamma).is_integer():
        return ops.power(p, int(gamma))
    if float(2 * gamma).is_integer():
        return ops.power(p, int(gamma)) * ops.sqrt(p)
    return ops.exp(gamma * log_p)
