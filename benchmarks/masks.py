"""Mask2Former's criterion: ours against transformers' `Mask2FormerLoss`, forward and backward, CPU.

The Mask2Former recipe on COCO panoptic's sizes: B = 4 images, S = 10 prediction sets (the 9
auxiliary decoder layers and the last), Q = 100 queries, K = 133 classes + "no object",
predicted masks 128 x 128, target masks 512 x 512, at most 30 targets per image (a geometric
count of mean 10, capped at 30; random rectangles and ellipses), P = 12544 points. Contenders,
each the loss's value and its gradient with respect to the predictions:

- `ours`: `DETRLoss.mask2former(num_points=12544)` on `y_true = {"labels": [4, 30],
  "masks": [4, 30, 512, 512]}` (padding rows -1) and `y_pred = {"logits": [4, 10, 100, 134],
  "masks": [4, 10, 100, 128, 128]}`; `value_and_grad` compiled as a whole on JAX (`jax.jit`)
  and TensorFlow (`tf.function(jit_compile=True)` with a `GradientTape`), eager with
  `.backward()` on PyTorch. Its value is the mean over the sets; times S it is transformers'
  sum.
- `transformers`: `Mask2FormerLoss(Mask2FormerConfig(...), weight_dict)` (PyTorch, eager,
  SciPy's matcher on the host), the last set as `masks_queries_logits` /
  `class_queries_logits` and the other 9 as `auxiliary_predictions`, each image's real
  targets as its `mask_labels` / `class_labels`; the returned losses weighted as
  `Mask2FormerForUniversalSegmentation.get_loss_dict` weights them (class 2, mask 5, dice 5),
  summed, `.backward()` to the predictions. These are one leaf tensor per set and kind, as
  the model hands them over, split from the same NumPy arrays before the clock starts.

By default each call takes NumPy inputs and brings its value and gradients to the host as
NumPy arrays (for PyTorch both ways are free: `torch.from_numpy` and `.numpy()` share the
memory). With `--resident` ours takes backend arrays made before the clock starts and leaves
its results there (JAX and TensorFlow; transformers' contender is unchanged).

Rounds are interleaved: each round times every contender of the process, in alternating
order, on a fresh input (seeded by the round); medians over rounds, and the ratio of the
medians (ours / transformers: below 1 means ours is faster). The two values cannot be equal
(both draw random points), so their ratio per round is printed as a rough check.

With `--memory`, each contender runs in a process of its own (this script again, with
`--memory-of`): after its imports and the seed-0 input, the resident set size is the baseline;
the peak resident set size (Linux `VmHWM`, reset through `/proc/self/clear_refs`) is read
after the first call (trace, compile, run) and, reset again, over `--memory-steps` more calls
on the same input. Reported: each peak minus the baseline.

    python benchmarks/masks.py --only transformers --rounds 7      # transformers alone
    KERAS_BACKEND=jax python benchmarks/masks.py --rounds 9
    KERAS_BACKEND=tensorflow python benchmarks/masks.py --rounds 9
    KERAS_BACKEND=torch python benchmarks/masks.py --rounds 9
    KERAS_BACKEND=jax python benchmarks/masks.py --memory         # peak memory, no timing
    KERAS_BACKEND=jax python benchmarks/masks.py --parts --rounds 3   # our step's parts

Before each sample the script waits (up to `--quiet-wait` s) until other processes use
less than `--quiet` cores (from /proc/stat), and it prints how many they used during each
sample: transformers' eager PyTorch (OpenMP threads) slows down several times when another
process takes a core, the compiled XLA steps much less, so samples taken beside another
job say little about the ratio.

transformers is not a dependency of the package; `pip install -e .[bench]` installs it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from common import (
    add_criterion_arguments,
    interleaved_rounds,
    memory_in_processes,
    memory_of_step,
    print_rounds,
    value_and_grad_step,
    versions,
    wait_quiet,
)
from common import (
    to_backend as common_to_backend,
)

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
B, S, Q, K, M = 4, 10, 100, 133, 30  # images, sets, queries, classes, padded targets
H = W = 512  # target masks
h = w = 128  # predicted masks
P = 12544  # points
MEAN_TARGETS = 10
MASK_LOGIT_SCALE = 3.0
WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}

Data = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
Step = Callable[[Any, Any], tuple[float, Any]]


def inputs(rng: np.random.Generator, full: bool = False) -> Data:
    """Padded targets and predictions; `full`: 30 targets in every image."""
    counts = np.full(B, M) if full else np.minimum(rng.geometric(1 / MEAN_TARGETS, size=B), M)
    labels = np.full((B, M), -1, "int32")
    masks = np.zeros((B, M, H, W), "float32")
    ys = np.arange(H, dtype="float32")[:, None] + 0.5
    xs = np.arange(W, dtype="float32")[None, :] + 0.5
    for b, count in enumerate(counts):
        labels[b, :count] = rng.integers(0, K, count)
        for m in range(count):
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            ry, rx = rng.uniform(H / 64, H / 4), rng.uniform(W / 64, W / 4)
            if rng.random() < 0.5:
                masks[b, m] = (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)
            else:
                masks[b, m] = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
    logits = rng.standard_normal((B, S, Q, K + 1), dtype="float32")
    mask_logits = rng.standard_normal((B, S, Q, h, w), dtype="float32")
    mask_logits *= MASK_LOGIT_SCALE
    return {"labels": labels, "masks": masks}, {"logits": logits, "masks": mask_logits}


def transformers_step() -> Step:
    """transformers' criterion: the sum of its weighted losses and its backward pass."""
    import torch
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = Mask2FormerConfig(
        num_labels=K,
        train_num_points=P,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        class_weight=WEIGHTS["loss_cross_entropy"],
        mask_weight=WEIGHTS["loss_mask"],
        dice_weight=WEIGHTS["loss_dice"],
        no_object_weight=0.1,
    )
    criterion = Mask2FormerLoss(config=config, weight_dict=dict(WEIGHTS))

    def step(y_true: dict[str, np.ndarray], sets: list[dict[str, np.ndarray]]) -> tuple[float, Any]:
        counts = (y_true["labels"] >= 0).sum(axis=1)
        class_labels = [
            torch.from_numpy(y_true["labels"][b, :n].astype("int64")) for b, n in enumerate(counts)
        ]
        mask_labels = [torch.from_numpy(y_true["masks"][b, :n]) for b, n in enumerate(counts)]
        leaves = [
            {key: torch.from_numpy(value).requires_grad_() for key, value in one.items()}
            for one in sets
        ]
        auxiliary = [
            {"masks_queries_logits": one["masks"], "class_queries_logits": one["logits"]}
            for one in leaves[:-1]
        ]
        losses = criterion(
            masks_queries_logits=leaves[-1]["masks"],
            class_queries_logits=leaves[-1]["logits"],
            mask_labels=mask_labels,
            class_labels=class_labels,
            auxiliary_predictions=auxiliary,
        )
        # As Mask2FormerForUniversalSegmentation.get_loss_dict: "loss_dice_3" takes "loss_dice"'s.
        total = sum(
            value * weight
            for key, value in losses.items()
            for name, weight in WEIGHTS.items()
            if name in key
        )
        total.backward()
        grads = [{key: tensor.grad.numpy() for key, tensor in one.items()} for one in leaves]
        return float(total.item()), grads

    return step


