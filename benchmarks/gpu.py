"""Solver and training step on a GPU (JAX backend), against SciPy's loop and optax.

Run on a machine with a CUDA GPU and jax[cuda]: `KERAS_BACKEND=jax python benchmarks/gpu.py`
(PyTorch on CUDA: benchmarks/gpu_torch.py).
SciPy's time includes copying the cost matrices from the device to the host, as a
host-side matcher must. Prints a markdown table of medians and ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import optax
from common import gpu_train_case, parse_case, scipy_columns, solver_input, split_input

from hungarian_loss import HungarianLoss, linear_sum_assignment

# The solver issue's GPU cases, the masked DETR case, the square series, the long paths and
# DETR's matching cost of random, collapsed and identical predictions.
CASES = [
    "32x10x10",
    "32x20x100",
    "8x100x300",
    "16x100x100",
    "64x100x300",
    "4x300x300",
    "1x1000x1000",
    "detr:48x64x300",
    "16x30x30",
    "16x400x400",
    "mixij:16x400x400",
    "ij:1x600x600",
    "detrrandom:16x60x300",
    "detrcollapsed:16x60x300",
    "detridentical:16x60x300",
]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def solver_rows(repeats: int, cases: list[str]) -> list[dict]:
    from hungarian_loss import assignment

    solvers = {
        name: jax.jit(functools.partial(linear_sum_assignment, strategy=name))
        for name in ("auto", "steps", "phases")
    }
    theirs = jax.jit(jax.vmap(optax.assignment.hungarian_algorithm))
    rng = np.random.default_rng(0)
    rows = []
    for case in cases:
        _, batch, m, n = parse_case(case)
        host, host_mask = split_input(solver_input(rng, case))
        cost = jax.device_put(host)
        mask = None if host_mask is None else jax.device_put(host_mask)
        compile_s = {}
        reference = scipy_columns(host, host_mask)
        for name, solve in solvers.items():
            start = time.perf_counter()
            result = np.asarray(solve(cost, mask))
            compile_s[name] = time.perf_counter() - start
            for b in range(batch):  # exact: same total and count as SciPy
                ok, ref = result[b] >= 0, reference[b] >= 0
                total = host[b][np.flatnonzero(ok), result[b][ok]].astype("float64").sum()
                expected = host[b][np.flatnonzero(ref), reference[b][ref]].astype("float64").sum()
                assert ok.sum() == ref.sum(), (case, name, b)
                assert abs(total - expected) <= 1e-5 * max(1.0, abs(expected)), (case, name, b)
        strategy = assignment._resolve("auto", batch, min(m, n), max(m, n))
        full_mask = np.ones((batch, m), bool) if host_mask is None else host_mask
        _, steps = jax.jit(functools.partial(assignment._assign_with_steps, strategy=strategy))(
            cost, full_mask, np.ones((batch, n), bool)
        )
        runs = {
            name: functools.partial(lambda s, c, k: np.asarray(s(c, k)), solve, cost, mask)
            for name, solve in solvers.items()
        }

        def run_scipy(cost=cost, host_mask=host_mask) -> None:
            on_host = np.asarray(cost)  # the device-to-host copy a host matcher needs
            scipy_columns(on_host, host_mask)

        runs["scipy"] = run_scipy
        if host_mask is None:  # optax takes no masks
            jax.block_until_ready(theirs(cost))
            runs["optax"] = functools.partial(lambda c: jax.block_until_ready(theirs(c)), cost)
        t = {k: [] for k in runs}
        for _ in range(repeats):  # interleaved
            for k, run in runs.items():
                t[k].append(median_ms(run, 3))
        med = {k: float(np.median(v)) for k, v in t.items()}
        rows.append(
            {
                "case": case,
                "compile_s": compile_s,
                "strategy": strategy,
                "loop_steps": np.asarray(steps).tolist(),
                **med,
            }
        )
        print(rows[-1], flush=True)
    return rows


def train_rows(repeats: int) -> dict:
    rng = np.random.default_rng(1)
    x, y, ordered_l1, make_model = gpu_train_case(rng)

    def make(loss):
        return make_model(loss, jit_compile=True)

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
    parser.add_argument("--cases", default=",".join(CASES), help="[KIND:]BxMxN,...")
    args = parser.parse_args()
    print("devices:", jax.devices())
    rows = solver_rows(args.repeats, args.cases.split(","))
    train = train_rows(args.repeats)
    print(
        "\n| case | ours (auto) ms | steps ms | phases ms | SciPy+copy ms | optax ms | "
        "ours/SciPy | ours/optax | compile s (auto) | loop steps [auction, phases, BF, light] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        optax_ms = r.get("optax")
        optax_cell = "n/a" if optax_ms is None else f"{optax_ms:.3f}"
        optax_ratio = "n/a" if optax_ms is None else f"{r['auto'] / optax_ms:.2f}"
        print(
            f"| {r['case']} | {r['auto']:.3f} | {r['steps']:.3f} | {r['phases']:.3f} | "
            f"{r['scipy']:.3f} | {optax_cell} | {r['auto'] / r['scipy']:.2f} | {optax_ratio} | "
            f"{r['compile_s']['auto']:.1f} | {r['strategy']} {r['loop_steps']} |"
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
