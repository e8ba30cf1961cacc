"""What every benchmark worker shares: inputs, timing and the line protocol with run.py.

Standard library and NumPy only: the worker for hungarian-loss 1.0.3 imports this module from
its own virtual environment.

Protocol. run.py starts a worker as `python worker_x.py CONFIG_JSON`. The worker builds its
cases, pays every first call (trace and compile) and answers with one `ready` message. Then, for
each line `R` that run.py writes to its standard input, it times one repeat round `R` of all its
contenders: a `start` message before each timing sample, a `sample` message with its seconds per
call after it, and a `round` message at the end; `quit` ends it. Messages are JSON on one line of
standard output behind `PREFIX`; every other line is ignored. This lets run.py interleave the
rounds of several processes (one per Keras backend or virtual environment).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREFIX = "@@bench "


def _identity(x: Any) -> Any:
    return x


@dataclass
class Contender:
    """One way of computing a case: `run(prepare(x))` returns its result on the host."""

    run: Callable[[Any], Any]
    prepare: Callable[[Any], Any] = _identity


@dataclass
class Case:
    """One input shape and the contenders that compute it.

    `check(x, results)` gets the warm-up input and each contender's result on it and returns a
    JSON-able summary (agreement with a reference, loss values, ...).
    """

    name: str
    make_input: Callable[[np.random.Generator], Any]
    contenders: dict[str, Contender]
    check: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Inputs. Seeded by (seed, round, case) so that every process sees the same data in a round.


def case_rng(seed: int, round_index: int, case_index: int) -> np.random.Generator:
    """Round -1 is the warm-up input."""
    return np.random.default_rng([seed, round_index + 1, case_index])


def uniform_costs(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


# Solver cases: "BxMxN" (uniform costs) or "KIND:BxMxN" with KIND one of
# - "detr": B = images x 6 decoder layers, M padded target rows (row mask: a geometric count of
#   mean 8 per image, shared by its layers, the first image at 50), N queries, uniform costs;
# - "ij": every sample c_ij = i * j (long augmenting paths);
# - "mixij": uniform samples, the first one replaced by c_ij = i * j / (M * N);
# - "detrrandom", "detrcollapsed", "detridentical": B images, M padded targets (a uniform count
#   in [1, M] per image), N queries: DETR's matching cost (class -softmax prob, 5 L1 and
#   2 (1 - GIoU) on center_xywh boxes, K = 80 classes) of random predictions, of predictions
#   collapsed to within 1e-3 of one box and logits (early training), and of identical ones.
SOLVER_KINDS = ("uniform", "detr", "ij", "mixij", "detrrandom", "detrcollapsed", "detridentical")
DETR_COST_KINDS = {"detrrandom": None, "detrcollapsed": 1e-3, "detridentical": 0.0}
DETR_LAYERS = 6


def parse_case(text: str) -> tuple[str, int, int, int]:
    """`"detr:48x64x300"` -> `("detr", 48, 64, 300)`; a bare shape is uniform."""
    kind, _, shape = text.rpartition(":")
    batch, rows, cols = (int(part) for part in shape.lower().split("x"))
    kind = kind or "uniform"
    if kind not in SOLVER_KINDS or min(batch, rows, cols) < 0:
        raise ValueError(f"Expected [KIND:]BxMxN with KIND in {SOLVER_KINDS}. Received: {text!r}")
    if kind == "detr" and batch % DETR_LAYERS:
        raise ValueError(f"Expected a batch that is a multiple of {DETR_LAYERS}: {text!r}")
    return kind, batch, rows, cols


def split_input(x: Any) -> tuple[Any, Any]:
    """`(cost, row_mask)` from a solver case's input (`row_mask` None where there is none)."""
    return x if isinstance(x, tuple) else (x, None)


def scipy_columns(cost: np.ndarray, row_mask: np.ndarray | None = None) -> np.ndarray:
    """`scipy.optimize.linear_sum_assignment` per sample on its real rows, as our `[B, M]`."""
    from scipy.optimize import linear_sum_assignment

    columns = np.full(cost.shape[:2], -1, dtype=np.int32)
    for sample, matrix in enumerate(cost):
        real = np.arange(cost.shape[1]) if row_mask is None else np.flatnonzero(row_mask[sample])
        rows, cols = linear_sum_assignment(matrix[real])
        columns[sample, real[rows]] = cols
    return columns


