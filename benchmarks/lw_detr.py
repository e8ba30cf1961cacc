"""LW-DETR's / RF-DETR's criterion: ours against transformers' `LwDetrForObjectDetectionLoss`, CPU.

The RF-DETR recipe in training: B = 8 images, G = 13 query groups of N = 300 queries
(Q = 3900 per set), S = 4 prediction sets (the 3 decoder layers and the encoder's
proposals), K = 90 classes, at most 60 targets per image (a geometric count of mean 20,
capped at 60; center_xywh boxes in [0, 1]; half of the predicted boxes near a target of
their image, so that matched IoUs are not 0; logits N(-3, 1.5)). Contenders, each the
loss's value and its gradient with respect to the predictions:

- `ours`: `DETRLoss.rf_detr(query_groups=13)` (IA-BCE; focal matching cost 2 / 5 / 2, loss
  1 / 5 / 2; batch normalization, `reduction="sum"`) on `y_true = {"labels": [8, 60] int32
  (-1: padding), "boxes": [8, 60, 4]}` and `y_pred = {"logits": [8, 4, 3900, 90],
  "boxes": [8, 4, 3900, 4]}`; `value_and_grad` compiled as a whole on JAX (`jax.jit`) and
  TensorFlow (`tf.function(jit_compile=True)` with a `GradientTape`), eager with
  `.backward()` on PyTorch. Its value is the mean over the 4 sets; times S it is
  transformers' sum.
- `transformers`: `LwDetrForObjectDetectionLoss` (PyTorch, eager, SciPy's matcher per image
  and group on the host) with an `LwDetrConfig` (class / bbox / giou costs 2 / 5 / 2, loss
  coefficients 1 / 5 / 2, focal_alpha 0.25, group_detr 13, auxiliary_loss, 3 decoder
  layers): the last layer as `logits` / `pred_boxes`, the 3 layers as `outputs_class` /
  `outputs_coord` (the first 2 become auxiliary outputs), the encoder's proposals as
  `enc_outputs_class` / `enc_outputs_coord`, each image's real targets as a
  `{"class_labels", "boxes"}` dict; the returned total, `.backward()` to the predictions.
  These are one leaf tensor per set and kind, split from the same NumPy arrays before the
  clock starts (`outputs_class` a tuple of the 3 layers' leaves, which the function reads as
  it reads the model's stacked `[3, B, Q, K]` tensor, without the copies of a stack). The
  function builds its criterion afresh on each call, an `nn.Module` in training mode, so
  the groups are used (checked at the start).

By default each call takes NumPy inputs and brings its value and gradients to the host as
NumPy arrays (for PyTorch both ways are free). With `--resident` ours takes backend arrays
made before the clock starts and leaves its results there (JAX and TensorFlow).

Rounds are interleaved: each round times every contender of the process, in alternating
order, on a fresh input (seeded by the round); medians over rounds, and the ratio of the
medians (ours / transformers: below 1 means ours is faster). Both criteria are
deterministic here (the same matching, the same terms), so the ratio of their values per
round should be 1 within float32 rounding, and so should the gradients (ours times S
against theirs; the largest difference relative to the largest gradient is printed).

With `--memory`, each contender runs in a process of its own (this script again, with
`--memory-of`): after its imports and the seed-0 input, the resident set size is the
baseline; the peak resident set size (Linux `VmHWM`, reset through `/proc/self/clear_refs`)
is read after the first call (trace, compile, run) and, reset again, over `--memory-steps`
more calls on the same input. Reported: each peak minus the baseline.

    KERAS_BACKEND=jax python benchmarks/lw_detr.py --rounds 7
    KERAS_BACKEND=tensorflow python benchmarks/lw_detr.py --rounds 7
    KERAS_BACKEND=torch python benchmarks/lw_detr.py --rounds 5
    KERAS_BACKEND=jax python benchmarks/lw_detr.py --memory          # peak memory, no timing
    KERAS_BACKEND=jax python benchmarks/lw_detr.py --parts --rounds 3    # our step's parts
    KERAS_BACKEND=jax python benchmarks/lw_detr.py --small --rounds 1    # smoke run

Before each sample the script waits (up to `--quiet-wait` s) until other processes use
less than `--quiet` cores (from /proc/stat), and it prints how many they used during each
sample (see `benchmarks/masks.py`).

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
    to_backend,
    to_host,
    value_and_grad_step,
    versions,
    wait_quiet,
)

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
# images, sets (3 decoder layers + the encoder's proposals), groups, queries per group,
# classes, padded targets; --small shrinks them for a smoke run.
SIZES = {"B": 8, "S": 4, "G": 13, "N": 300, "K": 90, "M": 60, "MEAN": 20}
SMALL = {"B": 2, "S": 4, "G": 3, "N": 20, "K": 10, "M": 8, "MEAN": 4}
LAYERS = 3  # decoder layers: sets 0..2 (the last is set 2), the encoder's proposals set 3
WEIGHTS = {"class": 1.0, "l1": 5.0, "giou": 2.0}
MATCHING = {"class": 2.0, "l1": 5.0, "giou": 2.0}

Data = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
Step = Callable[[Any, Any], tuple[float, Any]]


def inputs(rng: np.random.Generator, sizes: dict[str, int]) -> Data:
    """Padded targets and the predictions of all sets, in our dict layout."""
    b_, s_, q_, k_, m_ = sizes["B"], sizes["S"], sizes["G"] * sizes["N"], sizes["K"], sizes["M"]
    counts = np.minimum(rng.geometric(1 / sizes["MEAN"], size=b_), m_)
    labels = np.full((b_, m_), -1, "int32")
    boxes = np.full((b_, m_, 4), -1.0, "float32")
    for b, count in enumerate(counts):
        labels[b, :count] = rng.integers(0, k_, count)
        centers = rng.uniform(0.15, 0.85, (count, 2))
        sizes_wh = rng.uniform(0.03, 0.3, (count, 2))
        boxes[b, :count] = np.concatenate([centers, sizes_wh], axis=-1)
    pred = np.concatenate(
        [rng.uniform(0.1, 0.9, (b_, s_, q_, 2)), rng.uniform(0.02, 0.4, (b_, s_, q_, 2))], axis=-1
    )
    for b, count in enumerate(counts):  # half of the queries near one of the image's targets
        near = rng.random((s_, q_)) < 0.5
        target = boxes[b, rng.integers(0, count, (s_, q_))]  # [S, Q, 4]
        jitter = np.concatenate(
            [
                target[..., :2] + 0.1 * target[..., 2:] * rng.standard_normal((s_, q_, 2)),
                target[..., 2:] * np.exp(0.2 * rng.standard_normal((s_, q_, 2))),
            ],
            axis=-1,
        )
        pred[b] = np.where(near[..., None], jitter, pred[b])
    logits = rng.normal(-3.0, 1.5, (b_, s_, q_, k_)).astype("float32")
    y_true = {"labels": labels, "boxes": boxes}
    return y_true, {"logits": logits, "boxes": pred.astype("float32")}


def transformers_step(sizes: dict[str, int]) -> Step:
    """transformers' criterion: its total loss and its backward pass."""
    import torch
    from transformers import LwDetrConfig
    from transformers.loss.loss_lw_detr import LwDetrForObjectDetectionLoss, LwDetrImageLoss

    config = LwDetrConfig(
        class_cost=MATCHING["class"],
        bbox_cost=MATCHING["l1"],
        giou_cost=MATCHING["giou"],
        num_labels=sizes["K"],
        focal_alpha=0.25,
        group_detr=sizes["G"],
        auxiliary_loss=True,
        decoder_layers=LAYERS,
        class_loss_coefficient=WEIGHTS["class"],
        bbox_loss_coefficient=WEIGHTS["l1"],
        giou_loss_coefficient=WEIGHTS["giou"],
    )
    # The function builds this criterion on each call: a fresh nn.Module trains, so
    # `forward` uses `group_detr` groups (1 in eval mode).
    assert LwDetrImageLoss(None, sizes["K"], 0.25, [], sizes["G"]).training

    def step(y_true: dict[str, np.ndarray], sets: list[dict[str, np.ndarray]]) -> tuple[float, Any]:
        counts = (y_true["labels"] >= 0).sum(axis=1)
        labels = [
            {
                "class_labels": torch.from_numpy(y_true["labels"][b, :n].astype("int64")),
                "boxes": torch.from_numpy(y_true["boxes"][b, :n]),
            }
            for b, n in enumerate(counts)
        ]
        leaves = [
            {key: torch.from_numpy(value).requires_grad_() for key, value in one.items()}
            for one in sets
        ]
        layers, encoder = leaves[:LAYERS], leaves[LAYERS]
        total, _, _ = LwDetrForObjectDetectionLoss(
            logits=layers[-1]["logits"],
            labels=labels,
            device="cpu",
            pred_boxes=layers[-1]["boxes"],
            config=config,
            outputs_class=tuple(one["logits"] for one in layers),
            outputs_coord=tuple(one["boxes"] for one in layers),
            enc_outputs_class=encoder["logits"],
            enc_outputs_coord=encoder["boxes"],
        )
        total.backward()
        grads = [{key: tensor.grad.numpy() for key, tensor in one.items()} for one in leaves]
        return float(total.item()), grads

    return step


