"""RT-DETR's criterion against DETR's on the same queries: forward and backward, compiled, CPU.

The case of issue 16: B = 8 images x 6 decoder layers, 300 matched queries, at most 60 targets
per image (geometric count, mean 8, padded with -1 rows to 60), K = 80 classes. Contenders,
each `value_and_grad` of the summed loss with respect to the predictions, compiled as a whole
(`jax.jit` or `tf.function(jit_compile=True)`), the result brought to the host:

- `detr`: `DETRLoss.detr()` (softmax over K + 1 logits, matching and loss 1/5/2) on
  `y_pred [8, 6, 300, 4 + 81]`;
- `rt_detr`: `DETRLoss.rt_detr(denoising_groups=5)` (varifocal, matching 2/5/2) on
  `y_pred [8, 6, 5 * 2 * 60 + 300, 4 + 80]`: the same 300 queries behind 600 denoising ones.

Rounds are interleaved (each round times both, in alternating order, on a fresh input);
medians over rounds. With `--resident`, the inputs are backend arrays made before the clock
starts and the results stay there, as in a training step where the predictions come from the
model and the gradient goes back to it; by default each call converts NumPy inputs and
brings its results to the host. Run it once per backend:

    KERAS_BACKEND=jax python benchmarks/detr_family.py --rounds 15
    KERAS_BACKEND=jax python benchmarks/detr_family.py --rounds 15 --resident
    KERAS_BACKEND=tensorflow python benchmarks/detr_family.py --rounds 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
from common import value_and_grad_step

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
B, S, N, T, K, G = 8, 6, 300, 60, 80, 5


def inputs(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    counts = np.minimum(rng.geometric(1 / 8, size=B), T)
    y_true = np.full((B, T, 5), -1.0, "float32")
    for b, count in enumerate(counts):
        y_true[b, :count, :2] = rng.uniform(0.1, 0.9, (count, 2))
        y_true[b, :count, 2:4] = rng.uniform(0.02, 0.4, (count, 2))
        y_true[b, :count, 4] = rng.integers(0, K, count)
    queries = G * 2 * T + N
    boxes = np.concatenate(
        [rng.uniform(0.05, 0.95, (B, S, queries, 2)), rng.uniform(0.02, 0.5, (B, S, queries, 2))],
        axis=-1,
    )
    logits = rng.normal(size=(B, S, queries, K + 1))
    y_pred = np.concatenate([boxes, logits], axis=-1).astype("float32")
    return {
        "detr": (y_true, y_pred[:, :, G * 2 * T :]),  # the 300 queries, K + 1 logits
        "rt_detr": (y_true, y_pred[..., : 4 + K]),  # denoising + the 300 queries, K logits
    }


def value_and_grad(loss: Any, resident: bool) -> Any:
    """The compiled step; it brings its results to the host unless `resident`."""
    return value_and_grad_step(loss, BACKEND, resident)


def to_backend(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[Any, Any]]:
    """The inputs as contiguous arrays of the backend, made before the clock starts."""
    if BACKEND == "jax":
        import jax.numpy as jnp

        return {name: (jnp.asarray(t), jnp.asarray(p)) for name, (t, p) in data.items()}
    import tensorflow as tf

    return {name: (tf.constant(t), tf.constant(p)) for name, (t, p) in data.items()}


def main() -> None:
    from hungarian_loss import DETRLoss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3, help="calls per sample (their mean)")
    parser.add_argument(
        "--resident",
        action="store_true",
        help="inputs made backend arrays before timing and results left there, as in a "
        "training step (by default each call converts its NumPy inputs and brings its "
        "results to the host)",
    )
    args = parser.parse_args()
    steps = {
        "detr": value_and_grad(DETRLoss.detr(), args.resident),
        "rt_detr": value_and_grad(DETRLoss.rt_detr(denoising_groups=G), args.resident),
    }
    prepare = to_backend if args.resident else (lambda data: data)
    first = {}
    data = prepare(inputs(np.random.default_rng(0)))
    for name, step in steps.items():
        start = time.perf_counter()
        value, grad = step(*data[name])
        first[name] = time.perf_counter() - start
        assert np.isfinite(value) and np.all(np.isfinite(grad)), name
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds):
        data = prepare(inputs(np.random.default_rng(round_ + 1)))
        order = list(steps) if round_ % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(args.calls):
                steps[name](*data[name])
            times[name].append((time.perf_counter() - start) / args.calls)
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    where = "inputs and results on the backend" if args.resident else "NumPy in, NumPy out"
    print(f"backend {BACKEND}: B={B}, S={S} layers, N={N}, <= {T} targets, K={K}, G={G}; {where}")
    for name in steps:
        print(
            f"  {name:8s} median {median[name]:8.1f} ms  "
            f"(min {min(times[name]) * 1e3:.1f}, max {max(times[name]) * 1e3:.1f}; "
            f"first call {first[name]:.1f} s)"
        )
    print(f"  rt_detr / detr = {median['rt_detr'] / median['detr']:.2f}")


if __name__ == "__main__":
    main()