def solver_input(rng: np.random.Generator, case: str) -> Any:
    """The input of one solver case: a cost `[B, M, N]`, or `(cost, row_mask)` for "detr"."""
    kind, batch, rows, cols = parse_case(case)
    cost = rng.random((batch, rows, cols), dtype=np.float32)
    products = np.outer(np.arange(rows), np.arange(cols)).astype(np.float32)
    if kind == "ij":
        return np.broadcast_to(products, cost.shape).copy()
    if kind == "mixij":
        cost[0] = products / (rows * cols)
        return cost
    if kind == "detr":
        images = batch // DETR_LAYERS
        counts = np.minimum(rng.geometric(1 / 8, size=images), rows)
        counts[0] = min(50, rows)
        per_problem = np.repeat(counts, DETR_LAYERS)  # image-major: its layers side by side
        return cost, np.arange(rows)[None, :] < per_problem[:, None]
    if kind in DETR_COST_KINDS:
        return detr_matching_cost(rng, batch, rows, cols, DETR_COST_KINDS[kind])
    return cost


def detr_matching_cost(
    rng: np.random.Generator, images: int, targets: int, queries: int, spread: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """DETR's matching cost `[images, targets, queries]` in NumPy, and the target mask.

    Queries are random (`spread=None`) or all within `spread` of one box and one set of
    logits (`spread=0`: identical). Cost: `-softmax(logits)[class] + 5 L1 + 2 (1 - GIoU)`
    on center_xywh boxes, as `DETRLoss`'s default matching cost.
    """
    classes = 80
    counts = rng.integers(1, targets + 1, size=images)
    row_mask = np.arange(targets)[None, :] < counts[:, None]
    true_boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (images, targets, 2)), rng.uniform(0.05, 0.4, (images, targets, 2))],
        axis=-1,
    )
    true_class = rng.integers(0, classes, size=(images, targets))
    if spread is None:
        logits = rng.normal(size=(images, queries, classes))
        boxes = np.concatenate(
            [
                rng.uniform(0.2, 0.8, (images, queries, 2)),
                rng.uniform(0.05, 0.4, (images, queries, 2)),
            ],
            axis=-1,
        )
    else:
        base_logits = rng.normal(size=(images, 1, classes))
        base_boxes = np.concatenate(
            [rng.uniform(0.3, 0.7, (images, 1, 2)), rng.uniform(0.1, 0.3, (images, 1, 2))], axis=-1
        )
        logits = base_logits + spread * rng.uniform(-1, 1, (images, queries, classes))
        boxes = base_boxes + spread * rng.uniform(-1, 1, (images, queries, 4))
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    class_cost = -np.take_along_axis(
        prob, np.broadcast_to(true_class[:, None, :], (images, queries, targets)), axis=2
    )
    l1 = np.abs(true_boxes[:, :, None, :] - boxes[:, None, :, :]).sum(-1)  # [I, T, Q]
    cost = np.transpose(class_cost, (0, 2, 1)) + 5.0 * l1 + 2.0 * (1.0 - _giou(true_boxes, boxes))
    return cost.astype(np.float32), row_mask


def _giou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Generalized IoU `[I, T, Q]` of center_xywh boxes `a [I, T, 4]` and `b [I, Q, 4]`."""
    a0, a1 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b0, b1 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    a0, a1 = a0[:, :, None], a1[:, :, None]
    b0, b1 = b0[:, None], b1[:, None]
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    union = (a1 - a0).prod(-1) + (b1 - b0).prod(-1) - inter
    hull = (np.maximum(a1, b1) - np.minimum(a0, b0)).prod(-1)
    return inter / union - (hull - union) / hull


def random_boxes(rng: np.random.Generator, batch: int, count: int) -> np.ndarray:
    """Valid `xyxy` boxes inside the unit square, float32 `[batch, count, 4]`."""
    low = rng.uniform(0.0, 0.7, size=(batch, count, 2))
    size = rng.uniform(0.05, 0.3, size=(batch, count, 2))
    return np.concatenate([low, low + size], axis=-1).astype(np.float32)


def box_pairs(rng: np.random.Generator, batch: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`(y_true, y_pred)`, both `[batch, count, 4]`, no padding: what 1.0.3 accepts."""
    return random_boxes(rng, batch, count), random_boxes(rng, batch, count)


