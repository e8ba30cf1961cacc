"""Turns run.py's record into a markdown report and a bar chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LABELS = {
    "ours_tf": "ours, TF (XLA)",
    "ours_jax": "ours, JAX (jit)",
    "scipy_tf": "SciPy loop (TF process)",
    "scipy_jax": "SciPy loop (JAX process)",
    "optax": "optax (jit + vmap)",
    "ours_torch": "ours, torch (torch.compile)",
    "scipy_torch": "SciPy loop (torch process)",
    "ours_xla": "ours, tf.function(jit_compile=True)",
    "ours_graph": "ours, tf.function",
    "hl103_xla": "1.0.3, tf.function(jit_compile=True)",
    "hl103_graph": "1.0.3, tf.function",
    "hungarian": "HungarianLoss(l1: 5, giou: 2)",
    "ordered_l1": "order-bound L1 (no matching)",
    "one_call_tf": "ours, all layers in one call (TF, XLA)",
    "layer_calls_tf": "ours, one call per layer (TF, XLA)",
    "host_scipy_tf": "device cost + copy + SciPy per image and layer (TF)",
    "one_call_jax": "ours, all layers in one call (JAX, jit)",
    "layer_calls_jax": "ours, one call per layer (JAX, jit)",
    "host_scipy_jax": "device cost + copy + SciPy per image and layer (JAX)",
    "hungarian_torch": "torch: HungarianLoss(l1: 5, giou: 2)",
    "ordered_l1_torch": "torch: order-bound L1 (no matching)",
}

# (label, numerator, denominator): medians of the same case.
SOLVER_RATIOS = [
    ("ours TF / SciPy", "ours_tf", "scipy_tf"),
    ("ours JAX / SciPy", "ours_jax", "scipy_jax"),
    ("ours TF / optax", "ours_tf", "optax"),
    ("ours JAX / optax", "ours_jax", "optax"),
    ("ours torch / ours JAX", "ours_torch", "ours_jax"),
    ("ours torch / SciPy", "ours_torch", "scipy_torch"),
]
LOSS_RATIOS = [
    ("ours XLA / 1.0.3 XLA", "ours_xla", "hl103_xla"),
    ("ours graph / 1.0.3 graph", "ours_graph", "hl103_graph"),
    ("ours XLA / 1.0.3 graph", "ours_xla", "hl103_graph"),
    ("ours torch / ours XLA", "ours_torch", "ours_xla"),
]
TRAIN_RATIOS = [
    ("TF: Hungarian / ordered L1", "hungarian", "ordered_l1"),
    ("torch: Hungarian / ordered L1", "hungarian_torch", "ordered_l1_torch"),
]
SOLVER_COLUMNS = [
    "ours_tf",
    "ours_jax",
    "ours_torch",
    "scipy_tf",
    "scipy_jax",
    "scipy_torch",
    "optax",
]
LAYERS_RATIOS = [
    ("one call / per-layer calls, TF", "one_call_tf", "layer_calls_tf"),
    ("one call / host SciPy, TF", "one_call_tf", "host_scipy_tf"),
    ("one call / per-layer calls, JAX", "one_call_jax", "layer_calls_jax"),
    ("one call / host SciPy, JAX", "one_call_jax", "host_scipy_jax"),
]
LAYERS_COLUMNS = [
    "one_call_tf", "layer_calls_tf", "host_scipy_tf",
    "one_call_jax", "layer_calls_jax", "host_scipy_jax",
]  # fmt: skip
UNAVAILABLE = "unavailable"


def ratios(
    results: dict[str, dict[str, Any]], specs: list[tuple[str, str, str]]
) -> dict[str, dict[str, float | None]]:
    table: dict[str, dict[str, float | None]] = {}
    for case, per_contender in results.items():
        table[case] = {}
        for label, numerator, denominator in specs:
            top = per_contender.get(numerator, {}).get("median_ms")
            bottom = per_contender.get(denominator, {}).get("median_ms")
            known = top is not None and bottom is not None and bottom > 0
            table[case][label] = top / bottom if known else None
    return table


# ---------------------------------------------------------------------------------------------
# Markdown.


def ms(value: float | None) -> str:
    if value is None:
        return UNAVAILABLE
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def seconds(value: float | None) -> str:
    return UNAVAILABLE if value is None else f"{value:.2f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


KIND_LABELS = {
    "detr": "DETR, masked",
    "ij": "c = i*j",
    "mixij": "one i*j among uniform",
    "detrrandom": "DETR cost, random predictions",
    "detrcollapsed": "DETR cost, collapsed predictions",
    "detridentical": "DETR cost, identical predictions",
}
# The square uniform cases of the scaling plot: n -> batch.
SCALING_SERIES = {10: 16, 30: 16, 100: 16, 300: 4, 1000: 1}


def case_label(case: str) -> str:
    kind, _, shape = case.rpartition(":")
    label = "(" + shape.replace("x", ", ") + ")"
    return f"{KIND_LABELS[kind]} {label}" if kind else label


def median_of(results: dict[str, Any], case: str, contender: str) -> float | None:
    entry = results.get(case, {}).get(contender)
    return None if entry is None else entry["median_ms"]


def median_cell(results: dict[str, Any], case: str, contender: str) -> str:
    """The median in ms, with a count of timed-out samples where there were any."""
    entry = results.get(case, {}).get(contender)
    if entry is None:
        return UNAVAILABLE
    text = "timed out" if entry.get("median_timed_out") else ms(entry["median_ms"])
    if entry.get("timed_out"):
        text += f" ({entry['timed_out']} of {entry['repeats']} timed out)"
    return text


def max_cell(results: dict[str, Any], case: str, contender: str) -> str:
    entry = results.get(case, {}).get(contender)
    if entry is None:
        return UNAVAILABLE
    return "timed out" if entry["max_ms"] is None else ms(entry["max_ms"])


def first_call_of(results: dict[str, Any], case: str, contender: str) -> float | None:
    entry = results.get(case, {}).get(contender)
    return None if entry is None else entry["first_call_s"]


def header_lines(record: dict[str, Any]) -> list[str]:
    machine, config = record["machine"], record["config"]
    versions = ", ".join(f"{name} {v}" for name, v in machine["versions"].items() if v)
    devices = []
    for group in ("solvers", "train"):
        for name, worker in record.get(group, {}).get("workers", {}).items():
            if "devices" in worker["info"]:
                devices.append(f"{name}: {', '.join(worker['info']['devices'])}")
    return [
        "# hungarian-loss benchmarks",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['cpu_count']} cores "
        f"({machine['usable_cores']} usable), {machine['platform']}, Python {machine['python']}.",
        f"- Versions: {versions}.",
        f"- Devices: {'; '.join(devices) or 'not reported'}.",
        f"- Run {record['created_utc']}, {record['wall_s']:.0f} s in all. "
        f"{config['repeats']} interleaved repeat rounds (contenders rotated inside each round, "
        "processes rotated across rounds, fresh float32 inputs each round, the same for all "
        "contenders). A sample is the mean time per call over back-to-back calls "
        f"(about {1000 * config['target_s']:.0f} ms of them), result brought to the host "
        "(`np.asarray`). Tables give medians over the rounds, in ms. A sample that takes more "
        f"than {config['sample_timeout_s']:g} s is stopped and counts as slower than all "
        "others (its process is then started again).",
        "- Ratios are ours / other, of medians: below 1 means ours is faster.",
        "",
    ]


def solver_lines(group: dict[str, Any]) -> list[str]:
    results, ratio_table = group["results"], group["ratios"]
    cases = list(results)
    header = ["B, M, N", *(LABELS[c] for c in SOLVER_COLUMNS), *(s[0] for s in SOLVER_RATIOS)]
    rows = [
        [
            case_label(case),
            *(median_cell(results, case, c) for c in SOLVER_COLUMNS),
            *(times(ratio_table[case][s[0]]) for s in SOLVER_RATIOS),
        ]
        for case in cases
    ]
    compiled = ["ours_tf", "ours_jax", "ours_torch", "optax"]
    compile_rows = [
        [case_label(case), *(seconds(first_call_of(results, case, c)) for c in compiled)]
        for case in cases
    ]
    lines = ["## Solver: time per call, float32 uniform costs (ms, median)", ""]
    lines += table(header, rows)
    lines += ["", "## Solver: first call, trace + compile (s)", ""]
    lines += table(["B, M, N", *(LABELS[c] for c in compiled)], compile_rows)
    warm_ups = [
        f"{name}: {worker['info']['backend_warm_up_s']:.2f} s"
        for name, worker in group["workers"].items()
        if "backend_warm_up_s" in worker["info"]
    ]
    lines += [
        "",
        "Each shape has its own fresh compiled function; a tiny solve first paid the backend's "
        f"one-time start-up ({'; '.join(warm_ups) or 'not reported'}).",
    ]
    lines += ["", *exactness_lines(group), ""]
    lines += steps_lines(group)
    lines += hostage_lines(results)
    lines += collapse_lines(results)
    return lines


def steps_lines(group: dict[str, Any]) -> list[str]:
    """Sequential loop steps of our solver per case (from the JAX worker's warm-up input)."""
    steps: dict[str, Any] = {}
    for worker in group["workers"].values():
        steps.update(worker["info"].get("loop_steps", {}))
    if not steps:
        return []
    names = ["auction_rounds", "phases", "bellman_ford_rounds", "light_steps"]
    rows = [
        [
            case_label(case),
            entry["strategy"],
            *(str(entry[name]) for name in names),
            f"{entry['bellman_ford_rounds'] / entry['phases']:.1f}" if entry["phases"] else "-",
        ]
        for case, entry in steps.items()
    ]
    header = [
        "case",
        "strategy",
        "auction rounds",
        "phases",
        "Bellman-Ford rounds",
        "light steps",
        "rounds per phase",
    ]
    return [
        "## Solver: sequential loop steps (the slowest sample of the batch sets them)",
        "",
        *table(header, rows),
        "",
    ]


def collapse_lines(results: dict[str, Any]) -> list[str]:
    """How much collapsed or identical predictions slow each contender on DETR's cost."""
    lines = []
    for case in results:
        kind, _, shape = case.rpartition(":")
        random_case = f"detrrandom:{shape}"
        if kind not in ("detrcollapsed", "detridentical") or random_case not in results:
            continue
        lines += [
            f"{case_label(case)}, time / random predictions' ({case_label(random_case)}):",
            "",
        ]
        for contender in ("ours_tf", "ours_jax", "ours_torch", "scipy_tf", "scipy_jax"):
            slow, base = (
                median_of(results, case, contender),
                median_of(results, random_case, contender),
            )
            if slow and base:
                lines.append(f"- {LABELS[contender]}: {times(slow / base)}x")
        lines.append("")
    return lines


def hostage_lines(results: dict[str, Any]) -> list[str]:
    """How much one hard sample (c = i*j) slows a batch of uniform ones."""
    lines = []
    for case in results:
        kind, _, shape = case.rpartition(":")
        if kind != "mixij" or shape not in results:
            continue
        lines += [
            f"One c = i*j sample in a batch of uniform ones ({case_label(shape)}), time / the "
            "all-uniform batch's:",
            "",
        ]
        for contender in ("ours_tf", "ours_jax", "scipy_tf", "scipy_jax", "optax"):
            mixed, uniform = (
                median_of(results, case, contender),
                median_of(results, shape, contender),
            )
            if mixed and uniform:
                lines.append(f"- {LABELS[contender]}: {times(mixed / uniform)}x")
        lines.append("")
    return lines


def exactness_lines(group: dict[str, Any]) -> list[str]:
    worst: dict[str, float] = {}
    counts_ok: dict[str, bool] = {}
    for worker in group["workers"].values():
        for case_info in worker["info"].get("cases", {}).values():
            for name, check in case_info.get("check", {}).items():
                if not isinstance(check, dict) or "max_abs_total_cost_diff_vs_scipy" not in check:
                    continue
                diff = check["max_abs_total_cost_diff_vs_scipy"]
                worst[name] = max(worst.get(name, 0.0), diff)
                counts_ok[name] = counts_ok.get(name, True) and check["matched_rows_equal_scipy"]
    if not worst:
        return []
    parts = [
        f"{LABELS.get(name, name)} {diff:.2g}" + ("" if counts_ok[name] else " (row counts differ)")
        for name, diff in worst.items()
        if not name.startswith("scipy")
    ]
    return [
        "Exactness on the warm-up input of every shape, largest |total cost - SciPy's| per sample: "
        + "; ".join(parts)
        + "."
    ]


def loss_lines(group: dict[str, Any], config: dict[str, Any]) -> list[str]:
    batch, count = config["loss_shape"]
    results = group["results"]
    case = f"{batch}x{count}x4"
    lines = [
        f"## Loss: `hungarian_loss(y_true, y_pred)`, Euclidean cost, ({batch}, {count}, 4) boxes",
        "",
    ]
    contenders = ["ours_xla", "ours_graph", "ours_torch", "hl103_xla", "hl103_graph"]
    rows = [
        [
            LABELS[c],
            median_cell(results, case, c),
            max_cell(results, case, c),
            seconds(first_call_of(results, case, c)),
        ]
        for c in contenders
    ]
    header = ["contender", "median ms", "max ms", "first call s (fresh process)"]
    lines += table(header, rows)
    ratio_row = group["ratios"].get(case)
    if ratio_row:
        lines += ["", "; ".join(f"{label}: {times(v)}" for label, v in ratio_row.items()) + "."]
    lines += ["", *legacy_lines(group, count), *value_lines(group, case, count)]
    return [*lines, ""]


def value_lines(group: dict[str, Any], case: str, count: int) -> list[str]:
    """Both losses on the warm-up input, put on one scale (1.0.3 divides by count**2)."""

    def check_of(worker: str, contender: str) -> dict[str, Any]:
        info = group["workers"].get(worker, {}).get("info", {})
        return info.get("cases", {}).get(case, {}).get("check", {}).get(contender, {})

    ours = check_of("loss-ours", "ours_xla").get("batch_mean_loss")
    legacy = check_of("loss-hl103", "hl103_xla").get("value")
    if ours is None or legacy is None:
        return []
    return [
        f"Values on the warm-up input: ours (batch mean of per-sample means over matched pairs) "
        f"{ours:.5f}; 1.0.3 {legacy:.6f}, times {count} = {legacy * count:.5f} (its cost adds "
        "1e-4 under the square root; a lower value can come from an incomplete matching).",
    ]


def legacy_lines(group: dict[str, Any], count: int) -> list[str]:
    env = group.get("legacy_env", {})
    if not env.get("python"):
        reason = " ".join(str(env.get("reason", "not run")).split())
        return [f"hungarian-loss 1.0.3: {UNAVAILABLE} ({reason})."]
    worker = group["workers"].get("loss-hl103", {})
    info = worker.get("info", {})
    if not info.get("cases"):
        return [f"hungarian-loss 1.0.3: {UNAVAILABLE}: {worker.get('error', 'not run')}"]
    lines = [
        f"hungarian-loss 1.0.3 ran in its own virtualenv ({env['how']}; TensorFlow "
        f"{info.get('tensorflow')}, Keras {info.get('keras')}). Its fair best is "
        "`tf.function(jit_compile=True)`; it returns the batch mean of `mean(cost * mask)` over "
        f"all {count}x{count} entries, a scalar, where ours returns one value per sample.",
    ]
    eager = info.get("eager", {})
    if eager.get("calls"):
        lines.append(
            f"1.0.3 eager: median {eager['median_s']:.1f} s per call over {eager['calls']} calls "
            f"(after a first call of {eager['first_call_s']:.1f} s), not interleaved."
        )
    else:
        lines.append(
            "1.0.3 eager was not timed (about a minute per call on 2 CPU cores); "
            "`--legacy-eager-calls 3` times it."
        )
    lines += timeout_lines(worker)
    if worker.get("error"):
        lines.append(f"1.0.3 stopped early: {worker['error'].splitlines()[0]}.")
    matching = group.get("legacy_matching")
    if matching:
        lines.append(
            f"1.0.3's matchings on the warm-up input: {matching['complete_matchings']} of "
            f"{matching['samples']} samples complete (a permutation), "
            f"{matching['optimal_matchings']} optimal (SciPy on its own cost)."
        )
    return lines


def timeout_lines(worker: dict[str, Any]) -> list[str]:
    timeouts = worker.get("timeouts", [])
    if not timeouts:
        return []
    which = ", ".join(
        f"round {t['round'] + 1} ({LABELS.get(t['contender'], t['contender'])})" for t in timeouts
    )
    return [
        f"1.0.3 timed out {len(timeouts)} time(s): {which}. Its loops have no bound and its "
        "running time depends heavily on the input: see the max column."
    ]


def train_lines(group: dict[str, Any], config: dict[str, Any]) -> list[str]:
    spec = config["train"]
    lines = [
        "## Training step: `model.train_on_batch`; TF: `jit_compile=True`, torch: Keras's default",
        "",
        f"Dense head: {spec['features']} features -> 256 -> {spec['predictions']} boxes x 4 "
        f"(sigmoid, center_xywh), batch {spec['batch']}, 1 to {spec['targets']} true boxes per "
        "image padded with -1 rows, Adam.",
        "",
    ]
    results = group["results"]
    rows = [
        [LABELS[c], median_cell(results, case, c), seconds(first_call_of(results, case, c))]
        for case in results
        for c in ("hungarian", "ordered_l1", "hungarian_torch", "ordered_l1_torch")
        if c in results[case]
    ]
    lines += table(["loss", "median ms / step", "first step s (compile)"], rows)
    for case_ratios in group["ratios"].values():
        lines += ["", "; ".join(f"{k}: {times(v)}" for k, v in case_ratios.items()) + "."]
    return [*lines, ""]


def layers_lines(group: dict[str, Any], config: dict[str, Any]) -> list[str]:
    spec = config["layers"]
    lines = [
        "## DETR matching of every decoder layer: one call, one call per layer, host SciPy",
        "",
        f"{spec['batch']} images x {spec['layers']} decoder layers, {spec['queries']} queries, "
        f"1 to {spec['max_targets']} targets per image (geometric, mean {spec['mean_targets']}; "
        f"padded with -1 rows), {spec['classes']} classes + no object; "
        "`DETRLoss().match` (class 1 + L1 5 + GIoU 2). The host loop computes each layer's "
        "cost on the device, copies it to the host and runs SciPy per image on its real "
        "targets (Hugging Face's DETR loss).",
        "",
    ]
    results = group["results"]
    rows = [
        [LABELS[c], median_cell(results, case, c), seconds(first_call_of(results, case, c))]
        for case in results
        for c in LAYERS_COLUMNS
        if c in results[case]
    ]
    lines += table(["contender", "median ms", "first call s (compile)"], rows)
    for case_ratios in group["ratios"].values():
        lines += ["", "; ".join(f"{k}: {times(v)}" for k, v in case_ratios.items()) + "."]
    for name, worker in group["workers"].items():
        for case, case_info in worker["info"].get("cases", {}).items():
            check = case_info.get("check", {})
            if "total_cost_minus_scipy" in check:
                gaps = ", ".join(
                    f"{k} {v:+.2e}" for k, v in check["total_cost_minus_scipy"].items()
                )
                lines += [
                    "",
                    f"{name}, {case}: {check['targets']} targets, matched pairs "
                    f"{check['matched_pairs']}; total cost minus SciPy's: {gaps}.",
                ]
    return [*lines, ""]


def unavailable_lines(record: dict[str, Any]) -> list[str]:
    items = []
    for group in ("solvers", "loss", "train", "layers"):
        for name, worker in record.get(group, {}).get("workers", {}).items():
            if worker["error"]:
                items.append(f"- {name}: {worker['error'].splitlines()[0]}")
            for contender, reason in worker["info"].get("unavailable", {}).items():
                items.append(f"- {name}, {contender}: {reason.splitlines()[0]}")
            for timeout in worker.get("timeouts", []):
                items.append(
                    f"- {name}, {timeout['contender']}: timed out in round {timeout['round'] + 1}"
                )
    if not items:
        return []
    return ["## Unavailable or stopped", "", *items, ""]


def markdown(record: dict[str, Any]) -> str:
    lines = header_lines(record)
    if "solvers" in record:
        lines += solver_lines(record["solvers"])
    if "loss" in record:
        lines += loss_lines(record["loss"], record["config"])
    if "train" in record:
        lines += train_lines(record["train"], record["config"])
    if "layers" in record:
        lines += layers_lines(record["layers"], record["config"])
    lines += unavailable_lines(record)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The chart.


def bar_group(axis: Any, results: dict[str, Any], contenders: list[str], title: str) -> None:
    """One cluster of bars per case, one bar per contender, log scale, whole decades shown."""
    from matplotlib.ticker import FuncFormatter

    cases = list(results)
    width = 0.8 / max(1, len(contenders))
    drawn: list[float] = []
    for index, contender in enumerate(contenders):
        offset = (index - (len(contenders) - 1) / 2) * width
        bars = [
            (case_index + offset, value)
            for case_index, case in enumerate(cases)
            if (value := median_of(results, case, contender)) is not None
        ]
        if not bars:
            continue
        positions, heights = zip(*bars, strict=True)
        patches = axis.bar(positions, heights, width, label=LABELS.get(contender, contender))
        axis.bar_label(patches, [ms(height) for height in heights], fontsize=6)
        drawn.extend(heights)
    labels = [case_label(case).replace(" (", "\n(") for case in cases]
    axis.set_xticks(range(len(cases)), labels, fontsize=6, rotation=90)
    axis.set_yscale("log")
    if drawn:
        low, high = math.log10(min(drawn)), math.log10(max(drawn) * 2)
        axis.set_ylim(10 ** math.floor(low), 10 ** math.ceil(high))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_ylabel("median ms per call (log)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(axis="y", which="major", alpha=0.3)


def plot_scaling(record: dict[str, Any], path: Path) -> str:
    """Median time per call against n for the square uniform series, one line per contender."""
    results = record.get("solvers", {}).get("results", {})
    series = {n: f"{b}x{n}x{n}" for n, b in SCALING_SERIES.items() if f"{b}x{n}x{n}" in results}
    if len(series) < 2:
        return "no scaling plot: fewer than two cases of the series"
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    for contender in SOLVER_COLUMNS:
        points = [
            (n, value)
            for n, case in series.items()
            if (value := median_of(results, case, contender)) is not None
        ]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=LABELS[contender])
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xticks(list(series), [f"{n}\n(B={SCALING_SERIES[n]})" for n in series])
    axis.set_xlabel("n (square n x n uniform costs), batch B")
    axis.set_ylabel("median ms per call (log)")
    axis.set_title(f"Solver time against n ({record['machine']['cpu_model']})", fontsize=9)
    axis.grid(which="major", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return "scaling plot written"


def plot(record: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed"
    panels = [
        ("solvers", SOLVER_COLUMNS, "Solver, (B, M, N)"),
        ("loss", ["ours_xla", "ours_graph", "hl103_xla", "hl103_graph"], "Loss, (B, M, 4)"),
        ("train", ["hungarian", "ordered_l1"], "Training step"),
    ]
    panels = [panel for panel in panels if record.get(panel[0], {}).get("results")]
    if not panels:
        return "no plot: no results"
    widths = [6 if group == "solvers" else 1.3 for group, _, _ in panels]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(sum(widths) * 3.2, 4.5), width_ratios=widths, squeeze=False
    )
    for axis, (group, contenders, title) in zip(axes[0], panels, strict=True):
        bar_group(axis, record[group]["results"], contenders, title)
    figure.suptitle(f"hungarian-loss benchmarks ({record['machine']['cpu_model']})", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return "plot written"
