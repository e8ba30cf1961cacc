"""Solver worker: ours on the Keras backend of this process, SciPy, and optax on JAX.

Run by run.py with KERAS_BACKEND set; every contender returns its result on the host.
Contender names: `ours_tf`, `scipy_tf` (TensorFlow process), `ours_jax`, `optax`, `scipy_jax`,
`ours_torch`, `scipy_torch` (PyTorch process: the solver as users call it, compiled by the
package with `torch.compile` once per shape).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import time
from typing import Any

import numpy as np
from common import (
    Case,
    Contender,
    error_summary,
    parse_case,
    scipy_columns,
    serve,
    solver_input,
    split_input,
)

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SUFFIX = {"tensorflow": "tf", "jax": "jax", "torch": "torch"}[BACKEND]


# ---------------------------------------------------------------------------------------------
# Contenders. Each `make_*` returns a fresh one, so its first call traces and compiles.


split = split_input


def scipy_loop(x: Any) -> np.ndarray:
    """`scipy.optimize.linear_sum_assignment` per sample (its real rows), in our format."""
    return scipy_columns(*split(x))


def make_ours_tensorflow() -> Contender:
    import tensorflow as tf

    from hungarian_loss import linear_sum_assignment

    solve = tf.function(linear_sum_assignment, jit_compile=True)
    return Contender(run=lambda x: np.asarray(solve(*split(x))), prepare=_on_tf_device)


def _on_tf_device(x: Any) -> Any:
    import tensorflow as tf

    return tuple(map(tf.constant, x)) if isinstance(x, tuple) else tf.constant(x)


def _jax_on_device(x: Any) -> Any:
    import jax

    return jax.block_until_ready(jax.device_put(x))


def make_ours_jax() -> Contender:
    import jax

    from hungarian_loss import linear_sum_assignment

    solve = jax.jit(linear_sum_assignment)
    return Contender(run=lambda x: np.asarray(solve(*split(x))), prepare=_jax_on_device)


def make_ours_torch() -> Contender:
    import torch

    from hungarian_loss import linear_sum_assignment

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def prepare(x: Any) -> Any:
        return (
            tuple(torch.tensor(a, device=device) for a in x)
            if isinstance(x, tuple)
            else (torch.tensor(x, device=device))
        )

    def run(x: Any) -> np.ndarray:
        return linear_sum_assignment(*split(x)).cpu().numpy()

    return Contender(run=run, prepare=prepare)


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


def loop_steps(x: Any) -> dict[str, int]:
    """Sequential loop steps of our solver on `x` (the slowest sample sets them)."""
    from hungarian_loss import assignment

    cost, row_mask = split(x)
    batch, rows, cols = cost.shape
    row_mask = np.ones((batch, rows), bool) if row_mask is None else row_mask
    strategy = assignment._resolve("auto", batch, min(rows, cols), max(rows, cols))
    _, steps = assignment._assign_with_steps(cost, row_mask, np.ones((batch, cols), bool), strategy)
    names = ("auction_rounds", "phases", "bellman_ford_rounds", "light_steps")
    return {"strategy": strategy, **dict(zip(names, map(int, np.asarray(steps)), strict=True))}


def check_against_scipy(x: Any, results: dict[str, Any]) -> dict[str, Any]:
    cost, _ = split(x)
    reference_total, reference_count = totals_from_columns(cost, scipy_loop(x))
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
    if BACKEND == "torch":
        return {"ours_torch": make_ours_torch, "scipy_torch": make_scipy}
    return {"ours_jax": make_ours_jax, "optax": make_optax, "scipy_jax": make_scipy}


def backend_warm_up() -> float:
    """Seconds for a first tiny compile: one-time backend start-up, kept out of per-shape times."""
    maker = {"tensorflow": make_ours_tensorflow, "torch": make_ours_torch}.get(
        BACKEND, make_ours_jax
    )
    contender = maker()
    start = time.perf_counter()
    contender.run(contender.prepare(np.ones((2, 3, 3), np.float32)))
    return time.perf_counter() - start


def devices() -> list[str]:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return [device.name for device in tf.config.list_physical_devices()]
    if BACKEND == "torch":
        import torch

        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
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
    for case in config["shapes"]:
        contenders = {}
        for name, make in contender_makers().items():
            if name == "optax" and parse_case(case)[0].startswith("detr"):
                info["unavailable"][f"optax on {case}"] = "optax takes no masks"
                continue
            try:
                contenders[name] = make()
            except Exception as error:
                info["unavailable"][name] = error_summary(error)
        cases.append(
            Case(
                name=case,
                make_input=functools.partial(solver_input, case=case),
                contenders=contenders,
                check=check_against_scipy,
            )
        )
    if BACKEND == "jax":
        rng = np.random.default_rng(config["seed"])
        info["loop_steps"] = {
            case: loop_steps(solver_input(rng, case)) for case in config["shapes"]
        }
    return cases, info


if __name__ == "__main__":
    sys.exit(serve(build))