def ours_step(resident: bool) -> Step:
    """Our criterion's value and gradient, compiled as a whole (eager on PyTorch)."""
    from hungarian_loss import DETRLoss

    return value_and_grad_step(DETRLoss.mask2former(num_points=P), BACKEND, resident)


def to_backend(tree: dict[str, np.ndarray]) -> dict[str, Any]:
    """Backend arrays of the inputs (for `--resident`)."""
    return common_to_backend(tree, BACKEND)


def make_steps(names: list[str], resident: bool) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for name in names:
        steps[name] = ours_step(resident) if name == "ours" else transformers_step()
    return steps


def prepare(name: str, data: Data, resident: bool) -> tuple[Any, Any]:
    """A contender's inputs in its layout, made before the clock starts."""
    if name == "transformers":
        # One tensor per set, as the model hands them over (not views of one stacked leaf,
        # whose backward would fill a zero gradient of all S sets once per set).
        y_true, y_pred = data
        return y_true, [
            {key: np.ascontiguousarray(value[:, s]) for key, value in y_pred.items()}
            for s in range(S)
        ]
    if resident:
        return to_backend(data[0]), to_backend(data[1])
    return data


def value_of(name: str, result: Any) -> float:
    """The value on transformers' scale: their sum over the sets, our mean times S."""
    value = float(np.asarray(result[0]))
    return value * S if name == "ours" else value


