"""Solver worker: ours on the Keras backend of this process, SciPy, and optax on JAX.

Run by run.py with KERAS_BACKEND set; every contender returns its result on the host.
Contender names: `ours_tf`, `scipy_tf` (TensorFlow process), `ours_jax`, `optax`, `scipy_jax`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import time
from typing import Any

import numpy as np
from common import Case, Contender, error_summary, serve, shape_name, uniform_costs

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SUFFIX = {"tensorflow": "tf", "jax": "jax"}[BACKEND]


# ---------------------------------------------------------------------------------------------
# Contenders. Each `make_*` returns a fresh one, so its first call traces and compiles.


def scipy_loop(cost: np.ndarray) -> np.ndarray:
    """`scipy.optimize.linear_sum_assignment` per sample, in our format (`[B, M]`, -1)."""
    from scipy.optimize import linear_sum_assignment

    columns = np.full(cost.shape[:2], -1, dtype=np.int32)
    for sample, matrix in enumerate(cost):
        rows, cols = linear_sum_assignment(matrix)
        columns[sample, rows] = cols
    return columns


def make_ours_tensorflow() -> Contender:
    import tensorflow as tf

    from hungarian_loss import linear_sum_assignment

    solve = tf.function(linear_sum_assignment, jit_compile=True)
    return Contender(run=lambda cost: np.asarray(solve(cost)), prepare=tf.constant)


def _jax_on_device(x: np.ndarray) -> Any:
    import jax

    return jax.device_put(x).block_until_ready()


def make_ours_jax() -> Contender:
    import jax

    from hungarian_loss import linear_sum_assignment

    solve = jax.jit(linear_sum_assignment)
    return Contender(run=lambda cost: np.asarray(solve(cost)), prepare=_jax_on_device)


def make_optax() -> Contender:
    import jax
    import optax

    solve = jax.jit(jax.vmap(optax.assignment.hungarian_algorithm))

    def run(cost: Any) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = solve(cost)
        return np.asarray(rows), np.asarray(cols)

    return Contender(run=run, prepare=_jax_on_device)


def make_scipy() -> Contender:
    import scipy.optimize  # noqa: F401  (fail here, at build time, if SciPy is missing)

    return Contender(run=scipy_loop)


# ---------------------------------------------------------------------------------------------
# Checks: each contender's total cost per sample against SciPy's.


def totals_from_columns(cost: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total matched cost `[B]` and matched row count `[B]` from `[B, M]` columns (-1)."""
    matched = columns >= 0
    picked = np.take_along_axis(cost, np.maximum(columns, 0)[..., None], axis=2)[..., 0]
    return np.where(matched, picked, 0.0).sum(axis=1), matched.sum(axis=1)


def totals_from_pairs(cost: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> tuple:
    """Same from optax's `(rows [B, K], cols [B, K])`."""
    rows, cols = pairs
    samples = np.arange(cost.shape[0])[:, None]
    return cost[samples, rows, cols].sum(axis=1), np.full(cost.shape[0], rows.shape[1])


def check_against_scipy(cost: np.ndarray, results: dict[str, Any]) -> dict[str, Any]:
    reference_total, reference_count = totals_from_columns(cost, scipy_loop(cost))
    report = {}
    for name, result in results.items():
        to_totals = totals_from_pairs if name == "optax" else totals_from_columns
        total, count = to_totals(cost, result)
        report[name] = {
            "max_abs_total_cost_diff_vs_scipy": float(np.max(np.abs(total - reference_total))),
            "matched_rows_equal_scipy": bool(np.array_equal(count, reference_count)),
        }
    return report


# ---------------------------------------------------------------------------------------------


def contender_makers() -> dict[str, Any]:
    if BACKEND == "tensorflow":
        return {"ours_tf": make_ours_tensorflow, "scipy_tf": make_scipy}
    return {"ours_jax": make_ours_jax, "optax": make_optax, "scipy_jax": make_scipy}


def backend_warm_up() -> float:
    """Seconds for a first tiny compile: one-time backend start-up, kept out of per-shape times."""
    maker = make_ours_tensorflow if BACKEND == "tensorflow" else make_ours_jax
    contender = maker()
    start = time.perf_counter()
    contender.run(contender.prepare(np.ones((2, 3, 3), np.float32)))
    return time.perf_counter() - start


def devices() -> list[str]:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return [device.name for device in tf.config.list_physical_devices()]
    import jax

    return [str(device) for device in jax.devices()]


def build(config: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    import keras

    info: dict[str, Any] = {
        "backend": keras.backend.backend(),
        "hungarian_loss": importlib.metadata.version("hungarian-loss"),
        "devices": devices(),
        "unavailable": {},
    }
    info["backend_warm_up_s"] = backend_warm_up()
    cases = []
    for shape in config["shapes"]:
        contenders = {}
        for name, make in contender_makers().items():
            try:
                contenders[name] = make()
            except Exception as error:
                info["unavailable"][name] = error_summary(error)
        cases.append(
            Case(
                name=shape_name(shape),
                make_input=functools.partial(uniform_costs, shape=tuple(shape)),
                contenders=contenders,
                check=check_against_scipy,
            )
        )
    return cases, info


if __name__ == "__main__":
    sys.exit(serve(build))
