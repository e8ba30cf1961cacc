"""Test helpers: compiling for the active Keras backend, and SciPy references."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import scipy.optimize

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKEND = keras.backend.backend()


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compiles `fn` as a whole on the active backend.

    TF: `tf.function(jit_compile=True)`, JAX: `jax.jit`, torch: `torch.compile` (what a
    Keras model with `jit_compile=True` does), with NumPy arguments made tensors first. On
    torch the suite runs eagerly (conftest.py) unless a test asks for the `torch_compile`
    fixture; then this compiles.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "torch":
        import torch

        compiled_fn = torch.compile(fn, dynamic=False)

        def call(*args: Any) -> Any:
            return compiled_fn(*(keras.ops.convert_to_tensor(a) for a in args))

        return call
    raise RuntimeError(f"These tests run on tensorflow, jax and torch, not {BACKEND!r}.")


def to_numpy(x: Any) -> np.ndarray:
    """A tensor of any backend (on any device) as NumPy."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def scipy_total(cost: np.ndarray) -> tuple[float, int]:
    """Optimal total cost and matched count of one finite matrix, by SciPy (float64)."""
    rows, cols = scipy.optimize.linear_sum_assignment(cost.astype("float64"))
    return float(cost.astype("float64")[rows, cols].sum()), len(rows)


def matched_total(cost: np.ndarray, assignment: np.ndarray) -> tuple[float, int]:
    """Total cost (float64) and count of the pairs an assignment [M] matches."""
    rows = np.flatnonzero(assignment >= 0)
    return float(cost.astype("float64")[rows, assignment[rows]].sum()), len(rows)


def assert_is_matching(assignment: np.ndarray, n_cols: int) -> None:
    """int32, in [-1, n_cols), no column used twice."""
    assert assignment.dtype == np.int32
    assert np.all(assignment >= -1) and np.all(assignment < n_cols)
    used = assignment[assignment >= 0]
    assert len(np.unique(used)) == len(used), f"column used twice: {assignment}"


def value_and_grads(fn: Callable[..., Any], *args: np.ndarray) -> tuple[np.ndarray, list]:
    """fn(*args) and the gradients of its sum with respect to each argument, as NumPy."""
    from keras import ops

    if BACKEND == "jax":
        import jax

        def total(*xs: Any) -> tuple[Any, Any]:
            value = fn(*xs)
            return ops.sum(ops.cast(value, "float32")), value

        # Compiled as a whole: op-by-op dispatch would compile every op separately.
        grad_fn = jax.grad(total, argnums=tuple(range(len(args))), has_aux=True)
        grads, value = jax.jit(grad_fn)(*args)
        return np.asarray(value), [np.asarray(g) for g in grads]
    if BACKEND == "torch":
        import torch

        xs = [ops.convert_to_tensor(a).requires_grad_(True) for a in args]
        value = fn(*xs)
        grads = torch.autograd.grad(ops.sum(ops.cast(value, "float32")), xs, allow_unused=True)
        assert all(g is not None for g in grads)
        return value.detach().cpu().numpy(), [g.cpu().numpy() for g in grads]
    import tensorflow as tf

    xs = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        value = fn(*xs)
        total = ops.sum(ops.cast(value, "float32"))
    grads = tape.gradient(total, xs)
    assert all(g is not None for g in grads)
    return np.asarray(value), [np.asarray(g) for g in grads]


def gradient(fn: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    """d sum(fn(x)) / dx on the active backend, as NumPy."""
    return value_and_grads(fn, x)[1][0]


def compiled(fn: Callable[..., Any], *args: np.ndarray) -> np.ndarray:
    """fn(*args) traced and compiled, with an unknown batch dimension on TensorFlow."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.jit(fn)(*args))
    if BACKEND == "torch":
        return to_numpy(jit(fn)(*args))
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *a.shape[1:]], a.dtype) for a in args]
    return np.asarray(tf.function(fn, input_signature=signature)(*args))


def np_from_xyxy(boxes: Any, box_format: str) -> np.ndarray:
    """Independent NumPy conversion of xyxy boxes to `box_format` (float input keeps its
    dtype, anything else becomes float32)."""
    array = np.asarray(boxes)
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype("float32")
    x1, y1, x2, y2 = np.moveaxis(array.astype("float64"), -1, 0)
    w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
    columns = {
        "xyxy": (x1, y1, x2, y2),
        "yxyx": (y1, x1, y2, x2),
        "xywh": (x1, y1, w, h),
        "center_xywh": (cx, cy, w, h),
        "center_yxhw": (cy, cx, h, w),
    }[box_format]
    return np.stack(columns, axis=-1).astype(dtype)
