"""Exact, batched Hungarian matching and set-prediction losses for Keras 3."""

from hungarian_loss.assignment import linear_sum_assignment

__all__ = [
    "linear_sum_assignment",
]
__version__ = "2.0.0.dev0"