def gpu_train_case(
    rng: np.random.Generator, batch: int = 32, predictions: int = 100, targets: int = 20
) -> tuple[np.ndarray, np.ndarray, Callable[..., Any], Callable[..., Any]]:
    """The GPU scripts' training step: `(x, y, ordered_l1, make_model)`.

    `x [batch, 64]`, `y [batch, targets, 4]` center_xywh boxes with 1 to `targets` real rows
    (the rest -1); `ordered_l1(y_true, y_pred)` is the order-bound L1 loss (no matching);
    `make_model(loss, jit_compile)` a seeded Dense head predicting `predictions` boxes.
    Keras is imported when a function is called, so this module stays NumPy-only.
    """
    x = rng.normal(size=(batch, 64)).astype("float32")
    y = rng.uniform(0.1, 0.9, size=(batch, targets, 4)).astype("float32")
    y[..., 2:] = rng.uniform(0.05, 0.2, size=(batch, targets, 2))
    for b, n in enumerate(rng.integers(1, targets + 1, size=batch)):
        y[b, n:] = -1.0

    def ordered_l1(y_true: Any, y_pred: Any) -> Any:
        from keras import ops

        real = ops.cast(ops.any(ops.not_equal(y_true, -1.0), axis=-1), "float32")
        err = ops.sum(ops.abs(y_pred[:, :targets] - y_true), axis=-1) * real
        return ops.sum(err, axis=-1) / ops.maximum(ops.sum(real, axis=-1), 1.0)

    def make_model(loss: Any, jit_compile: bool) -> Any:
        import keras

        keras.utils.set_random_seed(0)
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(256, activation="relu")(inputs)
        boxes = keras.layers.Dense(predictions * 4, activation="sigmoid")(hidden)
        model = keras.Model(inputs, keras.layers.Reshape((predictions, 4))(boxes))
        model.compile(optimizer="adam", loss=loss, jit_compile=jit_compile)
        return model

    return x, y, ordered_l1, make_model


