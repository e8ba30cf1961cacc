"""End to end with Keras: compile and fit, set prediction, saving and export, distribution,
mixed precision and XLA (DETRLoss has its own module, `test_detr.py`).

XLA compiles are slow on small CI machines, so the models are tiny, the shapes few, and the
tests that need a fresh process (reloading, several devices) run this file as a script:
`python test_keras.py WORKER ARGS_JSON` runs one of the `_worker_*` functions and prints its
result as JSON on a line starting with `RESULT `.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import scipy.optimize
from helpers import BACKEND, jit
from keras import ops

from hungarian_loss import HungarianLoss, hungarian_loss

MAX_TARGETS = 3  # M: targets per sample, padded with rows of -1
NUM_PREDICTIONS = 4  # N
DETR_BOX_COST = {"l1": 5.0, "giou": 2.0}
RESULT_PREFIX = "RESULT "


# ----- data, models and references ------------------------------------------------------------


def make_boxes(n: int, seed: int, num_classes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Samples of 1 to 3 boxes (`center_xywh`, in [0, 1]): features and shuffled targets.

    The features list the boxes sorted by center x (and a one-hot class each when
    `num_classes > 0`), zeros after the last; the targets list the same boxes in a random
    order (with the class id as a fifth channel), padded with rows of -1.

    Returns:
        `x [n, 3 * (4 + num_classes)]` and `y [n, 3, 4 (+1)]`, float32.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, MAX_TARGETS + 1, size=n)
    centers = rng.uniform(0.1, 0.9, size=(n, MAX_TARGETS, 2))
    sizes = rng.uniform(0.05, 0.2, size=(n, MAX_TARGETS, 2))
    boxes = np.concatenate([centers, sizes], axis=-1)  # [n, M, 4]
    if num_classes:
        classes = rng.integers(0, num_classes, size=(n, MAX_TARGETS, 1))
        items = np.concatenate([boxes, classes], axis=-1)  # [n, M, 5]
        one_hot = np.eye(num_classes)[classes[..., 0]]  # [n, M, K]
        features = np.concatenate([boxes, one_hot], axis=-1)  # [n, M, 4 + K]
    else:
        items, features = boxes, boxes
    x = np.zeros(features.shape, "float32")
    y = np.full(items.shape, -1.0, "float32")
    for b, count in enumerate(counts):
        x[b, :count] = features[b, np.argsort(boxes[b, :count, 0])]
        y[b, :count] = items[b, rng.permutation(count)]
    return x.reshape(n, -1), y


def box_model(num_features: int = MAX_TARGETS * 4, hidden: int = 128) -> keras.Model:
    """Features -> N boxes in [0, 1] (sigmoid): `[B, N, 4]`."""
    inputs = keras.Input((num_features,))
    hidden_layer = keras.layers.Dense(hidden, activation="relu")(inputs)
    boxes = keras.layers.Dense(NUM_PREDICTIONS * 4, activation="sigmoid")(hidden_layer)
    return keras.Model(inputs, keras.layers.Reshape((NUM_PREDICTIONS, 4))(boxes))


def order_bound_l1(y_true: Any, y_pred: Any) -> Any:
    """The baseline without matching: L1 of prediction i against target i, mean over targets."""
    real = ops.cast(ops.any(ops.not_equal(y_true, -1.0), axis=-1), y_pred.dtype)  # [B, M]
    l1 = ops.sum(ops.abs(y_pred[:, : y_true.shape[1]] - y_true), axis=-1)  # [B, M]
    return ops.sum(l1 * real, axis=1) / ops.maximum(ops.sum(real, axis=1), 1.0)


def real_rows(y_true: np.ndarray) -> np.ndarray:
    """The targets of one sample without its padding rows."""
    return y_true[~np.all(y_true == -1.0, axis=-1)]


def matched_l1_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean L1 distance over the pairs that SciPy matches optimally (by L1), all samples."""
    errors = []
    for targets, predictions in zip(
        y_true.astype("float64"), y_pred.astype("float64"), strict=True
    ):
        cost = np.abs(real_rows(targets)[:, None, :4] - predictions[None, :, :4]).sum(-1)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        errors.extend(cost[rows, cols])
    return float(np.mean(errors))


