"""keras-hub's D-FINE matcher against ours and SciPy, on DETR's cost matrices (CPU or GPU, TF).

keras-hub 0.32 has the only other in-graph matcher of the Keras ecosystem,
`keras_hub.src.models.d_fine.d_fine_utils.hungarian_assignment`, which D-FINE's loss calls
one image at a time, on a `[num_queries, num_queries]` matrix (predictions x targets, the
target columns padded with 1e9). This script builds the `layers` case of run.py (8 images x
6 decoder layers, 300 queries, 1 to 50 targets, DETR's cost from `DETRLoss().pairwise_cost`),
calls D-FINE's matcher the way D-FINE does (compiled with XLA, one image and layer per call),
and ours on all layers in one call; it checks every matching's total cost against SciPy's.

Run it in an environment of its own (keras-hub pins its own Keras):

    python -m venv .venv-keras-hub
    .venv-keras-hub/bin/pip install "keras-hub==0.32.0" scipy -e .
    KERAS_BACKEND=tensorflow .venv-keras-hub/bin/python benchmarks/keras_hub_dfine.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from worker_layers import detr_inputs

SPEC = {"batch": 8, "layers": 6, "queries": 300, "max_targets": 50, "mean_targets": 8}


def timed(fn: Any, repeats: int) -> tuple[float, list[float]]:
    """First-call seconds and the seconds of `repeats` more calls."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def main() -> None:
    import keras_hub
    import tensorflow as tf
    from keras_hub.src.models.d_fine.d_fine_utils import hungarian_assignment

    from hungarian_loss import DETRLoss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    y_true, y_pred = detr_inputs(np.random.default_rng(args.seed), {**SPEC, "classes": 91})
    loss = DETRLoss()
    costs = np.stack(
        [np.asarray(loss.pairwise_cost(y_true, y_pred[:, layer])) for layer in range(6)], 1
    )  # [B, L, T, N]
    real = np.any(y_true != -1.0, axis=-1)  # [B, T]
    batch, layers, _, queries = costs.shape

    # D-FINE's call: rows are the predictions, columns the targets padded to num_queries.
    matrices = []
    for image in range(batch):
        for layer in range(layers):
            matrix = np.full((queries, queries), 1e9, np.float32)
            count = int(real[image].sum())
            matrix[:, :count] = costs[image, layer, real[image]].T
            matrices.append(tf.constant(matrix))
    solve = tf.function(lambda c: hungarian_assignment(c, queries), jit_compile=True)

    def dfine_all() -> list[tuple[np.ndarray, np.ndarray]]:
        results = []
        for matrix in matrices:
            rows, cols, _ = solve(matrix)
            results.append((np.asarray(rows), np.asarray(cols)))
        return results

    match = tf.function(loss.match, jit_compile=True)
    y_true_t, y_pred_t = tf.constant(y_true), tf.constant(y_pred)

    def ours_all() -> np.ndarray:
        return np.asarray(match(y_true_t, y_pred_t))  # [B, L, T]

    dfine_first, dfine_times = timed(dfine_all, args.repeats)
    ours_first, ours_times = timed(ours_all, args.repeats)

    gaps = {"d_fine": [], "ours": []}
    optimum_total = 0.0
    dfine_results, ours_result = dfine_all(), ours_all()
    for index, (rows, cols) in enumerate(dfine_results):
        image, layer = divmod(index, layers)
        count = int(real[image].sum())
        sub = costs[image, layer, real[image]].astype(np.float64)  # [k, N]
        best_rows, best_cols = linear_sum_assignment(sub)
        best = sub[best_rows, best_cols].sum()
        optimum_total += best
        taken = cols < count  # predictions given a real target
        gaps["d_fine"].append(sub[cols[taken], rows[taken]].sum() - best)
        ours = ours_result[image, layer][real[image]]
        gaps["ours"].append(sub[np.arange(count), ours].sum() - best)

    print(f"keras-hub {keras_hub.__version__}, TensorFlow {tf.__version__}")
    print(f"{batch} images x {layers} layers, {queries} queries, {int(real.sum())} targets")
    print("| matcher | first call s | median ms, all 48 problems | optimal problems | "
          "total cost above SciPy's |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, first, times in (
        ("keras-hub D-FINE, one image and layer per call (48 calls)", dfine_first, dfine_times),
        ("ours, all layers in one call", ours_first, ours_times),
    ):
        key = "d_fine" if name.startswith("keras") else "ours"
        optimal = sum(gap < 1e-3 for gap in gaps[key])
        excess = sum(gaps[key]) / optimum_total
        print(
            f"| {name} | {first:.1f} | {1000 * statistics.median(times):.1f} | "
            f"{optimal} of {len(gaps[key])} | {100 * excess:.1f} % |"
        )


if __name__ == "__main__":
    main()