def shape_name(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


# ---------------------------------------------------------------------------------------------
# Timing.


def time_calls(contender: Contender, prepared: Any, calls: int) -> float:
    """Seconds per call, averaged over `calls` back-to-back calls, garbage collector paused."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            contender.run(prepared)
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / calls


def calls_for(seconds_per_call: float, target_s: float, max_calls: int) -> int:
    """How many calls make one timing sample of about `target_s` seconds."""
    if seconds_per_call <= 0.0:
        return max_calls
    return max(1, min(max_calls, math.ceil(target_s / seconds_per_call)))


def rotated(names: list[str], shift: int) -> list[str]:
    """`names` rotated by `shift`, so that no contender always runs first in a round."""
    if not names:
        return names
    shift %= len(names)
    return names[shift:] + names[:shift]


# ---------------------------------------------------------------------------------------------
# The worker side of the protocol.


def emit(event: str, **payload: Any) -> None:
    print(PREFIX + json.dumps({"event": event, **payload}), flush=True)


def error_summary(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    first_lines = text.splitlines()[:6]
    return "\n".join(first_lines)


def _warm_up_case(
    case: Case, case_index: int, config: dict[str, Any], unavailable: dict[str, str]
) -> dict[str, Any]:
    """Pays each contender's first call, sizes its timing samples, runs the case's check."""
    x = case.make_input(case_rng(config["seed"], -1, case_index))
    first_call_s: dict[str, float] = {}
    calls: dict[str, int] = {}
    results: dict[str, Any] = {}
    for name, contender in list(case.contenders.items()):
        try:
            prepared = contender.prepare(x)
            start = time.perf_counter()
            results[name] = contender.run(prepared)
            first_call_s[name] = time.perf_counter() - start
            warm = min(time_calls(contender, prepared, 1) for _ in range(2))
        except Exception as error:
            unavailable[f"{name} [{case.name}]"] = error_summary(error)
            traceback.print_exc()
            del case.contenders[name]
            continue
        calls[name] = calls_for(warm, config["target_s"], config["max_calls"])
    check: dict[str, Any] = {}
    if case.check is not None and results:
        try:
            check = case.check(x, results)
        except Exception as error:
            check = {"error": error_summary(error)}
            traceback.print_exc()
    return {"first_call_s": first_call_s, "calls": calls, "check": check, **case.notes}


def _time_round(
    cases: list[Case], calls: dict[str, dict[str, int]], config: dict[str, Any], round_index: int
) -> None:
    """Announces each sample before timing it, so that run.py knows which one hangs."""
    for case_index, case in enumerate(cases):
        x = case.make_input(case_rng(config["seed"], round_index, case_index))
        for name in rotated(list(case.contenders), round_index):
            contender = case.contenders[name]
            prepared = contender.prepare(x)
            emit("start", case=case.name, contender=name)
            seconds = time_calls(contender, prepared, calls[case.name][name])
            emit("sample", case=case.name, contender=name, seconds=seconds)
    emit("round", index=round_index)


def serve(build: Callable[[dict[str, Any]], tuple[list[Case], dict[str, Any]]]) -> int:
    """Runs a worker: `build(config)` returns its cases and facts about its environment.

    `build` records contenders it cannot create in `info["unavailable"]` (name -> reason).
    """
    config = json.loads(sys.argv[1])
    try:
        cases, info = build(config)
        unavailable = info.setdefault("unavailable", {})
        info["cases"] = {
            case.name: _warm_up_case(case, index, config, unavailable)
            for index, case in enumerate(cases)
        }
    except Exception as error:
        traceback.print_exc()
        emit("error", message=error_summary(error))
        return 1
    calls = {name: case_info["calls"] for name, case_info in info["cases"].items()}
    emit("ready", info=info)
    for line in iter(sys.stdin.readline, ""):
        command = line.strip()
        if command == "quit":
            break
        _time_round(cases, calls, config, int(command))
    return 0


# ---------------------------------------------------------------------------------------------
# Single-process criterion benchmarks (masks.py, lw_detr.py): results to the host, quiet-CPU
# waits, timed calls, peak memory in processes of their own.


def to_host(tree: Any) -> Any:
    """`tree` with every array made a NumPy array (dicts, lists and tuples kept)."""
    if isinstance(tree, dict):
        return {key: to_host(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_host(value) for value in tree)
    return np.asarray(tree)


def versions(backend: str) -> str:
    """The versions of the packages a criterion benchmark on `backend` runs with."""
    import contextlib
    import importlib.metadata as metadata

    names = ["keras", "numpy", "torch", "transformers", "scipy"]
    names += {"jax": ["jax", "jaxlib"], "tensorflow": ["tensorflow"]}.get(backend, [])
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def cpu_busy() -> tuple[float, float]:
    """Seconds of CPU time: every process's (from /proc/stat), and this process's."""
    import os

    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    times = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), times.user + times.system


def wait_quiet(limit: float, max_wait: float) -> float:
    """Waits (up to `max_wait` s) for 2 s in which other processes use < `limit` cores."""
    start = time.perf_counter()
    while True:
        before = cpu_busy()
        time.sleep(2.0)
        after = cpu_busy()
        foreign = ((after[0] - before[0]) - (after[1] - before[1])) / 2.0
        if foreign < limit or time.perf_counter() - start > max_wait:
            return foreign


def timed(step: Callable[..., Any], data: Any, calls: int) -> tuple[float, float, Any]:
    """Mean seconds per call of `step(*data)`; cores other processes used; the last result."""
    busy = cpu_busy()
    start = time.perf_counter()
    for _ in range(calls):
        result = step(*data)
    wall = time.perf_counter() - start
    after = cpu_busy()
    foreign = max(0.0, ((after[0] - busy[0]) - (after[1] - busy[1])) / wall)
    return wall / calls, foreign, result


def add_criterion_arguments(parser: Any, rounds: int) -> None:
    """The options of the criterion benchmarks (masks.py, lw_detr.py): rounds, quiet, memory."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--calls", type=int, default=1, help="calls per sample (their mean)")
    parser.add_argument("--only", default="ours,transformers", help="contenders, comma-separated")
    parser.add_argument(
        "--resident",
        action="store_true",
        help="our inputs made backend arrays before timing and our results left there",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.2,
        help="before each sample, wait until other processes use fewer cores than this",
    )
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="longest wait (s)")
    parser.add_argument("--memory", action="store_true", help="peak memory of each, no timing")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--parts", action="store_true", help="JAX: time the parts of our step")


