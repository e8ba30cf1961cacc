"""Benchmarks: our solver and loss side by side with SciPy, optax and hungarian-loss 1.0.3.

Usage: `nox -s bench [-- OPTIONS]`, or `python benchmarks/run.py [OPTIONS]` in an environment
with `pip install -e .[bench]`. See benchmarks/README.md.

This script is only the conductor. Each Keras backend needs its own process (KERAS_BACKEND is
read when Keras is imported), and hungarian-loss 1.0.3 has our import name, so it runs from its
own virtual environment. The workers (worker_*.py, protocol in common.py) compile and warm up,
then time one repeat round each time they are asked: the rounds of the processes in a group are
interleaved, so that slow phases of a noisy machine hit every contender alike.

Groups, run one after the other:
- solvers: ours on TensorFlow (XLA), on JAX and on PyTorch, SciPy's loop, optax under jit + vmap;
- loss: our `hungarian_loss` (TensorFlow, PyTorch) against 1.0.3's on the same `[32, 10, 4]` boxes;
- train: `train_on_batch` of a DETR-like head with `HungarianLoss` against an order-bound L1
  (TensorFlow and PyTorch).
- layers: DETR's matching of 6 decoder layers in one call, in 6 calls, and as SciPy's host loop.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report
from common import PREFIX, box_pairs, case_rng, parse_case, rotated

HERE = Path(__file__).resolve().parent
# DESIGN.md's four shapes, the masked DETR case (8 images x 6 layers), wide and large ones, the
# square series of the scaling plot (n = 10 ... 1000), the long-path cases (c_ij = i * j) and
# DETR's matching cost of random, collapsed and identical predictions (16 images, <= 60 targets).
DEFAULT_SHAPES = (
    "32x10x10",
    "32x20x100",
    "8x100x300",
    "16x100x100",
    "detr:48x64x300",
    "64x100x300",
    "64x300x300",
    "16x10x10",
    "16x30x30",
    "4x300x300",
    "1x500x500",
    "1x1000x1000",
    "16x400x400",
    "mixij:16x400x400",
    "ij:1x600x600",
    "detrrandom:16x60x300",
    "detrcollapsed:16x60x300",
    "detridentical:16x60x300",
)
QUICK_SHAPES = ("32x10x10", "32x20x100")
LEGACY_REQUIREMENT = "hungarian-loss==1.0.3"
GROUPS = ("solvers", "loss", "train", "layers")
VERSIONED = (
    "tensorflow",
    "keras",
    "jax",
    "jaxlib",
    "torch",
    "optax",
    "scipy",
    "numpy",
    "matplotlib",
)


# ---------------------------------------------------------------------------------------------
# Options.


def parse_shape(text: str) -> str:
    try:
        parse_case(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"Expected a case like 32x10x10 or detr:48x64x300. Received: {text!r}"
        ) from error
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 repeats, 2 shapes")
    parser.add_argument("--repeats", type=int, help="interleaved repeat rounds (default 15)")
    parser.add_argument(
        "--shapes",
        type=lambda text: [parse_shape(part) for part in text.split(",")],
        help="solver cases as [KIND:]BxMxN,... with KIND uniform (default), detr, ij, mixij, "
        "detrrandom, detrcollapsed or detridentical "
        "(default: DESIGN.md's shapes and more, see benchmarks/README.md)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(GROUPS),
        help=f"comma-separated groups to run, of {', '.join(GROUPS)} (default: all)",
    )
    parser.add_argument(
        "--target-ms", type=float, help="length of one timing sample (default 100, quick 20)"
    )
    parser.add_argument(
        "--backends",
        type=lambda text: text.split(","),
        default=["tensorflow", "jax", "torch"],
        help="Keras backends of the solver group (default: tensorflow,jax,torch)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sample-timeout",
        type=float,
        default=15.0,
        help="seconds after which a timing sample counts as timed out and its worker restarts",
    )
    parser.add_argument("--max-restarts", type=int, default=4, help="per worker (default 4)")
    parser.add_argument(
        "--cpu", action="store_true", help="hide accelerators from TensorFlow and JAX"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output folder")
    parser.add_argument(
        "--no-legacy", action="store_true", help="skip hungarian-loss 1.0.3 (no virtualenv)"
    )
    parser.add_argument(
        "--legacy-venv",
        type=Path,
        default=HERE / ".venv-hl103",
        help="virtualenv for hungarian-loss 1.0.3, created on first use",
    )
    parser.add_argument(
        "--legacy-eager-calls",
        type=int,
        default=0,
        help="also time 1.0.3 eagerly this many times (about a minute per call on 2 CPU cores)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(GROUPS))
    if unknown:
        parser.error(f"unknown groups {unknown}; expected some of {list(GROUPS)}")
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.shapes = args.shapes or list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    args.target_ms = args.target_ms or (20.0 if args.quick else 100.0)
    return args


def worker_config(args: argparse.Namespace) -> dict[str, Any]:
    """What every worker reads from its command line."""
    return {
        "seed": args.seed,
        "target_s": args.target_ms / 1000.0,
        "max_calls": 200,
        "shapes": list(args.shapes),
        "loss_shape": [32, 10],
        "legacy_eager_calls": args.legacy_eager_calls,
        "train": {"batch": 32, "features": 64, "predictions": 100, "targets": 20},
        "layers": {
            "batch": 8,
            "layers": 6,
            "queries": 300,
            "max_targets": 50,
            "mean_targets": 8,
            "classes": 91,
        },
    }


# ---------------------------------------------------------------------------------------------
# The machine.


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_revision() -> dict[str, Any]:
    """The commit measured, and whether the work tree had changes (read-only git calls)."""

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(["git", *command], capture_output=True, text=True, cwd=HERE)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status)
    return {"commit": git("rev-parse", "HEAD"), "dirty": dirty}


def machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version_of(name) for name in (*VERSIONED, "hungarian-loss")},
    }


# ---------------------------------------------------------------------------------------------
# The virtual environment of hungarian-loss 1.0.3.


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def legacy_ready(python: Path) -> bool:
    probe = (
        "import importlib.metadata as m; "
        "assert m.version('hungarian-loss') == '1.0.3'; m.version('tensorflow')"
    )
    if not python.exists():
        return False
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def install_plans(venv: Path, requirements: list[str]) -> list[list[list[Any]]]:
    """Ways to build the virtualenv, in order: standard library venv + pip, then uv."""
    python = venv_python(venv)
    plans = [
        [
            [sys.executable, "-m", "venv", "--clear", venv],
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
        ]
    ]
    uv = shutil.which("uv")
    if uv is not None:
        plans.append(
            [
                [uv, "venv", "--python", sys.executable, venv],
                [uv, "pip", "install", "--python", python, *requirements],
            ]
        )
    return plans


def run_plan(commands: list[list[Any]]) -> None:
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise RuntimeError(f"`{' '.join(map(str, command))}` failed:\n{tail}")


def ensure_legacy_env(venv: Path) -> dict[str, Any]:
    """Creates (once) a virtualenv with 1.0.3 and this environment's TensorFlow version.

    Returns `{"python": path or None, "how": ..., "reason": ...}`.
    """
    python = venv_python(venv)
    if legacy_ready(python):
        return {"python": str(python), "how": f"reused {venv}"}
    tensorflow = version_of("tensorflow")
    requirements = [LEGACY_REQUIREMENT, f"tensorflow=={tensorflow}" if tensorflow else "tensorflow"]
    log(f"creating {venv} with {' '.join(requirements)} (once; a minute or more)")
    failures = []
    for plan in install_plans(venv, requirements):
        try:
            run_plan(plan)
            break
        except (OSError, RuntimeError) as error:
            failures.append(str(error))
    else:
        return {"python": None, "reason": "; ".join(failures)}
    if not legacy_ready(python):
        return {"python": None, "reason": f"{LEGACY_REQUIREMENT} not importable in {venv}"}
    return {"python": str(python), "how": f"created {venv}: {' '.join(requirements)}"}


# ---------------------------------------------------------------------------------------------
# Workers and groups.


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class WorkerError(RuntimeError):
    """A worker exited, reported an error, or could not be written to."""


class WorkerTimeout(WorkerError):
    """A worker did not answer in time (1.0.3 runs for minutes on some inputs)."""


@dataclass
class WorkerSpec:
    name: str
    script: str
    python: str
    env: dict[str, str] = field(default_factory=dict)
    setup_timeout_s: float = 900.0


class Worker:
    """A worker process: JSON messages from its standard output, commands to its input."""

    def __init__(self, spec: WorkerSpec, config: dict[str, Any], log_dir: Path) -> None:
        self.name = spec.name
        self.log_path = log_dir / f"{spec.name}.log"
        self._log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [spec.python, str(HERE / spec.script), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=spec.env,
            cwd=HERE.parent,
        )
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read_messages, daemon=True).start()

    def _read_messages(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self._messages.put(json.loads(line[len(PREFIX) :]))
        self._messages.put(None)

    def log_tail(self, lines: int = 12) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def next_message(self, timeout_s: float) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkerTimeout(f"no answer within {timeout_s:.0f} s") from None
        if message is None:
            code = self.process.wait()
            raise WorkerError(f"exited with code {code}:\n{self.log_tail()}")
        if message["event"] == "error":
            raise WorkerError(f"{message['message']}\n{self.log_tail()}")
        return message

    def expect_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.next_message(max(0.0, deadline - time.monotonic()))
            if message["event"] == "ready":
                return message["info"]

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise WorkerError(f"cannot send {command!r}: {error}") from None

    def close(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            try:
                if kill:
                    raise WorkerTimeout("killed")
                self.send("quit")
                self.process.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Member:
    """A worker of a group, what it measured, and how it fared."""

    spec: WorkerSpec
    worker: Worker | None = None
    info: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    timeouts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def record(self, case: str, contender: str, seconds: float | None) -> None:
        """`None`: the sample timed out (counted as slower than any other in medians)."""
        self.samples.setdefault(case, {}).setdefault(contender, []).append(seconds)

    def outcome(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "error": self.error,
            "samples": self.samples,
            "timeouts": self.timeouts,
        }


@dataclass
class Schedule:
    repeats: int
    sample_timeout_s: float
    max_restarts: int


def start(member: Member, config: dict[str, Any], log_dir: Path, group: str) -> bool:
    """(Re)starts a worker and waits until it has compiled and warmed up."""
    restart = bool(member.info)
    log(f"{group}: {'restarting' if restart else 'starting'} {member.spec.name} (compiling)")
    # A restart repeats no one-off work (1.0.3's eager calls).
    worker = Worker(member.spec, {**config, "restart": restart}, log_dir)
    try:
        info = worker.expect_ready(member.spec.setup_timeout_s)
    except WorkerError as error:
        worker.close(kill=True)
        member.error = f"setup failed: {error}"
        log(f"{group}: {member.spec.name} setup failed: {error}")
        return False
    member.info = member.info or info
    member.worker = worker
    return True


def play_round(member: Member, round_index: int, sample_timeout_s: float) -> bool:
    """Times one round in the member's worker; False if a sample timed out (then recorded)."""
    assert member.worker is not None
    member.worker.send(str(round_index))
    running: tuple[str, str] | None = None
    while True:
        try:
            message = member.worker.next_message(sample_timeout_s)
        except WorkerTimeout:
            if running is not None:
                member.record(*running, None)
                member.timeouts.append(
                    {"round": round_index, "case": running[0], "contender": running[1]}
                )
            return False
        if message["event"] == "start":
            running = (message["case"], message["contender"])
        elif message["event"] == "sample":
            member.record(message["case"], message["contender"], message["seconds"])
            running = None
        elif message["event"] == "round":
            return True


