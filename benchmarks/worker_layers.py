"""Decoder-layer worker: DETR's matching of every decoder layer, three ways (Keras backend of
this process).

The case of issue 12: B images x L decoder layers, at most 50 targets per image (a geometric
count, mean 8, padded with -1 rows), N queries, K = 91 classes + "no object", DETR's matching
cost (class 1, L1 5, GIoU 2). Contenders (suffixed `_tf` or `_jax`), each bringing its result
to the host:

- `one_call`: `DETRLoss.match` on `y_pred [B, L, N, D]`, compiled: one solver call of B * L
  problems;
- `layer_calls`: L calls of the compiled `DETRLoss.match` on one layer `[B, N, D]` each (a
  Python loop over layers, results brought to the host after the last);
- `host_scipy`: what Hugging Face's DETR loss does: per layer, the cost on the device
  (compiled), a device-to-host copy, then `scipy.optimize.linear_sum_assignment` per image
  on the image's real targets.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import numpy as np
from common import Case, Contender, error_summary, serve

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SUFFIX = {"tensorflow": "tf", "jax": "jax"}[BACKEND]


def detr_inputs(rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """`y_true [B, T, 5]` (T = max targets, -1 padding) and `y_pred [B, L, N, 4 + K + 1]`."""
    batch, layers, queries = spec["batch"], spec["layers"], spec["queries"]
    max_targets, classes = spec["max_targets"], spec["classes"]
    counts = np.minimum(rng.geometric(1.0 / spec["mean_targets"], size=batch), max_targets)
    y_true = np.full((batch, max_targets, 5), -1.0, dtype=np.float32)
    for image, count in enumerate(counts):
        y_true[image, :count, :2] = rng.uniform(0.1, 0.9, size=(count, 2))
        y_true[image, :count, 2:4] = rng.uniform(0.02, 0.4, size=(count, 2))
        y_true[image, :count, 4] = rng.integers(0, classes, size=count)
    centers = rng.uniform(0.05, 0.95, size=(batch, layers, queries, 2))
    sizes = rng.uniform(0.02, 0.5, size=(batch, layers, queries, 2))
    logits = rng.normal(size=(batch, layers, queries, classes + 1))
    y_pred = np.concatenate([centers, sizes, logits], axis=-1).astype(np.float32)
    return y_true, y_pred


def compile_fn(fn: Any) -> Any:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import jax

    return jax.jit(fn)


def to_device(pair: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    from keras import ops

    return tuple(ops.convert_to_tensor(array) for array in pair)  # type: ignore[return-value]


def make_contenders(loss: Any) -> dict[str, Contender]:
    from keras import ops

    match = compile_fn(loss.match)

    def one_call(pair: tuple[Any, Any]) -> np.ndarray:
        return np.asarray(match(*pair))  # [B, L, T]

    def layer_calls(pair: tuple[Any, Any]) -> np.ndarray:
        y_true, y_pred = pair
        results = [match(y_true, y_pred[:, layer]) for layer in range(y_pred.shape[1])]
        return np.stack([np.asarray(result) for result in results], axis=1)  # [B, L, T]

    cost = compile_fn(lambda y_true, y_pred: loss.pairwise_cost(y_true, y_pred))

    def host_scipy(pair: tuple[Any, Any]) -> np.ndarray:
        from scipy.optimize import linear_sum_assignment

        y_true, y_pred = pair
        real = np.asarray(ops.any(ops.not_equal(y_true, -1.0), axis=-1))  # [B, T]
        batch, layers, targets = y_pred.shape[0], y_pred.shape[1], y_true.shape[1]
        columns = np.full((batch, layers, targets), -1, dtype=np.int32)
        for layer in range(layers):
            matrices = np.asarray(cost(y_true, y_pred[:, layer]))  # device to host: [B, T, N]
            for image in range(batch):
                rows = np.flatnonzero(real[image])
                matched_rows, cols = linear_sum_assignment(matrices[image, rows])
                columns[image, layer, rows[matched_rows]] = cols
        return columns

    return {
        f"one_call_{SUFFIX}": Contender(run=one_call, prepare=to_device),
        f"layer_calls_{SUFFIX}": Contender(run=layer_calls, prepare=to_device),
        f"host_scipy_{SUFFIX}": Contender(run=host_scipy, prepare=to_device),
    }


def agreement(loss: Any, pair: tuple[np.ndarray, np.ndarray], results: dict[str, Any]) -> dict:
    """Every contender's total matching cost against the SciPy loop's (float64 costs)."""
    y_true, y_pred = pair
    costs = np.stack(
        [
            np.asarray(loss.pairwise_cost(y_true, y_pred[:, layer]))
            for layer in range(y_pred.shape[1])
        ],
        axis=1,
    ).astype(np.float64)  # [B, L, T, N]

    def total(columns: np.ndarray) -> float:
        b, layer, row = np.nonzero(columns >= 0)
        return float(costs[b, layer, row, columns[b, layer, row]].sum())

    reference = total(results[f"host_scipy_{SUFFIX}"])
    counts = {name: int(np.sum(value >= 0)) for name, value in results.items()}
    return {
        "targets": int(np.sum(np.any(y_true != -1.0, axis=-1))),
        "matched_pairs": counts,
        "total_cost_minus_scipy": {
            name: total(value) - reference for name, value in results.items()
        },
    }


def build(config: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    import keras

    import hungarian_loss

    spec = config["layers"]
    info: dict[str, Any] = {
        "backend": keras.backend.backend(),
        "hungarian_loss": hungarian_loss.__version__,
        "unavailable": {},
    }
    contenders: dict[str, Contender] = {}
    loss: Any = None
    try:
        from hungarian_loss import DETRLoss

        loss = DETRLoss()  # DETR's cost: class 1, L1 5, GIoU 2
        contenders = make_contenders(loss)
    except Exception as error:
        for name in ("one_call", "layer_calls", "host_scipy"):
            info["unavailable"][f"{name}_{SUFFIX}"] = error_summary(error)
    name = f"{spec['batch']}x{spec['layers']}x{spec['max_targets']}x{spec['queries']}"
    case = Case(
        name=name,
        make_input=functools.partial(detr_inputs, spec=spec),
        contenders=contenders,
        check=functools.partial(agreement, loss),
    )
    return [case], info


if __name__ == "__main__":
    sys.exit(serve(build))
