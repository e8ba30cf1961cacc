"""Solver, worked example and training step on a CUDA GPU with the PyTorch backend.

Run on a machine with a CUDA GPU and a CUDA build of torch:
`KERAS_BACKEND=torch python benchmarks/gpu_torch.py`. Checks that the solver's results on
CUDA tensors equal those on the CPU, and prints medians: ours (compiled by the package with
`torch.compile`) against SciPy's loop (including the device-to-host copy), and a training
step with `HungarianLoss` against an order-bound L1 step.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch
from common import gpu_train_case, parse_case, scipy_columns, solver_input, split_input

from hungarian_loss import HungarianLoss, linear_sum_assignment

CASES = [
    "32x10x10",
    "32x20x100",
    "8x100x300",
    "16x100x100",
    "4x300x300",
    "detr:48x64x300",
    "mixij:16x400x400",
    "detrrandom:16x60x300",
    "detrcollapsed:16x60x300",
    "detridentical:16x60x300",
]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def solver_rows(repeats: int, cases: list[str]) -> list[dict]:
    from hungarian_loss import _backend, assignment

    rng = np.random.default_rng(0)
    rows = []
    for case in cases:
        _, batch, m, n = parse_case(case)
        x = solver_input(rng, case)
        host, host_mask = split_input(x)
        on_gpu = [torch.tensor(a, device="cuda") for a in (host, host_mask) if a is not None]
        # "auto" takes the accelerator strategy for CUDA tensors.
        strategy = assignment._resolve("auto", batch, min(m, n), max(m, n), on_gpu[0])
        assert strategy == "phases", (case, strategy)
        full_mask = torch.ones((batch, m), dtype=torch.bool, device="cuda")
        count_steps = _backend.compiled(
            functools.partial(assignment._assign_with_steps, strategy=strategy)
        )  # compiled: the light steps of an i*j sample would take minutes eagerly
        _, steps = count_steps(
            on_gpu[0],
            on_gpu[1] if host_mask is not None else full_mask,
            torch.ones((batch, n), dtype=torch.bool, device="cuda"),
        )
        with keras.device("cpu"):
            on_cpu = linear_sum_assignment(*[torch.tensor(a) for a in on_gpu])
        start = time.perf_counter()
        result = linear_sum_assignment(*on_gpu)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        assert result.device.type == "cuda"
        assert np.array_equal(result.cpu().numpy(), on_cpu.cpu().numpy()), case

        def ours(args=on_gpu) -> None:
            linear_sum_assignment(*args).cpu()

        def scipy_loop(args=on_gpu, mask=host_mask) -> None:
            scipy_columns(args[0].cpu().numpy(), mask)

        times = {"ours": [], "scipy": []}
        for _ in range(repeats):
            times["ours"].append(median_ms(ours, 3))
            times["scipy"].append(median_ms(scipy_loop, 3))
        med = {k: float(np.median(v)) for k, v in times.items()}
        loop_steps = steps.cpu().numpy().tolist()  # auction rounds, phases, BF rounds, light
        rows.append({"case": case, "compile_s": compile_s, "loop_steps": loop_steps, **med})
        print(rows[-1], flush=True)
    return rows


def worked_example() -> float:
    y_true = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]], device="cuda")
    y_pred = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]], device="cuda")
    value = HungarianLoss()(y_true, y_pred)
    assert value.device.type == "cuda"
    return float(value.cpu())


def train_rows(repeats: int) -> dict:
    rng = np.random.default_rng(1)
    x, y, ordered_l1, make_model = gpu_train_case(rng)

    def make(loss):
        return make_model(loss, jit_compile=False)

    models = {
        "hungarian": make(HungarianLoss(cost={"l1": 5.0, "giou": 2.0}, box_format="center_xywh")),
        "ordered_l1": make(ordered_l1),
    }
    first = {}
    for name, model in models.items():
        start = time.perf_counter()
        model.train_on_batch(x, y)
        first[name] = time.perf_counter() - start
        model.fit(x, y, epochs=2, verbose=0)  # a short fit on CUDA
    t = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            t[k].append(median_ms(lambda m=m: m.train_on_batch(x, y), 5))
    return {**{k: float(np.median(v)) for k, v in t.items()}, "first_step_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", default=",".join(CASES), help="[KIND:]BxMxN,...")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    rows = solver_rows(args.repeats, args.cases.split(","))
    print(f"worked example on CUDA: {worked_example():.6f} (expected 6.507638)")
    train = train_rows(args.repeats)
    print("\n| case | ours ms | SciPy+copy ms | ours/SciPy | first call s | loop steps |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['ours']:.3f} | {r['scipy']:.3f} | "
            f"{r['ours'] / r['scipy']:.2f} | {r['compile_s']:.1f} | {r['loop_steps']} |"
        )
    print(
        f"\ntraining step: HungarianLoss {train['hungarian']:.2f} ms, ordered L1 "
        f"{train['ordered_l1']:.2f} ms, ratio {train['hungarian'] / train['ordered_l1']:.2f}; "
        f"first steps {train['first_step_s']}"
    )


if __name__ == "__main__":
    main()