def our_loss(sizes: dict[str, int]) -> Any:
    from hungarian_loss import DETRLoss

    return DETRLoss.rf_detr(query_groups=sizes["G"])


def make_steps(names: list[str], resident: bool, sizes: dict[str, int]) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for name in names:
        if name == "ours":
            steps[name] = value_and_grad_step(our_loss(sizes), BACKEND, resident)
        else:
            steps[name] = transformers_step(sizes)
    return steps


def prepare(name: str, data: Data, resident: bool) -> tuple[Any, Any]:
    """A contender's inputs in its layout, made before the clock starts."""
    y_true, y_pred = data
    if name == "transformers":  # one contiguous array per set, as the model hands them over
        sets = y_pred["logits"].shape[1]
        return y_true, [
            {key: np.ascontiguousarray(value[:, s]) for key, value in y_pred.items()}
            for s in range(sets)
        ]
    if resident:
        return to_backend(y_true, BACKEND), to_backend(y_pred, BACKEND)
    return data


def value_of(name: str, result: Any, sets: int) -> float:
    """The value on transformers' scale: their sum over the sets, our mean times S."""
    value = float(np.asarray(result[0]))
    return value * sets if name == "ours" else value


def gradient_difference(ours: Any, theirs: Any, sets: int) -> float:
    """max |S * our gradient - theirs| / max |theirs|, over logits and boxes of all sets."""
    ours = to_host(ours)
    worst, scale = 0.0, 0.0
    for s, one in enumerate(theirs):
        for key, grad in one.items():
            worst = max(worst, float(np.max(np.abs(sets * ours[key][:, s] - grad))))
            scale = max(scale, float(np.max(np.abs(grad))))
    return worst / scale


