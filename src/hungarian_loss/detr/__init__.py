"""`DETRLoss`: the DETR-family criterion (DETR, Deformable DETR, RT-DETR, D-FINE, DEIM).

`_loss` holds the loss (matching, weights, normalization, the failure policy),
`_classification` one function per kind of class term, and `_layout` the layouts of the
query axis (denoising groups, dense one-to-one pairs).
"""

from hungarian_loss.detr._loss import DETRLoss, DETRLossTerm

__all__ = ["DETRLoss", "DETRLossTerm"]
