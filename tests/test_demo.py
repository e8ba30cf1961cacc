"""The demo (`python -m hungarian_loss`): its data, its measure, and a tiny run end to end.

The default run (12 epochs on 4096 images) takes over a minute on 2 CPU cores, so it is
not a test; a short run checks that training lowers the matched error.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hungarian_loss import HungarianLoss
from hungarian_loss._demo import (
    DETR_BOX_COST,
    IMAGE_SIZE,
    MAX_OBJECTS,
    main,
    make_data,
    matched_error,
    run,
)

ERROR_LINE = re.compile(r"matched error (before|after) training:\s+(\S+) px")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_make_data_gives_padded_boxes_of_bright_rectangles() -> None:
    images, boxes = make_data(32, seed=5)
    assert images.shape == (32, IMAGE_SIZE, IMAGE_SIZE, 1) and images.dtype == np.float32
    assert boxes.shape == (32, MAX_OBJECTS, 4) and boxes.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    padding = np.all(boxes == -1.0, axis=-1)  # [32, 5]
    counts = np.sum(~padding, axis=1)
    assert counts.min() >= 1 and counts.max() <= MAX_OBJECTS
    for image, sample_boxes, count in zip(images, boxes, counts, strict=True):
        real = sample_boxes[:count]
        assert np.all(sample_boxes[count:] == -1.0)  # padding rows come after the real ones
        assert np.all((real > 0.0) & (real <= 1.0))
        for center_x, center_y, width, height in real * IMAGE_SIZE:
            left, top = round(center_x - width / 2), round(center_y - height / 2)
            inside = image[top : top + round(height), left : left + round(width), 0]
            assert inside.mean() > 0.4  # a filled rectangle on a dark background
    again_images, again_boxes = make_data(32, seed=5)
    np.testing.assert_array_equal(again_images, images)
    np.testing.assert_array_equal(again_boxes, boxes)


def test_matched_error_is_the_mean_l1_of_the_best_pairs_in_pixels() -> None:
    loss = HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh")
    y_true = np.array([[[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2], [-1, -1, -1, -1]]])
    y_true = y_true.astype("float32")
    one_pixel = 1.0 / IMAGE_SIZE
    y_pred = np.array(
        [
            [
                [0.75, 0.75 + one_pixel, 0.2, 0.2],  # the second box, 1 pixel lower
                [0.9, 0.1, 0.05, 0.05],  # a spare prediction
                [0.25 + 2 * one_pixel, 0.25, 0.2, 0.2 + one_pixel],  # the first, 3 pixels off
            ]
        ],
        dtype="float32",
    )
    assert matched_error(loss, y_true, y_pred) == pytest.approx((1.0 + 3.0) / 2, abs=1e-4)
    assert matched_error(loss, y_true, y_pred[:, [2, 1, 0]]) == pytest.approx(2.0, abs=1e-4)


@pytest.mark.slow
def test_tiny_run_writes_the_picture_and_prints_the_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "pictures" / "demo.png"
    status = main(
        [
            "--epochs",
            "1",
            "--samples",
            "64",
            "--seed",
            "3",
            "--output",
            str(output),
            "--verbose",
            "2",
        ]
    )
    assert status == 0
    assert output.read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC
    printed = capsys.readouterr().out
    errors = dict(ERROR_LINE.findall(printed))
    assert set(errors) == {"before", "after"}, printed
    for value in errors.values():
        assert math.isfinite(float(value)) and float(value) > 0.0
    assert "val_loss:" in printed  # the Keras progress output
    assert str(output) in printed


@pytest.mark.slow
def test_short_training_lowers_the_matched_error(tmp_path: Path) -> None:
    result = run(epochs=3, samples=512, seed=0, output=tmp_path / "demo.png", verbose=0)
    assert result.output.is_file()
    assert result.error_after < 0.8 * result.error_before, result


def test_missing_matplotlib_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    output = tmp_path / "demo.png"
    assert main(["--epochs", "1", "--samples", "64", "--output", str(output)]) == 1
    message = capsys.readouterr().err
    assert "hungarian-loss[demo]" in message and "matplotlib" in message
    assert not output.exists()


def test_command_line_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hungarian_loss", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--epochs", "--seed", "--output", "--samples", "--verbose"):
        assert flag in result.stdout


def test_command_line_rejects_a_bad_epoch_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--epochs", "0"])
    assert raised.value.code == 2
    assert "--epochs" in capsys.readouterr().err