def memory_of(name: str, resident: bool, steps: int, full: bool) -> None:
    """One contender in this process: its peaks above the baseline, as a JSON line."""
    step = make_steps([name], resident)[name]
    data = prepare(name, inputs(np.random.default_rng(0), full=full), resident)
    memory_of_step(name, step, data, steps)


def memory(names: list[str], resident: bool, steps: int, full: bool) -> None:
    where = "inputs and results on the backend" if resident else "NumPy in, NumPy out"
    targets = "30 targets in every image" if full else "the seed-0 input"
    print(f"peak memory, backend {BACKEND} (ours), {where}, {targets}; each in its own process:")
    memory_in_processes(__file__, names, ["--resident"] * resident + ["--full"] * full, steps)


def parts(repeats: int) -> None:
    """JAX: the parts of our step, each compiled on its own (medians of `repeats` calls).

    The parts are what `DETRLoss.mask2former()` computes, called through `MaskTerms` and
    `hungarian_loss.masks` on the shapes of the step (P = B * S = 40 matching problems,
    30 padded targets each); their times do not add up to the step's exactly (XLA fuses
    across them in the step).
    """
    import jax
    import jax.numpy as jnp
    from keras import ops

    from hungarian_loss import DETRLoss, linear_sum_assignment
    from hungarian_loss import masks as mask_lib

    assert BACKEND == "jax", "--parts runs on KERAS_BACKEND=jax"

    def clock(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        fn = jax.jit(fn)
        out = jax.block_until_ready(fn(*args))
        samples = []
        for _ in range(repeats):
            wait_quiet(0.2, 60.0)
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples.append(time.perf_counter() - start)
        print(f"  {name:62s} {statistics.median(samples) * 1e3:8.0f} ms", flush=True)
        return out

    y_true, y_pred = inputs(np.random.default_rng(1))
    real = int((y_true["labels"] >= 0).sum())
    print(f"parts of our step (JAX, {real} targets in {B} images, padded to {M} each):")
    loss = DETRLoss.mask2former(num_points=P)
    terms = loss.masks
    t_true = {key: jnp.asarray(value) for key, value in y_true.items()}
    t_pred = {key: jnp.asarray(value) for key, value in y_pred.items()}
    pred_masks = t_pred["masks"].reshape(B * S, Q, h, w)
    target_masks = t_true["masks"]
    seed = jnp.asarray([1, 2], "int32")
    clock(
        "the step: value_and_grad (inputs on the backend)",
        jax.value_and_grad(loss, 1),
        t_true,
        t_pred,
    )
    clock("the loss's value alone", loss, t_true, t_pred)
    cost = clock(
        "matching cost: points, reads, pairwise BCE + dice [40, 30, 100]",
        lambda p, t, s: terms.matching_cost(p, t, S, s),
        pred_masks,
        target_masks,
        seed,
    )
    points = clock(
        "  uniform points [40, 12544, 2]", lambda s: mask_lib.uniform_points(B * S, P, seed=s), seed
    )
    read = clock(
        "  predictions read at them [40, 100, 12544]", mask_lib.point_sample, pred_masks, points
    )
    merged = points.reshape(B, S * P, 2)
    clock("  targets read at them [4, 30, 10 x 12544]", mask_lib.point_sample, target_masks, merged)
    targets = jnp.repeat(
        mask_lib.point_sample(target_masks, merged)
        .reshape(B, M, S, P)
        .transpose(0, 2, 1, 3)
        .reshape(B * S, M, P),
        1,
        axis=0,
    )
    clock(
        "  pairwise sigmoid BCE (2 softplus passes, 2 products)",
        mask_lib.pairwise_sigmoid_bce,
        read,
        targets,
    )
    clock("  pairwise dice (1 sigmoid pass, 1 product)", mask_lib.pairwise_dice, read, targets)
    counts = (y_true["labels"] >= 0).sum(axis=1)
    rows = jnp.asarray(np.repeat(np.arange(M)[None] < counts[:, None], S, axis=0))
    indices = clock("solver [40, 30, 100]", linear_sum_assignment, cost, rows)
    matched = jnp.where(indices >= 0, indices, 0)
    chosen = clock(
        "matched masks gathered [40, 30, 128, 128]",
        lambda p, i: ops.take_along_axis(p, i[:, :, None, None], axis=1),
        pred_masks,
        matched,
    )
    loss_points = clock(
        "importance points [40, 30, 12544, 2] (all 1200 rows, padding too)",
        lambda c, s: mask_lib.importance_points(c, P, 3.0, 0.75, seed=s),
        chosen,
        seed,
    )
    candidates = int(3.0 * P)
    draws = clock(
        f"  the draw: uniform [40, 30, {candidates} + {P - int(0.75 * P)}, 2]",
        lambda s: mask_lib.uniform_points(
            B * S * M, candidates + P - int(0.75 * P), seed=s
        ).reshape(B * S, M, -1, 2),
        seed,
    )
    candidate_logits = clock(
        f"  candidates read [40, 30, {candidates}]",
        mask_lib.point_sample,
        chosen,
        draws[:, :, :candidates],
    )
    clock(
        f"  the choice: bisection select, k = {int(0.75 * P)} of {candidates}, 1200 rows",
        lambda x: mask_lib._smallest(ops.reshape(ops.abs(x), (-1, candidates)), int(0.75 * P)),
        candidate_logits,
    )
    clock(
        f"  (before: top_k, k = {int(0.75 * P)} of {candidates}, 1200 rows)",
        lambda x: ops.top_k(-ops.abs(x), k=int(0.75 * P)),
        candidate_logits,
    )

    def pair_total(p: Any, t: Any, i: Any, s: Any) -> Any:
        mask, dice = terms.pair_sums(p, t, i, S, s)
        return ops.sum(mask) + ops.sum(dice)

    clock(
        "loss's mask terms: pair_sums value_and_grad",
        jax.value_and_grad(pair_total),
        pred_masks,
        target_masks,
        indices,
        seed,
    )
    clock(
        "  reads at the loss points, predictions and targets, forward",
        lambda c, t, x: (
            mask_lib.point_sample(c, x),
            mask_lib.point_sample(
                t, x.reshape(B, S, M, P, 2).transpose(0, 2, 1, 3, 4).reshape(B, M, S * P, 2)
            ),
        ),
        chosen,
        target_masks,
        loss_points,
    )
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(
            [jnp.asarray(value) for value in (*y_true.values(), *y_pred.values())]
        )
        samples.append(time.perf_counter() - start)
    print(
        f"  {'NumPy inputs to JAX arrays (outside the compiled step)':62s} "
        f"{statistics.median(samples) * 1e3:8.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_criterion_arguments(parser, rounds=9)
    parser.add_argument("--full", action="store_true", help="30 targets in every image")
    args = parser.parse_args()
    if args.parts:
        parts(args.rounds)
        return
    names = [name for name in args.only.split(",") if name]
    if args.memory_of:
        memory_of(args.memory_of, args.resident, args.memory_steps, args.full)
        return
    if args.memory:
        memory(names, args.resident, args.memory_steps, args.full)
        return

    steps = make_steps(names, args.resident)
    rounds = interleaved_rounds(
        steps,
        lambda seed: inputs(np.random.default_rng(seed), full=args.full),
        lambda name, data: prepare(name, data, args.resident),
        value_of,
        args,
    )
    where = "inputs and results on the backend" if args.resident else "NumPy in, NumPy out"
    who = f"backend {BACKEND}" if "ours" in steps else "transformers alone"
    print(
        f"{who}: B={B}, S={S} sets, Q={Q}, K={K}, masks {h}x{w} (predicted) and "
        f"{H}x{W} (targets), <= {M} targets, P={P}; {where}; {args.rounds} rounds"
    )
    print(f"  {versions(BACKEND)}; {os.cpu_count()} CPUs")
    print(f"  targets per round (all images): {rounds.counts}")
    print_rounds(rounds)
    values, warm = rounds.values, rounds.warm_values
    if "ours" in steps and "transformers" in steps:
        ratios = [a / b for a, b in zip(values["ours"], values["transformers"], strict=True)]
        print(
            f"  values (their scale: sum over the {S} sets; ours = mean x {S}): warm-up input "
            f"ours {warm['ours']:.3f}, transformers {warm['transformers']:.3f}; "
            f"ours / transformers per round: median {statistics.median(ratios):.4f}, "
            f"min {min(ratios):.4f}, max {max(ratios):.4f}"
        )
    else:
        for name in steps:
            print(f"  {name} values: warm-up {warm[name]:.3f}, rounds {values[name]}")


if __name__ == "__main__":
    main()