@dataclass
class Rounds:
    """What `interleaved_rounds` measured, per contender unless said."""

    first: dict[str, float]  # seconds of the first call (trace, compile, run)
    warm_values: dict[str, float]  # the loss on the seed-0 input
    warm_results: dict[str, Any]  # (value, gradients) on the seed-0 input
    times: dict[str, list[float]]  # seconds per call, by round
    foreign: dict[str, list[float]]  # other processes' cores during each sample
    values: dict[str, list[float]]  # the loss, by round
    counts: list[int]  # real targets per round (all images)
    compared: list[Any]  # `compare(results)` of each round where both contenders ran

    def median_ms(self) -> dict[str, float]:
        return {name: statistics.median(samples) * 1e3 for name, samples in self.times.items()}


def interleaved_rounds(
    steps: dict[str, Callable[..., Any]],
    make_input: Callable[[int], Any],
    prepare: Callable[[str, Any], Any],
    value_of: Callable[[str, Any], float],
    args: Any,
    compare: Callable[[dict[str, Any]], Any] | None = None,
) -> Rounds:
    """The first call of each contender on input 0, then `args.rounds` interleaved rounds.

    Round r times every contender on `make_input(r + 1)`, in alternating order, each sample
    after `wait_quiet`; `prepare(name, data)` gives a contender's arguments before its clock
    starts and `value_of(name, result)` its loss. The first results must be finite.
    """
    first: dict[str, float] = {}
    warm_values: dict[str, float] = {}
    warm_results: dict[str, Any] = {}
    data = make_input(0)
    for name, step in steps.items():
        first[name], _, result = timed(step, prepare(name, data), 1)
        warm_values[name] = value_of(name, result)
        warm_results[name] = result
        grads = to_host(result[1])
        grads = grads if isinstance(grads, list) else [grads]
        assert np.isfinite(warm_values[name]), name
        assert all(np.all(np.isfinite(g)) for one in grads for g in one.values()), name
    times: dict[str, list[float]] = {name: [] for name in steps}
    foreign: dict[str, list[float]] = {name: [] for name in steps}
    values: dict[str, list[float]] = {name: [] for name in steps}
    counts: list[int] = []
    compared: list[Any] = []
    for round_ in range(args.rounds):
        data = make_input(round_ + 1)
        counts.append(int((data[0]["labels"] >= 0).sum()))
        order = list(steps) if round_ % 2 == 0 else list(steps)[::-1]
        results = {}
        for name in order:
            prepared = prepare(name, data)
            wait_quiet(args.quiet, args.quiet_wait)
            seconds, others, results[name] = timed(steps[name], prepared, args.calls)
            times[name].append(seconds)
            foreign[name].append(others)
            values[name].append(value_of(name, results[name]))
        if compare is not None and len(results) == 2:
            compared.append(compare(results))
        del results
    return Rounds(first, warm_values, warm_results, times, foreign, values, counts, compared)


def print_rounds(rounds: Rounds, digits: int = 2) -> None:
    """Each contender's median, spread, samples and the other processes' share."""
    median = rounds.median_ms()
    for name, samples in rounds.times.items():
        print(
            f"  {name:12s} median {median[name]:8.1f} ms  "
            f"(min {min(samples) * 1e3:.1f}, max {max(samples) * 1e3:.1f}; "
            f"first call {rounds.first[name]:.1f} s)"
        )
        print(f"    samples (s, by round): {[round(t, digits) for t in samples]}")
        print(
            f"    other processes' cores meanwhile: {[round(c, 2) for c in rounds.foreign[name]]}"
        )
    if "ours" in median and "transformers" in median:
        print(f"  ours / transformers = {median['ours'] / median['transformers']:.3f}")


