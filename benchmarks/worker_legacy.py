"""Loss worker for the original hungarian-loss 1.0.3, run in its own virtual environment.

1.0.3 has the same import name as this project, so run.py starts this script with the Python of
a separate virtual environment where only 1.0.3 (and TensorFlow) is installed. Its function is
`hungarian_loss(y_true, y_pred)` on square `[B, N, 4]` inputs: a `tf.map_fn` over the samples that
returns the batch mean of `mean(cost * assignment_mask)`, a scalar.

Contenders, timed in rounds: `hl103_xla` (`tf.function(jit_compile=True)`) and `hl103_graph`
(`tf.function`). Eager calls take seconds each, so they are timed here, before the rounds,
`config["legacy_eager_calls"]` times after one warm-up call, and reported in `info["eager"]`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import statistics
import sys
import time
from typing import Any

import numpy as np
from common import Case, Contender, box_pairs, case_rng, error_summary, serve


def make_contender(loss_fn: Any, *, jit_compile: bool | None) -> Contender:
    """`jit_compile=None` means eager."""
    import tensorflow as tf

    compiled = loss_fn if jit_compile is None else tf.function(loss_fn, jit_compile=jit_compile)
    return Contender(
        run=lambda pair: np.asarray(compiled(*pair)),
        prepare=lambda pair: tuple(tf.constant(array) for array in pair),
    )


def time_eager(loss_fn: Any, config: dict[str, Any], make_input: Any) -> dict[str, Any]:
    calls = 0 if config.get("restart") else config["legacy_eager_calls"]
    if calls <= 0:
        return {"calls": 0, "skipped": "legacy_eager_calls is 0, or a restart"}
    eager = make_contender(loss_fn, jit_compile=None)
    start = time.perf_counter()
    eager.run(eager.prepare(make_input(case_rng(config["seed"], -1, 0))))
    first = time.perf_counter() - start
    samples = []
    for round_index in range(calls):
        prepared = eager.prepare(make_input(case_rng(config["seed"], round_index, 0)))
        start = time.perf_counter()
        eager.run(prepared)
        samples.append(time.perf_counter() - start)
    return {
        "calls": calls,
        "first_call_s": first,
        "samples_s": samples,
        "median_s": statistics.median(samples),
    }


def legacy_pairs(pair: tuple[np.ndarray, np.ndarray]) -> list[list[list[int]]]:
    """1.0.3's own matching per sample, as `[row, col]` pairs (for run.py to judge)."""
    import tensorflow as tf
    from hungarian_loss.steps import (
        compute_euclidean_distance,
        reduce_matrix,
        select_optimal_assignment_mask,
    )

    @tf.function
    def mask(y_true: Any, y_pred: Any) -> Any:
        cost = compute_euclidean_distance(y_true, y_pred)
        return select_optimal_assignment_mask(reduce_matrix(cost))

    y_true, y_pred = pair
    return [
        np.argwhere(np.asarray(mask(tf.constant(t), tf.constant(p)))).tolist()
        for t, p in zip(y_true, y_pred, strict=True)
    ]


def check(pair: Any, results: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {name: {"value": float(value)} for name, value in results.items()}
    try:
        report["pairs"] = legacy_pairs(pair)
    except Exception as error:
        report["pairs_error"] = error_summary(error)
    return report


def build(config: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    import tensorflow as tf

    import hungarian_loss

    info: dict[str, Any] = {
        "hungarian_loss": importlib.metadata.version("hungarian-loss"),
        "hungarian_loss_file": hungarian_loss.__file__,
        "tensorflow": tf.__version__,
        "keras": importlib.metadata.version("keras"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "unavailable": {},
    }
    if info["hungarian_loss"] != "1.0.3":
        raise RuntimeError(f"Expected hungarian-loss 1.0.3, found {info['hungarian_loss']}")
    loss_fn = hungarian_loss.hungarian_loss
    batch, count = config["loss_shape"]
    make_input = functools.partial(box_pairs, batch=batch, count=count)
    contenders = {}
    for name, jit_compile in (("hl103_xla", True), ("hl103_graph", False)):
        try:
            contenders[name] = make_contender(loss_fn, jit_compile=jit_compile)
        except Exception as error:
            info["unavailable"][name] = error_summary(error)
    try:
        info["eager"] = time_eager(loss_fn, config, make_input)
    except Exception as error:
        info["unavailable"]["hl103_eager"] = error_summary(error)
    case = Case(
        name=f"{batch}x{count}x4", make_input=make_input, contenders=contenders, check=check
    )
    return [case], info


if __name__ == "__main__":
    sys.exit(serve(build))
