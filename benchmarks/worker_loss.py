"""Loss worker: our `hungarian_loss(y_true, y_pred)` on `[B, M, 4]` boxes.

Its rounds are interleaved by run.py with worker_legacy.py (hungarian-loss 1.0.3, run in its own
virtual environment) on the same inputs. Contenders: `ours_xla` (`tf.function(jit_compile=True)`)
and `ours_graph` (`tf.function`, no XLA) on TensorFlow; `ours_torch` (called as is: eager ops, the
solver compiled by the package with `torch.compile`) on PyTorch.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from typing import Any

import numpy as np
from common import Case, Contender, box_pairs, error_summary, serve


def make_contender(loss_fn: Any, jit_compile: bool) -> Contender:
    import tensorflow as tf

    compiled = tf.function(loss_fn, jit_compile=jit_compile)
    return Contender(
        run=lambda pair: np.asarray(compiled(*pair)),
        prepare=lambda pair: tuple(tf.constant(array) for array in pair),
    )


def make_torch_contender(loss_fn: Any) -> Contender:
    import torch

    return Contender(
        run=lambda pair: loss_fn(*pair).cpu().numpy(),
        prepare=lambda pair: tuple(torch.tensor(array) for array in pair),
    )


def loss_values(_: Any, results: dict[str, Any]) -> dict[str, Any]:
    """Mean over the batch of our per-sample values (mean cost over matched pairs)."""
    return {name: {"batch_mean_loss": float(np.mean(value))} for name, value in results.items()}


def tensorflow_contenders(info: dict[str, Any]) -> dict[str, Contender]:
    contenders = {}
    try:
        from hungarian_loss import hungarian_loss

        contenders["ours_xla"] = make_contender(hungarian_loss, jit_compile=True)
        contenders["ours_graph"] = make_contender(hungarian_loss, jit_compile=False)
    except Exception as error:
        info["unavailable"]["ours_xla"] = error_summary(error)
        info["unavailable"]["ours_graph"] = error_summary(error)
    return contenders


def build(config: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    import keras

    info: dict[str, Any] = {
        "backend": keras.backend.backend(),
        "hungarian_loss": importlib.metadata.version("hungarian-loss"),
        "unavailable": {},
    }
    if info["backend"] == "torch":
        from hungarian_loss import hungarian_loss

        contenders = {"ours_torch": make_torch_contender(hungarian_loss)}
    else:
        contenders = tensorflow_contenders(info)
    batch, count = config["loss_shape"]
    case = Case(
        name=f"{batch}x{count}x4",
        make_input=functools.partial(box_pairs, batch=batch, count=count),
        contenders=contenders,
        check=loss_values,
    )
    return [case], info


if __name__ == "__main__":
    sys.exit(serve(build))
