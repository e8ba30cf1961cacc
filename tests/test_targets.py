"""`check_targets`: arrays, tensors and `tf.data` datasets; one rule broken per case."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from typing import Any

import keras
import numpy as np
import pytest

from hungarian_loss import TargetSummary, check_targets

PAD = [-1.0] * 5
# Three samples of [box (center_xywh), class id], padded to M = 3 rows.
TARGETS = np.array(
    [
        [[0.5, 0.5, 0.2, 0.2, 1.0], PAD, PAD],
        [[0.3, 0.6, 0.1, 0.4, 0.0], [0.7, 0.2, 0.3, 0.0, 2.0], PAD],  # a zero height: legal
        [[0.2, 0.2, 0.1, 0.1, 2.0], [0.4, 0.4, 0.1, 0.1, 2.0], [0.6, 0.6, 0.5, 0.1, 0.0]],
    ],
    dtype="float32",
)

# (sample, row, channel, value, what the message says)
BROKEN = {
    "out_of_range": (2, 1, 4, 3.0, r"class id 3 is not in 0\.\.2 \(num_classes=3\)"),
    "coco_id": (1, 0, 4, 90.0, r"class id 90 is not in 0\.\.2.*COCO"),
    "minus_one_on_a_real_box": (2, 2, 4, -1.0, r"class id -1 is negative on a row whose box"),
    "fractional": (1, 1, 4, 1.5, r"class id 1\.5 is not an integer"),
    "negative_width": (0, 0, 2, -0.2, r"a box of negative width .* in 'center_xywh' \(width -0\.2"),
    "negative_height": (2, 0, 3, -1e-6, r"a box of negative width or height.*height -1e-06"),
    "nan": (1, 1, 0, np.nan, r"a non-finite value"),
    "inf": (2, 2, 3, np.inf, r"a non-finite value"),
}


def broken(case: str) -> tuple[np.ndarray, int, int, str]:
    sample, row, channel, value, message = BROKEN[case]
    y_true = TARGETS.copy()
    y_true[sample, row, channel] = value
    return y_true, sample, row, message


def test_summary_of_good_targets() -> None:
    summary = check_targets(TARGETS, num_classes=3, box_format="center_xywh")
    assert isinstance(summary, TargetSummary)
    assert (summary.samples, summary.targets, summary.max_targets) == (3, 6, 3)
    assert summary.class_counts == {0: 2, 1: 1, 2: 3}
    assert summary.width_range == pytest.approx((0.1, 0.5))
    assert summary.height_range == pytest.approx((0.0, 0.4))
    assert repr(summary).splitlines() == [
        "TargetSummary: 3 samples, 6 targets (at most 3 per sample)",
        "  class ids (num_classes=3): 0: 2, 1: 1, 2: 3",
        "  box width 0.1 to 0.5, height 0 to 0.4 (center_xywh)",
    ]


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_first_broken_row_is_named(case: str) -> None:
    y_true, sample, row, message = broken(case)
    with pytest.raises(ValueError, match=rf"^Sample {sample}, row {row} of the targets: {message}"):
        check_targets(y_true, num_classes=3, box_format="center_xywh")


def test_the_first_of_several_broken_rows_in_data_order() -> None:
    y_true = TARGETS.copy()
    y_true[2, 0, 4] = 7.0
    y_true[1, 1, 2] = -1.0  # comes first
    with pytest.raises(ValueError, match=r"^Sample 1, row 1 .*negative width"):
        check_targets(y_true, num_classes=3, box_format="center_xywh")


def test_rules_follow_the_arguments() -> None:
    # Without num_classes any integer id >= 0 is fine, but not -1 or 1.5.
    y_true, *_ = broken("coco_id")
    assert check_targets(y_true, box_format="center_xywh").class_counts == {0: 1, 1: 1, 2: 3, 90: 1}
    for case in ("minus_one_on_a_real_box", "fractional"):
        with pytest.raises(ValueError, match=BROKEN[case][4]):
            check_targets(broken(case)[0], box_format="center_xywh")
    # In xyxy, [0.5, 0.5, 0.2, 0.2] has x2 < x1; without a class channel only boxes count.
    with pytest.raises(ValueError, match=r"^Sample 0, row 0 .*'xyxy' \(width -0\.3, height -0"):
        check_targets(TARGETS[..., :4])
    xyxy = TARGETS[..., :4].copy()
    xyxy[..., 2:] = np.where(xyxy[..., :2] == -1.0, -1.0, xyxy[..., :2] + xyxy[..., 2:])
    summary = check_targets(xyxy)
    assert summary.class_counts == {} and summary.targets == 6
    assert "class ids" not in repr(summary)
    # One sample [M, D]; NaN padding; no padding.
    assert check_targets(TARGETS[2], num_classes=3, box_format="center_xywh").targets == 3
    nan_padded = np.where(TARGETS == -1.0, np.nan, TARGETS)
    assert check_targets(nan_padded, 3, "center_xywh", padding_value=np.nan).targets == 6
    with pytest.raises(ValueError, match=r"^Sample 0, row 1 .*negative width"):
        check_targets(TARGETS, 3, "center_xywh", padding_value=None)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"num_classes.*Received: num_classes=0"):
        check_targets(TARGETS, num_classes=0)
    with pytest.raises(ValueError, match="box_format"):
        check_targets(TARGETS, box_format="cxcywh")
    with pytest.raises(ValueError, match=r"D >= 4.*shape=\(3, 3, 3\)"):
        check_targets(TARGETS[..., :3])


def test_tensors_of_the_backend() -> None:
    expected = check_targets(TARGETS, num_classes=3, box_format="center_xywh")
    tensor = keras.ops.convert_to_tensor(TARGETS)
    assert check_targets(tensor, num_classes=3, box_format="center_xywh") == expected
    y_true, sample, row, message = broken("out_of_range")
    with pytest.raises(ValueError, match=rf"^Sample {sample}, row {row} .*{message}"):
        check_targets(keras.ops.convert_to_tensor(y_true), 3, "center_xywh")


def padded_dataset(y_true: np.ndarray, batch_size: int, structure: str) -> Any:
    """The real rows of each sample as ragged elements, `padded_batch`-ed back to M rows."""
    import tensorflow as tf

    def samples() -> Any:
        for sample in y_true:
            real = sample[~np.all(sample == -1.0, axis=-1)]
            image = np.zeros((2, 2, 3), "float32")
            if structure == "y":
                yield real
            elif structure == "xy":
                yield image, real
            else:
                yield image, {"boxes": real, "other": np.zeros(1, "float32")}

    target_spec = tf.TensorSpec([None, 5], "float32")
    image_spec = tf.TensorSpec([2, 2, 3], "float32")
    signature: Any = {
        "y": target_spec,
        "xy": (image_spec, target_spec),
        "dict": (image_spec, {"boxes": target_spec, "other": tf.TensorSpec([1], "float32")}),
    }[structure]
    dataset = tf.data.Dataset.from_generator(samples, output_signature=signature)
    return dataset.padded_batch(batch_size, padding_values=-1.0)


@pytest.mark.parametrize("structure", ["y", "xy", "dict"])
def test_padded_batch_dataset(structure: str) -> None:
    key = "boxes" if structure == "dict" else None
    dataset = padded_dataset(TARGETS, 2, structure)
    summary = check_targets(dataset, 3, "center_xywh", target_key=key, verbose=0)
    assert summary == check_targets(TARGETS, num_classes=3, box_format="center_xywh")
    # Sample 2 is item 0 of the second batch.
    y_true, *_ = broken("out_of_range")
    with pytest.raises(
        ValueError, match=r"^Sample 2, row 1 of the targets \(dataset element 1, item 0\): class"
    ):
        check_targets(padded_dataset(y_true, 2, structure), 3, "center_xywh", target_key=key)


def test_dataset_details() -> None:
    import tensorflow as tf

    # A progress bar on a dataset, none with verbose=0.
    for verbose, shows in ((1, True), (0, False)):
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            check_targets(padded_dataset(TARGETS, 1, "xy"), 3, "center_xywh", verbose=verbose)
        assert ("3/" in output.getvalue()) is shows, output.getvalue()  # 3 batches read
    # Unbatched samples [m, 5] are samples.
    unbatched = tf.data.Dataset.from_tensor_slices(TARGETS)
    assert check_targets(unbatched, 3, "center_xywh", verbose=0).samples == 3
    with pytest.raises(ValueError, match=r"target_key.*\['boxes', 'other'\].*target_key=None"):
        check_targets(padded_dataset(TARGETS, 2, "dict"), 3, "center_xywh", verbose=0)
    with pytest.raises(ValueError, match=r"finite dataset.*take"):
        check_targets(unbatched.repeat(), verbose=0)


def test_no_tensorflow_import_for_arrays() -> None:
    code = (
        "import sys, numpy as np\n"
        "from hungarian_loss import check_targets\n"
        "check_targets(np.array([[[0.0, 0.0, 1.0, 1.0, 0.0]]]), num_classes=1)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    for backend in ("jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "False", backend


# ----- mask targets: dicts of labels, masks and (optionally) boxes, as keras-hub gives them

# Three images of 2 x 3 pixels, up to M = 3 targets; labels -1 are padding rows.
LABELS = np.array([[1, -1, -1], [0, 2, -1], [-1, -1, -1]], dtype="int32")  # image 2: none
MASKS = np.zeros((3, 3, 2, 3), dtype="float32")
MASKS[0, 0, :, :2] = 1.0
MASKS[1, 0, 1, :] = 0.5  # a soft mask
MASKS[:, 1:] = np.nan  # padding rows hold anything, even in image 1 (row 1 is real there)
MASKS[1, 1] = 0.0  # an empty mask: legal
MASK_BOXES = np.array(  # xyxy
    [
        [[0.0, 0.0, 2.0, 2.0], [-1.0] * 4, [-1.0] * 4],
        [[0.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0], [-1.0] * 4],  # zero size: legal
        [[-1.0] * 4] * 3,
    ],
    dtype="float32",
)

# (key, sample, row, value, what the message says): one value set to break a rule.
BROKEN_MASK_TARGETS = {
    "mask_nan": ("masks", 0, 0, (1, 2, np.nan), r"a mask with a non-finite value \(1 NaN"),
    "mask_above_one": ("masks", 1, 0, (0, 1, 255.0), r"mask values outside \[0, 1\] \(0 to 255\)"),
    "mask_negative": ("masks", 1, 1, (0, 0, -0.5), r"mask values outside \[0, 1\] \(-0\.5 to 0\)"),
    "class_out_of_range": ("labels", 1, 1, 3, r"class id 3 is not in 0\.\.2 \(num_classes=3\)"),
    "class_negative": (
        "labels",
        0,
        0,
        -2,
        r"class id -2 is negative \(padding rows have the label -1\)",
    ),
    "box_negative": ("boxes", 1, 0, (2, -1.0), r"a box of negative width.*'xyxy' \(width -1,"),
}


def mask_targets(case: str | None = None, boxes: bool = False) -> tuple[dict, str]:
    """The dict targets, with one value changed to break the rule of `case`."""
    y_true = {"labels": LABELS.copy(), "masks": MASKS.copy()}
    if boxes or (case is not None and BROKEN_MASK_TARGETS[case][0] == "boxes"):
        y_true["boxes"] = MASK_BOXES.copy()
    if case is None:
        return y_true, ""
    key, sample, row, value, message = BROKEN_MASK_TARGETS[case]
    where = (sample, row) if key == "labels" else (sample, row, *value[:-1])
    y_true[key][where] = value if key == "labels" else value[-1]
    return y_true, rf"^Sample {sample}, row {row} of the targets: {message}"


def test_summary_of_good_mask_targets() -> None:
    for boxes in (False, True):
        summary = check_targets(mask_targets(boxes=boxes)[0], num_classes=3)
        assert (summary.samples, summary.targets, summary.max_targets) == (3, 3, 2)
        assert summary.class_counts == {0: 1, 1: 1, 2: 1}
        assert (summary.empty_masks, summary.samples_without_targets) == (1, 1)
        assert (summary.width_range is not None) is boxes
    assert repr(summary).splitlines() == [
        "TargetSummary: 3 samples (1 without targets), 3 targets (at most 2 per sample)",
        "  class ids (num_classes=3): 0: 1, 1: 1, 2: 1",
        "  masks: 3, empty masks: 1",
        "  box width 0 to 3, height 0 to 2 (xyxy)",
    ]
    # Bool masks, tensors of the backend, and one sample [M, ...] are mask targets too.
    bool_masks = {"labels": LABELS, "masks": np.nan_to_num(MASKS) > 0.0}
    without_boxes = dataclasses.replace(summary, width_range=None, height_range=None)
    assert check_targets(bool_masks, num_classes=3) == without_boxes
    tensors = {key: keras.ops.convert_to_tensor(value) for key, value in bool_masks.items()}
    assert check_targets(tensors, num_classes=3).empty_masks == 1
    assert check_targets({"labels": LABELS[1], "masks": MASKS[1]}, num_classes=3).targets == 2


@pytest.mark.parametrize("case", list(BROKEN_MASK_TARGETS))
def test_the_first_broken_mask_target_is_named(case: str) -> None:
    y_true, message = mask_targets(case)
    with pytest.raises(ValueError, match=message):
        check_targets(y_true, num_classes=3)


def test_mask_targets_of_the_wrong_kind_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"labels.*\[samples, M\].*masks.shape=\(3, 2, 2, 3\)"):
        check_targets({"labels": LABELS, "masks": MASKS[:, :2]})
    with pytest.raises(ValueError, match=r"'labels'.*'masks'.*'boxes'.*Received.*'mask'"):
        check_targets({"labels": LABELS, "mask": MASKS})


def test_mask_targets_in_a_dataset() -> None:
    import tensorflow as tf

    y_true, _ = mask_targets("mask_above_one")
    images = np.zeros((3, 2, 3, 3), "float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, y_true)).batch(2)
    with pytest.raises(ValueError, match=r"^Sample 1, row 0 of the targets \(dataset element 0"):
        check_targets(dataset, num_classes=3, verbose=0)
    good = tf.data.Dataset.from_tensor_slices((images, mask_targets()[0])).batch(2)
    assert check_targets(good, num_classes=3, verbose=0) == check_targets(
        mask_targets()[0], num_classes=3
    )
