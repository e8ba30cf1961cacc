"""`DETRLoss`: the DETR-family criterion, with boxes and with masks.

DETR, Deformable DETR, RT-DETR, D-FINE, DEIM; MaskFormer, Mask2Former, EoMT.

`_loss` holds the loss (matching, weights, normalization, the failure policy),
`_classification` one function per kind of class term, `_layout` the layouts of the
query axis (denoising groups, dense one-to-one pairs), and `_masks` the mask terms
(`MaskTerms`: the options, the pairwise mask cost, the sums over matched pairs).
"""

from hungarian_loss.detr._loss import DETRLoss, DETRLossTerm
from hungarian_loss.detr._masks import MaskTerms

__all__ = ["DETRLoss", "DETRLossTerm", "MaskTerms"]
