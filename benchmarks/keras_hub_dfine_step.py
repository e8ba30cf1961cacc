"""One D-FINE training step: keras-hub's own criterion against `exact_matching`'s (CPU).

Builds one `keras_hub.models.DFineObjectDetector` from its config (no download; the
HGNetV2 of keras-hub's D-FINE docstring, a small D-FINE), one batch of random images and
targets (1 to `--max-targets` per image, padded with label -1), and times on the same
model and batch, side by side, medians of `--repeats` calls after a first (compiling) one:

- `keras.Model.train_on_batch` with keras-hub 0.32's own `compute_loss`, and with
  `hungarian_loss.keras_hub.exact_matching`'s (`compile(jit_compile=True)` both);
- the matching alone: keras-hub's `hungarian_matcher` (one image at a time), once per
  matched prediction set of a step (last, auxiliary and encoder), against ours (all the
  sets and images of a step in one `linear_sum_assignment` call), each compiled.

Run it where keras-hub is installed (`pip install -e ".[keras-hub]"`):

    KERAS_BACKEND=jax python benchmarks/keras_hub_dfine_step.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(args: argparse.Namespace) -> Any:
    import keras_hub

    size = args.image
    hgnetv2 = keras_hub.models.HGNetV2Backbone(
        stem_channels=[3, 16, 16],
        stackwise_stage_filters=[
            [16, 16, 64, 1, 3, 3],
            [64, 32, 256, 1, 3, 3],
            [256, 64, 512, 2, 3, 5],
            [512, 128, 1024, 1, 3, 5],
        ],
        apply_downsample=[False, True, True, True],
        use_lightweight_conv_block=[False, False, True, True],
        depths=[1, 1, 2, 1],
        hidden_sizes=[64, 256, 512, 1024],
        embedding_size=16,
        use_learnable_affine_block=True,
        hidden_act="relu",
        image_shape=(size, size, 3),
        out_features=["stage3", "stage4"],
    )
    backbone = keras_hub.models.DFineBackbone(
        backbone=hgnetv2,
        decoder_in_channels=[128, 128],
        encoder_hidden_dim=128,
        num_denoising=0,
        num_labels=args.classes,
        hidden_dim=128,
        learn_initial_query=False,
        num_queries=args.queries,
        anchor_image_size=(size, size),
        feat_strides=[16, 32],
        num_feature_levels=2,
        encoder_in_channels=[512, 1024],
        encode_proj_layers=[1],
        num_attention_heads=8,
        encoder_ffn_dim=512,
        num_encoder_layers=1,
        hidden_expansion=0.34,
        depth_multiplier=0.5,
        eval_idx=-1,
        num_decoder_layers=args.decoder_layers,
        decoder_attention_heads=8,
        decoder_ffn_dim=512,
        decoder_n_points=[6, 6],
        lqe_hidden_dim=64,
        num_lqe_layers=2,
        out_features=["stage3", "stage4"],
        image_shape=(size, size, 3),
        seed=0,
    )
    return keras_hub.models.DFineObjectDetector(backbone=backbone, num_classes=args.classes)


def batch(args: argparse.Namespace) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(args.seed)
    images = rng.uniform(0, 255, (args.batch, args.image, args.image, 3)).astype("float32")
    labels = np.full((args.batch, args.max_targets), -1, dtype="int32")
    boxes = np.full((args.batch, args.max_targets, 4), -1.0, dtype="float32")
    for image in range(args.batch):
        count = rng.integers(1, args.max_targets + 1)
        labels[image, :count] = rng.integers(0, args.classes, count)
        boxes[image, :count, :2] = rng.uniform(0.2, 0.8, (count, 2))
        boxes[image, :count, 2:] = rng.uniform(0.05, 0.3, (count, 2))
    return images, {"boxes": boxes, "labels": labels}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Seconds of the first call, and of `repeats` more."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image", type=int, default=128)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--decoder-layers", type=int, default=3)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--max-targets", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import keras_hub
    from keras_hub.src.models.d_fine import d_fine_loss

    from hungarian_loss import keras_hub as hk

    keras.utils.set_random_seed(args.seed)
    detector = build(args)
    images, y = batch(args)
    forward = compiled(lambda x: detector(x))
    y_pred = {k: keras.ops.convert_to_numpy(v) for k, v in forward(images).items()}

    rows = []
    for name in ("keras-hub's own", "exact_matching"):
        if name == "exact_matching":
            hk.exact_matching(detector)
        detector.compile(optimizer=keras.optimizers.Adam(1e-5), jit_compile=True)
        # Keras's own train_on_batch: keras-hub 0.32's override cannot take a dict `y`.
        first, times = timed(lambda: keras.Model.train_on_batch(detector, images, y), args.repeats)
        rows.append((f"training step, {name} criterion", first, times))

    # The matching alone, as each criterion does it in one step.
    sets = hk._prediction_sets(detector, y_pred)
    labels, boxes = y["labels"], y["boxes"]
    real = labels >= 0

    def keras_hub_matching(y_pred: dict[str, Any]) -> list[Any]:
        targets = [{"labels": keras.ops.reshape(labels, [-1]), "boxes": np.reshape(boxes, [-1, 4])}]
        counts = keras.ops.full((args.batch,), args.max_targets, dtype="int32")
        out = []
        for outputs in hk._prediction_sets(detector, y_pred).values():
            out.append(
                d_fine_loss.hungarian_matcher(
                    outputs,
                    targets,
                    counts,
                    detector.use_focal_loss,
                    detector.matcher_alpha,
                    detector.matcher_gamma,
                    detector.matcher_bbox_cost,
                    detector.matcher_class_cost,
                    detector.matcher_ciou_cost,
                    detector.backbone,
                )[1]
            )
        return out

    def our_matching(y_pred: dict[str, Any]) -> dict[str, Any]:
        sets = hk._prediction_sets(detector, y_pred)
        return hk._match_sets(detector, sets, labels, boxes, real)

    for name, fn in (
        (f"matching, keras-hub's ({len(sets)} calls of B images)", keras_hub_matching),
        (f"matching, ours (one call, {len(sets)} x B problems)", our_matching),
    ):
        step = compiled(fn)

        def run(step: Callable[..., Any] = step) -> None:
            out = step(y_pred)
            for value in out.values() if isinstance(out, dict) else out:
                keras.ops.convert_to_numpy(value)

        first, times = timed(run, args.repeats)
        rows.append((name, first, times))

    print(
        f"keras-hub {keras_hub.__version__}, Keras {keras.__version__} "
        f"({keras.backend.backend()}), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"D-FINE: HGNetV2 (keras-hub's docstring), {args.image}x{args.image} images, "
        f"{args.queries} queries, {args.decoder_layers} decoder layers, {args.classes} classes; "
        f"batch {args.batch}, {int(real.sum())} targets (padded to {args.max_targets} per image)"
    )
    print("| what | first call s | median ms | keras-hub's / this |")
    print("|---|---|---|---|")
    for index, (name, first, times) in enumerate(rows):
        keras_hubs = statistics.median(rows[index - index % 2][2])  # the pair's first row
        median = statistics.median(times)
        print(f"| {name} | {first:.1f} | {1000 * median:.1f} | {keras_hubs / median:.2f} |")


if __name__ == "__main__":
    main()