def memory_of(name: str, resident: bool, steps: int, sizes: dict[str, int]) -> None:
    """One contender in this process: its peaks above the baseline, as a JSON line."""
    step = make_steps([name], resident, sizes)[name]
    data = prepare(name, inputs(np.random.default_rng(0), sizes), resident)
    memory_of_step(name, step, data, steps)


def memory(names: list[str], resident: bool, steps: int, small: bool) -> None:
    where = "inputs and results on the backend" if resident else "NumPy in, NumPy out"
    print(f"peak memory, backend {BACKEND} (ours), {where}, the seed-0 input; own processes:")
    memory_in_processes(__file__, names, ["--resident"] * resident + ["--small"] * small, steps)


def parts(repeats: int, sizes: dict[str, int]) -> None:
    """JAX: the parts of our step, each compiled on its own (medians of `repeats` calls).

    The parts are what `DETRLoss.rf_detr()` computes, called through its methods on the
    flattened problems (P = B * S * G matching problems of M padded targets and N queries,
    the packed layout `[P, M, 5]` / `[P, N, 4 + K]`); their times do not add up to the
    step's exactly (XLA fuses across them in the step).
    """
    import jax
    import jax.numpy as jnp
    from keras import ops

    from hungarian_loss import linear_sum_assignment
    from hungarian_loss.detr import _classification as classification_terms
    from hungarian_loss.detr import _layout

    assert BACKEND == "jax", "--parts runs on KERAS_BACKEND=jax"
    b_, s_, g_, n_, k_, m_ = (sizes[key] for key in ("B", "S", "G", "N", "K", "M"))
    p_ = b_ * s_ * g_

    def clock(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        fn = jax.jit(fn)
        out = jax.block_until_ready(fn(*args))
        samples = []
        for _ in range(repeats):
            wait_quiet(0.2, 60.0)
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples.append(time.perf_counter() - start)
        print(f"  {name:64s} {statistics.median(samples) * 1e3:8.0f} ms", flush=True)
        return out

    y_true, y_pred = inputs(np.random.default_rng(1), sizes)
    real = int((y_true["labels"] >= 0).sum())
    print(f"parts of our step (JAX, {real} targets in {b_} images, padded to {m_} each):")
    loss = our_loss(sizes)
    t_true = {key: jnp.asarray(value) for key, value in y_true.items()}
    t_pred = {key: jnp.asarray(value) for key, value in y_pred.items()}
    clock(
        "the step: value_and_grad (inputs on the backend)",
        jax.value_and_grad(loss, 1),
        t_true,
        t_pred,
    )
    clock("the loss's value alone", loss, t_true, t_pred)

    def matching(t: Any, p: Any) -> Any:
        problems = loss._problems(t, p)
        return problems.cost, problems.indices

    clock(f"matching: layout, checks, cost, solver [{p_}, {m_}, {n_}]", matching, t_true, t_pred)
    # The flattened problems, packed: row (b * S + s) * G + g is group g of set s of image b.
    packed_true = np.concatenate(
        [y_true["boxes"], y_true["labels"][..., None].astype("float32")], axis=-1
    )
    packed_true = jnp.asarray(np.repeat(packed_true, s_ * g_, axis=0))  # [P, M, 5]
    packed_pred = np.concatenate([y_pred["boxes"], y_pred["logits"]], axis=-1)
    packed_pred = jnp.asarray(packed_pred.reshape(p_, n_, 4 + k_))  # [P, N, 4 + K]
    cost = clock(
        f"  matching cost: focal class, L1, GIoU [{p_}, {m_}, {n_}]",
        lambda t, p: loss._matching_cost(t, p)[0],
        packed_true,
        packed_pred,
    )
    rows = packed_true[:, :, 0] != -1.0
    indices = clock(
        f"  solver [{p_}, {m_}, {n_}]", lambda c, r: linear_sum_assignment(c, r), cost, rows
    )
    boxes_pred = packed_pred[:, :, :4]
    logits = packed_pred[:, :, 4:]
    owners = _layout.query_owners(indices, n_)
    classes = ops.cast(ops.clip(packed_true[:, :, 4], 0, k_ - 1), "int32")
    query_class = _layout.values_at_queries(classes, owners, -1)
    iou = clock(
        f"IoU of the matched pairs (IA-BCE's targets) [{p_}, {m_}]",
        lambda t, p, i: 1.0 - loss.matched_cost(t, p, i, cost=loss._iou),
        packed_true,
        boxes_pred,
        indices,
    )
    query_iou = _layout.values_at_queries(ops.clip(iou, 0.0, 1.0), owners, 0.0)

    def class_total(x: Any, c: Any, q: Any) -> Any:
        return ops.sum(classification_terms.iou_aware_bce(x, c, q, 0.25, 2.0))

    clock(
        f"class term: IA-BCE value_and_grad [{p_}, {n_}, {k_}]",
        jax.value_and_grad(class_total),
        logits,
        query_class,
        query_iou,
    )
    clock(f"  IA-BCE value alone [{p_}, {n_}, {k_}]", class_total, logits, query_class, query_iou)

    def box_total(p: Any, t: Any, i: Any) -> Any:
        l1 = loss.matched_cost(t, p, i, cost=loss._l1)
        box = loss.matched_cost(t, p, i, cost=loss._box)
        return WEIGHTS["l1"] * ops.sum(l1) + WEIGHTS["giou"] * ops.sum(box)

    clock(
        f"box terms: L1 + GIoU of the matched pairs, value_and_grad [{p_}, {m_}]",
        jax.value_and_grad(box_total),
        boxes_pred,
        packed_true,
        indices,
    )
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(
            [jnp.asarray(value) for value in (*y_true.values(), *y_pred.values())]
        )
        samples.append(time.perf_counter() - start)
    print(
        f"  {'NumPy inputs to JAX arrays (outside the compiled step)':64s} "
        f"{statistics.median(samples) * 1e3:8.0f} ms"
    )
    samples = []
    grads = jax.jit(jax.value_and_grad(loss, 1))(t_true, t_pred)
    for _ in range(repeats):
        start = time.perf_counter()
        to_host(grads)
        samples.append(time.perf_counter() - start)
    print(
        f"  {'value and gradients to NumPy (outside the compiled step)':64s} "
        f"{statistics.median(samples) * 1e3:8.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_criterion_arguments(parser, rounds=7)
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args()
    sizes = SMALL if args.small else SIZES
    if args.parts:
        parts(args.rounds, sizes)
        return
    names = [name for name in args.only.split(",") if name]
    if args.memory_of:
        memory_of(args.memory_of, args.resident, args.memory_steps, sizes)
        return
    if args.memory:
        memory(names, args.resident, args.memory_steps, args.small)
        return

    sets = sizes["S"]
    steps = make_steps(names, args.resident, sizes)
    rounds = interleaved_rounds(
        steps,
        lambda seed: inputs(np.random.default_rng(seed), sizes),
        lambda name, data: prepare(name, data, args.resident),
        lambda name, result: value_of(name, result, sets),
        args,
        compare=lambda results: gradient_difference(
            results["ours"][1], results["transformers"][1], sets
        ),
    )
    where = "inputs and results on the backend" if args.resident else "NumPy in, NumPy out"
    who = f"backend {BACKEND}" if "ours" in steps else "transformers alone"
    print(
        f"{who}: B={sizes['B']}, S={sets} sets, G={sizes['G']} groups x N={sizes['N']} "
        f"queries (Q={sizes['G'] * sizes['N']}), K={sizes['K']}, <= {sizes['M']} targets "
        f"(geometric, mean {sizes['MEAN']}); {where}; {args.rounds} rounds"
    )
    print(f"  {versions(BACKEND)}; {os.cpu_count()} CPUs")
    print(f"  targets per round (all images): {rounds.counts}")
    print_rounds(rounds, digits=3)
    values, warm = rounds.values, rounds.warm_values
    if "ours" in steps and "transformers" in steps:
        ratios = [a / b for a, b in zip(values["ours"], values["transformers"], strict=True)]
        print(
            f"  values (their scale: sum over the {sets} sets; ours = mean x {sets}): warm-up "
            f"input ours {warm['ours']:.4f}, transformers "
            f"{warm['transformers']:.4f}; ours / transformers per round: "
            f"{[f'{r:.7f}' for r in ratios]}"
        )
        warm_diff = gradient_difference(
            rounds.warm_results["ours"][1], rounds.warm_results["transformers"][1], sets
        )
        print(
            f"  gradients: max |{sets} x ours - theirs| / max |theirs|: warm-up {warm_diff:.2e}, "
            f"per round {[f'{d:.2e}' for d in rounds.compared]}"
        )
    else:
        for name in steps:
            print(f"  {name} values: warm-up {warm[name]:.4f}, rounds {values[name]}")


if __name__ == "__main__":
    main()
