"""Solver and training step on a GPU (JAX backend), against SciPy's loop and optax.

Run on a machine with a CUDA GPU and jax[cuda]: `KERAS_BACKEND=jax python benchmarks/gpu.py`.
SciPy's time includes copying the cost matrices from the device to the host, as a
host-side matcher must. Prints a markdown table of medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np
import optax
import scipy.optimize

from hungarian_loss import HungarianLoss, linear_sum_assignment

SHAPES = [(64, 100, 300), (32, 10, 10), (32, 20, 100), (8, 100, 300), (16, 100, 100)]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def solver_rows(repeats: int) -> list[dict]:
    ours = jax.jit(linear_sum_assignment)
    theirs = jax.jit(jax.vmap(optax.assignment.hungarian_algorithm))
    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        host = rng.uniform(size=shape).astype("float32")
        cost = jax.device_put(host)
        start = time.perf_counter()
        result = np.asarray(ours(cost))
        compile_s = time.perf_counter() - start
        for b in range(shape[0]):  # exact: same total as SciPy
            r, c = scipy.optimize.linear_sum_assignment(host[b])
            ok = result[b] >= 0
            total = host[b][np.flatnonzero(ok), result[b][ok]].sum()
            assert abs(total - host[b][r, c].sum()) < 1e-4, (shape, b)
        jax.block_until_ready(theirs(cost))

        def run_ours(cost=cost) -> None:
            np.asarray(ours(cost))

        def run_scipy(cost=cost) -> None:
            on_host = np.asarray(cost)  # the device-to-host copy a host matcher needs
            for matrix in on_host:
                scipy.optimize.linear_sum_assignment(matrix)

        def run_optax(cost=cost) -> None:
            jax.block_until_ready(theirs(cost))

        t = {"ours": [], "scipy": [], "optax": []}
        for _ in range(repeats):  # interleaved
            t["ours"].append(median_ms(run_ours, 3))
            t["scipy"].append(median_ms(run_scipy, 3))
            t["optax"].append(median_ms(run_optax, 3))
        med = {k: float(np.median(v)) for k, v in t.items()}
        rows.append({"shape": shape, "compile_s": compile_s, **med})
    return rows


def train_rows(repeats: int) -> dict:
    rng = np.random.default_rng(1)
    batch, n_pred, m_true = 32, 100, 20
    x = rng.normal(size=(batch, 64)).astype("float32")
    y = rng.uniform(0.1, 0.9, size=(batch, m_true, 4)).astype("float32")
    y[..., 2:] = rng.uniform(0.05, 0.2, size=(batch, m_true, 2))
    counts = rng.integers(1, m_true + 1, size=batch)
    for b, n in enumerate(counts):
        y[b, n:] = -1.0

    def ordered_l1(y_true, y_pred):
        ops = keras.ops
        real = ops.cast(ops.any(ops.not_equal(y_true, -1.0), axis=-1), "float32")
        err = ops.sum(ops.abs(y_pred[:, :m_true] - y_true), axis=-1) * real
        return ops.sum(err, axis=-1) / ops.maximum(ops.sum(real, axis=-1), 1.0)

    def make(loss):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((64,))
        h = keras.layers.Dense(256, activation="relu")(inputs)
        out = keras.layers.Reshape((n_pred, 4))(
            keras.layers.Dense(n_pred * 4, activation="sigmoid")(h)
        )
        model = keras.Model(inputs, out)
        model.compile(optimizer="adam", loss=loss, jit_compile=True)
        return model

    models = {
        "hungarian": make(HungarianLoss(cost={"l1": 5.0, "giou": 2.0}, box_format="center_xywh")),
        "ordered_l1": make(ordered_l1),
    }
    for m in models.values():
        for _ in range(3):
            m.train_on_batch(x, y)
    t = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            t[k].append(median_ms(lambda m=m: m.train_on_batch(x, y), 5))
    return {k: float(np.median(v)) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print("devices:", jax.devices())
    rows = solver_rows(args.repeats)
    train = train_rows(args.repeats)
    print(
        "\n| (B, M, N) | ours ms | SciPy+copy ms | optax ms | ours/SciPy | ours/optax | compile s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['ours']:.3f} | {r['scipy']:.3f} | {r['optax']:.3f} | "
            f"{r['ours'] / r['scipy']:.2f} | {r['ours'] / r['optax']:.2f} | {r['compile_s']:.1f} |"
        )
    ratio = train["hungarian"] / train["ordered_l1"]
    print(
        f"\ntraining step (32 x 100 boxes, <=20 targets): HungarianLoss "
        f"{train['hungarian']:.2f} ms, ordered L1 {train['ordered_l1']:.2f} ms, ratio {ratio:.2f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"devices": str(jax.devices()), "solver": rows, "train": train}, f, indent=1)


if __name__ == "__main__":
    main()