def proc_status(field_name: str) -> int:
    """A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def reset_peak() -> None:
    """Resets this process's peak resident set size (`VmHWM`)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def memory_of_step(name: str, step: Callable[..., Any], data: Any, steps: int) -> None:
    """Prints, as a JSON line, the peaks of `step(*data)` above the resident baseline.

    The baseline is read after the imports and the input; the peaks after the first call
    (trace, compile, run) and, reset again, over `steps` more calls.
    """
    gc.collect()
    baseline = proc_status("VmRSS")
    reset_peak()
    step(*data)
    first = proc_status("VmHWM") - baseline
    reset_peak()
    for _ in range(steps):
        step(*data)
    after = proc_status("VmHWM") - baseline
    print(json.dumps({"name": name, "baseline": baseline, "first": first, "steps": after}))


def memory_in_processes(script: str, names: list[str], flags: list[str], steps: int) -> None:
    """Runs `script --memory-of NAME --memory-steps STEPS *flags` per name; prints its peaks."""
    import subprocess

    mib = 2**20
    for name in names:
        command = [sys.executable, script, "--memory-of", name, "--memory-steps", str(steps)]
        done = subprocess.run(command + flags, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            print(f"  {name}: failed (exit {done.returncode})\n{done.stderr[-3000:]}")
            continue
        result = json.loads(lines[-1])
        print(
            f"  {name:12s} baseline {result['baseline'] / mib:7.0f} MiB; peak above it: "
            f"first call {result['first'] / mib:7.0f} MiB, "
            f"next {steps} calls {result['steps'] / mib:7.0f} MiB"
        )


def to_backend(tree: Any, backend: str) -> Any:
    """Backend arrays of a NumPy array or a dict of them (resident inputs, TensorFlow's step)."""
    if backend == "jax":
        import jax.numpy as jnp

        convert: Callable[[np.ndarray], Any] = jnp.asarray
    elif backend == "tensorflow":
        import tensorflow as tf

        convert = tf.constant
    else:
        import torch

        convert = torch.from_numpy
    if isinstance(tree, dict):
        return {key: convert(value) for key, value in tree.items()}
    return convert(tree)


def value_and_grad_step(loss: Callable[[Any, Any], Any], backend: str, resident: bool) -> Any:
    """`step(y_true, y_pred) -> (value, gradient w.r.t. y_pred)` of a loss on arrays or dicts.

    Compiled as a whole on JAX (`jax.jit(jax.value_and_grad)`) and TensorFlow
    (`tf.function(jit_compile=True)` with a `GradientTape`), eager with `.backward()` on
    PyTorch. NumPy in and out, unless `resident` (JAX, TensorFlow): backend arrays in,
    results left on the backend.
    """
    if backend == "jax":
        import jax

        def total(y_true: Any, y_pred: Any) -> Any:
            return loss(y_true, y_pred)

        step_jax = jax.jit(jax.value_and_grad(total, argnums=1))
        if resident:
            return lambda t, p: jax.block_until_ready(step_jax(t, p))
        return lambda t, p: to_host(step_jax(t, p))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step_tf(y_true: Any, y_pred: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                value = loss(y_true, y_pred)
            return value, tape.gradient(value, y_pred)

        if resident:
            return step_tf
        return lambda t, p: to_host(step_tf(to_backend(t, backend), to_backend(p, backend)))
    import torch

    def step_torch(y_true: Any, y_pred: Any) -> tuple[float, Any]:
        y_true = {key: torch.as_tensor(value) for key, value in y_true.items()}
        y_pred = {
            key: torch.as_tensor(value).detach().requires_grad_() for key, value in y_pred.items()
        }
        value = loss(y_true, y_pred)
        value.backward()
        grads = {key: tensor.grad.numpy() for key, tensor in y_pred.items()}
        return float(value.item()), grads

    return step_torch