def run_group(
    name: str, specs: list[WorkerSpec], config: dict[str, Any], schedule: Schedule, log_dir: Path
) -> dict[str, dict[str, Any]]:
    """Sets the workers up one at a time (compile times unshared), then interleaves rounds.

    A sample that takes longer than `schedule.sample_timeout_s` is recorded as timed out; its
    worker is killed and started again (at most `schedule.max_restarts` times) for the next
    round. Returns each worker's `outcome()`.
    """
    members = [Member(spec) for spec in specs]
    active = [member for member in members if start(member, config, log_dir, name)]
    for round_index in range(schedule.repeats):
        for member in rotated(list(active), round_index):
            assert member.worker is not None
            try:
                finished = play_round(member, round_index, schedule.sample_timeout_s)
            except WorkerError as error:
                member.error = f"round {round_index + 1} failed: {error}"
                log(f"{name}: {member.spec.name}: {member.error}")
                member.worker.close(kill=True)
                active.remove(member)
                continue
            if finished:
                continue
            member.worker.close(kill=True)
            log(f"{name}: {member.spec.name} timed out in round {round_index + 1}")
            if len(member.timeouts) > schedule.max_restarts:
                member.error = f"stopped after {len(member.timeouts)} timed-out samples"
                active.remove(member)
            elif not start(member, config, log_dir, name):
                active.remove(member)
        log(f"{name}: round {round_index + 1}/{schedule.repeats} done")
    for member in active:
        assert member.worker is not None
        member.worker.close()
    return {member.spec.name: member.outcome() for member in members}