def numpy_giou_cost(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """1 - GIoU of every pair of `center_xywh` boxes, `[M, 4] x [N, 4] -> [M, N]`, float64."""

    def corners(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2

    (lo1, hi1), (lo2, hi2) = corners(boxes1), corners(boxes2)
    area1, area2 = np.prod(hi1 - lo1, -1), np.prod(hi2 - lo2, -1)  # [M], [N]
    overlap = np.clip(
        np.minimum(hi1[:, None], hi2[None]) - np.maximum(lo1[:, None], lo2[None]), 0, None
    )
    intersection = np.prod(overlap, -1)  # [M, N]
    union = area1[:, None] + area2[None] - intersection  # [M, N]
    enclosing = np.prod(
        np.maximum(hi1[:, None], hi2[None]) - np.minimum(lo1[:, None], lo2[None]), -1
    )
    return 1.0 - (intersection / union - (enclosing - union) / enclosing)


def reference_detr_box_loss(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample `HungarianLoss(cost={"l1": 5, "giou": 2}, box_format="center_xywh")`, by SciPy."""
    out = []
    for targets, predictions in zip(
        y_true.astype("float64"), y_pred.astype("float64"), strict=True
    ):
        targets = real_rows(targets)
        l1 = np.abs(targets[:, None] - predictions[None]).sum(-1)
        cost = 5.0 * l1 + 2.0 * numpy_giou_cost(targets, predictions)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        out.append(cost[rows, cols].mean() if len(rows) else 0.0)
    return np.array(out)


def loss_value(loss: Callable[..., Any], y_true: Any, y_pred: Any) -> Any:
    """`loss(y_true, y_pred)` computed fast: eagerly on TF, under `jax.jit` on JAX.

    (JAX compiles every op it runs eagerly, which for the solver's loops is slower than
    compiling the whole loss once.)
    """
    function = lambda t, p: loss(t, p)  # noqa: E731
    return function(y_true, y_pred) if BACKEND == "tensorflow" else jit(function)(y_true, y_pred)


def run_fresh_process(worker: str, *args: Any, env: dict[str, str] | None = None) -> Any:
    """Runs `_worker_{worker}(*args)` in a new Python process (same backend); returns its result."""
    process = subprocess.run(
        [sys.executable, __file__, worker, json.dumps([str(a) for a in args])],
        env={**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert process.returncode == 0 and results, (
        f"worker {worker!r} failed (exit code {process.returncode}):\n"
        f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    )
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def as_json(value: Any) -> Any:
    """`value` as it comes back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="session")  # built once per worker (see test_keras_hub.py's detector)
def trained_set_model() -> tuple[keras.Model, tuple[np.ndarray, np.ndarray]]:
    """The set-prediction model trained with DETR's box cost, and held-out data."""
    x, y = make_boxes(1024, seed=0)
    keras.utils.set_random_seed(0)
    model = box_model()
    model.compile(
        keras.optimizers.Adam(0.01), HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh")
    )
    model.fit(x, y, batch_size=32, epochs=15, verbose=0)
    return model, make_boxes(256, seed=1)


@pytest.fixture
def mixed_float16() -> Iterator[None]:
    """The `mixed_float16` global policy for one test, then the previous policy back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# ----- 1. compile with a dict of losses -------------------------------------------------------


def test_dict_loss_with_loss_weights_on_a_named_output() -> None:
    x, y = make_boxes(256, seed=2)
    counts = np.sum(~np.all(y == -1.0, axis=-1), axis=1, keepdims=True).astype("float32")
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    boxes = keras.layers.Dense(NUM_PREDICTIONS * 4, activation="sigmoid")(hidden)
    outputs = {
        "bbox": keras.layers.Reshape((NUM_PREDICTIONS, 4), name="bbox")(boxes),
        "cls": keras.layers.Dense(1, name="cls")(hidden),
    }
    keras.utils.set_random_seed(0)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.01),
        loss={"bbox": hungarian_loss, "cls": "mse"},
        loss_weights={"bbox": 1, "cls": 0.5},
    )
    history = model.fit(x, {"bbox": y, "cls": counts}, batch_size=32, epochs=6, verbose=0).history
    assert history["bbox_loss"][-1] < 0.8 * history["bbox_loss"][0]
    # The total is the weighted sum: the Hungarian loss went to "bbox", with weight 1.
    np.testing.assert_allclose(
        history["loss"],
        np.add(history["bbox_loss"], 0.5 * np.asarray(history["cls_loss"])),
        rtol=1e-5,
    )


# ----- 2. matching beats a loss bound to the order of the targets -----------------------------


@pytest.mark.xdist_group("trained_set_model")  # one worker trains it
def test_set_prediction_beats_order_bound_loss(trained_set_model: Any) -> None:
    model, (x_test, y_test) = trained_set_model
    x, y = make_boxes(1024, seed=0)
    keras.utils.set_random_seed(0)
    baseline = box_model()
    baseline.compile(keras.optimizers.Adam(0.01), order_bound_l1)
    baseline.fit(x, y, batch_size=32, epochs=15, verbose=0)

    matched = matched_l1_error(y_test, model.predict(x_test, verbose=0))
    order_bound = matched_l1_error(y_test, baseline.predict(x_test, verbose=0))
    # Targets in random order: the order-bound model can only predict their average.
    assert matched < 0.5 * order_bound, (matched, order_bound)
    assert matched < 0.15


# ----- 3. saving, reloading in a fresh process, export ----------------------------------------


def _worker_reload(model_path: str, export_dir: str, data_path: str) -> dict[str, Any]:
    """Loads a `.keras` model (after `import hungarian_loss` only) and a SavedModel."""
    data = np.load(data_path)
    model = keras.saving.load_model(model_path)
    served = None
    if export_dir != "None":
        import tensorflow as tf

        exported = tf.saved_model.load(export_dir)  # keep a reference: `serve` uses its variables
        served = np.asarray(exported.serve(tf.constant(data["x"]))).tolist()
    return {
        "loss_class": f"{type(model.loss).__module__}.{type(model.loss).__qualname__}",
        "loss_config": model.loss.get_config(),
        "loss": model.evaluate(data["x"], data["y"], batch_size=64, verbose=0),
        "predictions": model.predict(data["x"], verbose=0).tolist(),
        "served": served,
    }


@pytest.mark.xdist_group("trained_set_model")
def test_keras_file_reloads_in_a_fresh_process_and_export_serves(
    trained_set_model: Any, tmp_path: Path
) -> None:
    model, (x_test, y_test) = trained_set_model
    x, y = x_test[:64], y_test[:64]
    model.save(tmp_path / "model.keras")
    # A SavedModel; on JAX, through TensorFlow. Not on torch: Keras 3.15's torch export fails
    # on any model, a plain Dense included (`torch.export` rejects its `dynamic_shapes`).
    export_dir = None if BACKEND == "torch" else tmp_path / "exported"
    if export_dir is not None:
        model.export(str(export_dir))
    np.savez(tmp_path / "data.npz", x=x, y=y)
    loss = model.evaluate(x, y, batch_size=64, verbose=0)
    predictions = model.predict(x, verbose=0)

    result = run_fresh_process(
        "reload", tmp_path / "model.keras", export_dir, tmp_path / "data.npz"
    )

    assert result["loss_class"] == "hungarian_loss.loss.HungarianLoss"
    config = model.loss.get_config()
    assert config["cost"] == DETR_BOX_COST and config["box_format"] == "center_xywh"
    assert result["loss_config"] == as_json(config)
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["loss"] == pytest.approx(reference_detr_box_loss(y, predictions).mean(), rel=1e-5)
    np.testing.assert_allclose(result["predictions"], predictions, rtol=1e-6, atol=1e-7)
    if export_dir is not None:
        np.testing.assert_allclose(result["served"], predictions, rtol=1e-5, atol=1e-6)


# ----- 4. several devices train like one ------------------------------------------------------


def _worker_distributed() -> dict[str, Any]:
    """Trains the same model on one device and on two (TF: Mirrored; JAX: DataParallel)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    x, y = make_boxes(64, seed=3)
    keras.utils.set_random_seed(0)
    initial = box_model(hidden=32).get_weights()

    def train() -> tuple[keras.Model, list[float]]:
        model = box_model(hidden=32)
        model.set_weights(initial)
        model.compile(
            keras.optimizers.SGD(0.05),
            HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh"),
        )
        history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        return model, history.history["loss"]

    if BACKEND == "tensorflow":
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            one, one_losses = train()
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            several, several_losses = train()
        replicas = strategy.num_replicas_in_sync
        kernel_copies = len(several.weights[0].value.values)  # a MirroredVariable
    else:
        import jax

        one, one_losses = train()
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        keras.distribution.set_distribution(distribution)
        several, several_losses = train()
        replicas = distribution.device_mesh.devices.size
        kernel_copies = len(several.weights[0].value.sharding.device_set)
    one_weights, several_weights = one.get_weights(), several.get_weights()
    return {
        "replicas": replicas,
        "kernel_copies": kernel_copies,
        "max_weight_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(one_weights, several_weights, strict=True)
        ),
        "max_weight_change": max(
            float(np.max(np.abs(a - b))) for a, b in zip(one_weights, initial, strict=True)
        ),
        "one_device_losses": one_losses,
        "several_device_losses": several_losses,
    }


# Keras has no multi-device training on the torch backend: keras.distribution runs on JAX
# only, tf.distribute on TensorFlow only.
@pytest.mark.backends("tensorflow", "jax")
def test_two_devices_train_to_the_same_weights_as_one() -> None:
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if BACKEND == "jax" else {}
    result = run_fresh_process("distributed", env=env)
    assert result["replicas"] == 2 and result["kernel_copies"] == 2
    assert result["max_weight_change"] > 1e-3  # it did train
    assert result["max_weight_difference"] < 1e-5
    np.testing.assert_allclose(
        result["several_device_losses"], result["one_device_losses"], rtol=1e-5
    )
    assert result["one_device_losses"][-1] < result["one_device_losses"][0]


# ----- 5. mixed precision ---------------------------------------------------------------------


@pytest.mark.usefixtures("mixed_float16")
def test_mixed_float16_trains_with_a_float32_loss() -> None:
    x, y = make_boxes(256, seed=4)
    keras.utils.set_random_seed(0)
    model = box_model(hidden=32)
    loss = HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh")
    predictions = model(x[:8])
    assert keras.backend.standardize_dtype(predictions.dtype) == "float16"
    value = loss_value(loss, y[:8], predictions)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    expected = reference_detr_box_loss(y[:8], keras.ops.convert_to_numpy(predictions)).mean()
    assert float(keras.ops.convert_to_numpy(value)) == pytest.approx(expected, rel=1e-3)

    model.compile(keras.optimizers.Adam(0.01), loss)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0]


# ----- 6. XLA ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("torch_compile")  # on torch: the train step under torch.compile
def test_jit_compile_true() -> None:
    x, y = make_boxes(128, seed=7)
    keras.utils.set_random_seed(0)
    model = box_model(hidden=32)
    model.compile(
        keras.optimizers.Adam(learning_rate=0.0),
        HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh"),
        jit_compile=True,
    )
    assert model.jit_compile is True
    # With a learning rate of 0, the epoch's loss is the mean loss of the model as it is.
    first = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history["loss"]
    expected = reference_detr_box_loss(y, model.predict(x, verbose=0)).mean()
    assert first[0] == pytest.approx(expected, rel=1e-5)
    model.optimizer.learning_rate.assign(0.01)
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0).history["loss"]
    assert history[-1] < 0.8 * first[0], (first, history)


# ----- the worker entry point -----------------------------------------------------------------

if __name__ == "__main__":
    name, arguments = sys.argv[1], json.loads(sys.argv[2])
    outcome = globals()[f"_worker_{name}"](*arguments)
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)
