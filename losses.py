"""The training loss: cross-entropy + soft Dice on the segmentation head, BCE + soft Dice on the marker head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """Weights of the loss terms; the defaults are the tuned recipe every train script uses."""
    seg_ce: float = 1.0          # cross-entropy over background / boundary / interior
    seg_dice: float = 1.0        # soft Dice over the nucleus classes (boundary, interior)
    marker_bce: float = 1.0      # binary cross-entropy of the marker map
    marker_dice: float = 2.0     # soft Dice of the marker map (2: larger, better separated seeds on the demo data)
    boundary_weight: float = 2.0  # cross-entropy weight of the thin boundary class (background and interior: 1)


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice, per channel over the whole batch ("batch Dice", as nnU-Net), averaged over channels.

    prob, target: [B, C, *spatial] in [0, 1].
    """
    dims = (0, *range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


PARTS = ("seg_ce", "seg_dice", "marker_bce", "marker_dice")


def combined_loss(seg_logits, marker_logits, classes, marker, w: LossWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of the four terms (computed in float32 under AMP).

    Returns (loss, the unweighted terms in the order of PARTS, detached: read them when logging, not every step).

    seg_logits [B, 3, *S], marker_logits [B, 1, *S], classes [B, *S] int64, marker [B, 1, *S] float.
    """
    seg_logits, marker_logits = seg_logits.float(), marker_logits.float()
    class_weight = torch.tensor([1.0, w.boundary_weight, 1.0], device=seg_logits.device)
    ce = F.cross_entropy(seg_logits, classes, weight=class_weight)
    onehot = F.one_hot(classes, 3).movedim(-1, 1).to(seg_logits.dtype)
    dice = soft_dice_loss(seg_logits.softmax(1)[:, 1:], onehot[:, 1:])
    bce = F.binary_cross_entropy_with_logits(marker_logits, marker)
    mdice = soft_dice_loss(marker_logits.sigmoid(), marker)
    loss = w.seg_ce * ce + w.seg_dice * dice + w.marker_bce * bce + w.marker_dice * mdice
    return loss, torch.stack([ce, dice, bce, mdice]).detach()