def base_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Two frameworks may share one accelerator: neither takes all its memory up front.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    return env


def backend_spec(name: str, script: str, backend: str, args: argparse.Namespace) -> WorkerSpec:
    return WorkerSpec(name, script, sys.executable, {**base_env(args), "KERAS_BACKEND": backend})


def legacy_spec(python: str, args: argparse.Namespace) -> WorkerSpec:
    env = base_env(args)
    env.pop("PYTHONPATH", None)  # never let our package shadow 1.0.3
    setup_timeout = 900.0 + 180.0 * max(0, args.legacy_eager_calls)
    return WorkerSpec("loss-hl103", "worker_legacy.py", python, env, setup_timeout)


# ---------------------------------------------------------------------------------------------
# Summaries.


def rank_statistic(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank quantile: defined even when some values are infinite (timed out)."""
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def sample_stats(seconds: list[float | None]) -> dict[str, Any]:
    """Milliseconds; a timed-out sample counts as slower than all others, shown as None."""
    values = sorted(math.inf if s is None else 1000.0 * s for s in seconds)

    def finite(value: float) -> float | None:
        return None if math.isinf(value) else value

    median = statistics.median(values)
    return {
        "median_ms": finite(median),
        "median_timed_out": math.isinf(median),
        "min_ms": finite(values[0]),
        "max_ms": finite(values[-1]),
        "quartiles_ms": [finite(rank_statistic(values, q)) for q in (0.25, 0.75)],
        "repeats": len(values),
        "timed_out": sum(s is None for s in seconds),
        "samples_ms": [None if s is None else 1000.0 * s for s in seconds],
    }


def summarize(outcomes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`{case: {contender: stats}}` over the workers of a group (contender names are unique)."""
    results: dict[str, dict[str, Any]] = {}
    for worker_name, outcome in outcomes.items():
        cases_info = outcome["info"].get("cases", {})
        for case, per_contender in outcome["samples"].items():
            case_info = cases_info.get(case, {})
            for contender, seconds in per_contender.items():
                results.setdefault(case, {})[contender] = {
                    **sample_stats(seconds),
                    "calls_per_sample": case_info.get("calls", {}).get(contender),
                    "first_call_s": case_info.get("first_call_s", {}).get(contender),
                    "worker": worker_name,
                }
    return results


def legacy_matching(pairs: list[list[list[int]]], config: dict[str, Any]) -> dict[str, Any]:
    """Judges 1.0.3's matchings on the warm-up input: complete permutations? optimal?"""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    batch, count = config["loss_shape"]
    y_true, y_pred = box_pairs(case_rng(config["seed"], -1, 0), batch, count)
    complete = optimal = 0
    for sample, sample_pairs in enumerate(pairs):
        # 1.0.3's cost: sqrt(squared distance + 1e-4).
        cost = np.sqrt(cdist(y_true[sample], y_pred[sample], "sqeuclidean") + 1e-4)
        rows, cols = np.asarray(sample_pairs, dtype=int).reshape(-1, 2).T
        is_complete = len(set(rows)) == len(set(cols)) == len(rows) == count
        best_rows, best_cols = linear_sum_assignment(cost)
        best = cost[best_rows, best_cols].sum()
        complete += is_complete
        optimal += is_complete and bool(np.isclose(cost[rows, cols].sum(), best, rtol=1e-5))
    return {"samples": len(pairs), "complete_matchings": complete, "optimal_matchings": optimal}


def group_record(
    outcomes: dict[str, dict[str, Any]], ratio_specs: list[tuple[str, str, str]]
) -> dict[str, Any]:
    results = summarize(outcomes)
    return {
        "workers": {
            name: {key: outcome[key] for key in ("info", "error", "timeouts")}
            for name, outcome in outcomes.items()
        },
        "results": results,
        "ratios": report.ratios(results, ratio_specs),
    }


# ---------------------------------------------------------------------------------------------
# The groups.


def run_solvers(args: argparse.Namespace, config: dict[str, Any], log_dir: Path) -> dict:
    specs = [
        backend_spec(f"solvers-{backend}", "worker_solvers.py", backend, args)
        for backend in ("tensorflow", "jax", "torch")
        if backend in args.backends
    ]
    outcomes = run_group("solvers", specs, config, schedule(args), log_dir)
    return group_record(outcomes, report.SOLVER_RATIOS)


def run_loss(args: argparse.Namespace, config: dict[str, Any], log_dir: Path) -> dict:
    specs = [
        backend_spec("loss-ours", "worker_loss.py", "tensorflow", args),
        backend_spec("loss-torch", "worker_loss.py", "torch", args),
    ]
    legacy_env: dict[str, Any] = {"python": None, "reason": "skipped (--no-legacy)"}
    if not args.no_legacy:
        legacy_env = ensure_legacy_env(args.legacy_venv)
        if legacy_env["python"]:
            specs.append(legacy_spec(legacy_env["python"], args))
        else:
            log(f"hungarian-loss 1.0.3 unavailable: {legacy_env['reason']}")
    outcomes = run_group("loss", specs, config, schedule(args), log_dir)
    record = group_record(outcomes, report.LOSS_RATIOS)
    record["legacy_env"] = legacy_env
    legacy_info = outcomes.get("loss-hl103", {}).get("info", {})
    for case_info in legacy_info.get("cases", {}).values():
        pairs = case_info.get("check", {}).pop("pairs", None)
        if pairs is not None:
            record["legacy_matching"] = legacy_matching(pairs, config)
    return record


def run_train(args: argparse.Namespace, config: dict[str, Any], log_dir: Path) -> dict:
    specs = [
        backend_spec("train-tensorflow", "worker_train.py", "tensorflow", args),
        backend_spec("train-torch", "worker_train.py", "torch", args),
    ]
    outcomes = run_group("train", specs, config, schedule(args), log_dir)
    return group_record(outcomes, report.TRAIN_RATIOS)


def run_layers(args: argparse.Namespace, config: dict[str, Any], log_dir: Path) -> dict:
    specs = [
        backend_spec("layers-tensorflow", "worker_layers.py", "tensorflow", args),
        backend_spec("layers-jax", "worker_layers.py", "jax", args),
    ]
    outcomes = run_group("layers", specs, config, schedule(args), log_dir)
    return group_record(outcomes, report.LAYERS_RATIOS)


def schedule(args: argparse.Namespace) -> Schedule:
    return Schedule(args.repeats, args.sample_timeout, args.max_restarts)


RUNNERS = {"solvers": run_solvers, "loss": run_loss, "train": run_train, "layers": run_layers}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = worker_config(args)
    started = time.monotonic()
    record: dict[str, Any] = {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "source": source_revision(),
        "config": {
            **config,
            "repeats": args.repeats,
            "sample_timeout_s": args.sample_timeout,
            "max_restarts": args.max_restarts,
            "groups": args.only,
            "cpu_only": args.cpu,
        },
    }
    with tempfile.TemporaryDirectory(prefix="hungarian-bench-") as log_dir:
        for group in GROUPS:
            if group in args.only:
                record[group] = RUNNERS[group](args, config, Path(log_dir))
    record["wall_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    markdown = report.markdown(record)
    (args.out / "results.md").write_text(markdown)
    plot_note = report.plot(record, args.out / "results.png")
    scaling_note = report.plot_scaling(record, args.out / "scaling.png")
    print(markdown)
    log(
        f"wrote {args.out / 'results.json'}, results.md, results.png ({plot_note}), "
        f"scaling.png ({scaling_note})"
    )
    log(f"total {record['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
