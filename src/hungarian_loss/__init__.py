"""Exact, batched Hungarian matching and set-prediction losses for Keras 3.

The public face: the solver, the loss (class and function), the DETR criterion, the
target checker, and the costs, box and mask utilities and denoising queries as submodules
(`hungarian_loss.costs`, `hungarian_loss.boxes`, `hungarian_loss.masks`,
`hungarian_loss.denoising`).
"""

from hungarian_loss import boxes, costs, denoising, masks
from hungarian_loss.assignment import linear_sum_assignment
from hungarian_loss.costs import PairwiseCost, WeightedCost, get_cost, register_cost
from hungarian_loss.detr import DETRLoss, DETRLossTerm, MaskTerms
from hungarian_loss.loss import HungarianLoss, hungarian_loss
from hungarian_loss.targets import TargetSummary, check_targets

__all__ = [
    "DETRLoss",
    "DETRLossTerm",
    "HungarianLoss",
    "MaskTerms",
    "PairwiseCost",
    "TargetSummary",
    "WeightedCost",
    "boxes",
    "check_targets",
    "costs",
    "denoising",
    "get_cost",
    "hungarian_loss",
    "linear_sum_assignment",
    "masks",
    "register_cost",
]
__version__ = "2.0.0"
