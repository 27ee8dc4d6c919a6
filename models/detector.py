"""A small anchor-free road-user detector whose output follows the YOLOv8 layout.

Backbone to stride 16, fused back to one stride-8 map (the stride-16 branch
widens the receptive field for trucks), then a decoupled head: per cell, four
distances to the box sides and one logit per class. :meth:`forward` returns
``[B, 4 + nc, N]``: cx, cy, w, h in input pixels and sigmoid class scores,
cells in row-major order, exactly what a YOLOv8/YOLO11 export produces, so
one post-processing serves both.

Training uses FCOS-style centre sampling to pick positive cells and a
quality focal loss (the class target is the IoU of the predicted box) with
a GIoU box loss, as in GFL; scores then rank boxes by localisation quality.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DetectionLoss", "RoadsideDetector", "anchor_points", "box_iou_pairs"]

STRIDE = 8


class ConvBnAct(nn.Sequential):
    """Conv, batch norm, SiLU: the YOLO building block."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),
        )


class Residual(nn.Module):
    """Two 3x3 convs with a skip connection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBnAct(c, c), ConvBnAct(c, c))

    def forward(self, x: Tensor) -> Tensor:
        residual: Tensor = self.body(x)
        return x + residual


class RoadsideDetector(nn.Module):
    """Stride-8 anchor-free detector; see the module docstring for the layout."""

    stride = STRIDE

    def __init__(self, num_classes: int = 4, widths: tuple[int, int, int, int] = (16, 32, 64, 96)):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.num_classes = num_classes
        self.stem = nn.Sequential(ConvBnAct(3, c1, 3, 2), ConvBnAct(c1, c2, 3, 2), ConvBnAct(c2, c2))
        self.stage8 = nn.Sequential(ConvBnAct(c2, c3, 3, 2), Residual(c3))
        self.stage16 = nn.Sequential(ConvBnAct(c3, c4, 3, 2), Residual(c4))
        self.fuse = ConvBnAct(c3 + c4, c3, 1)
        self.box_head = nn.Sequential(ConvBnAct(c3, c3), nn.Conv2d(c3, 4, 1))
        self.cls_head = nn.Sequential(ConvBnAct(c3, c3), nn.Conv2d(c3, num_classes, 1))
        self._init_biases()

    def _init_biases(self) -> None:
        cls_out = self.cls_head[-1]
        box_out = self.box_head[-1]
        assert isinstance(cls_out, nn.Conv2d)
        assert isinstance(box_out, nn.Conv2d)
        assert cls_out.bias is not None
        assert box_out.bias is not None
        # Start with every score near 0.01 so the many background cells do not
        # swamp the first steps (RetinaNet's prior), and boxes about 3 cells wide.
        nn.init.constant_(cls_out.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.constant_(box_out.bias, 1.3)

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Box-side distances in pixels ``[B, 4, h, w]`` and class logits ``[B, nc, h, w]``."""
        f8 = self.stage8(self.stem(images))
        f16 = self.stage16(f8)
        up = F.interpolate(f16, scale_factor=2.0, mode="nearest")  # inputs are multiples of 16
        f = self.fuse(torch.cat([f8, up], dim=1))
        distances = F.softplus(self.box_head(f)) * self.stride
        return distances, self.cls_head(f)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 4 + nc, N]``: cx, cy, w, h in input pixels, then class scores."""
        distances, logits = self.forward_raw(images)
        ltrb = distances.flatten(2)
        # Python ints: an export then holds the grid as a constant (only batch is dynamic).
        h, w = int(distances.shape[-2]), int(distances.shape[-1])
        points = anchor_points(h, w, self.stride, images)
        points = points.transpose(0, 1).unsqueeze(0)  # [1, 2, N]
        lt, rb = ltrb[:, :2], ltrb[:, 2:]
        centre = points + (rb - lt) / 2
        size = lt + rb
        return torch.cat([centre, size, logits.flatten(2).sigmoid()], dim=1)


def anchor_points(h: int, w: int, stride: int, like: Tensor) -> Tensor:
    """Cell centres ``[h * w, 2]`` (x, y) in input pixels, row-major."""
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) * stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def box_iou_pairs(a: Tensor, b: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU and GIoU of matching rows of two ``[..., 4]`` xyxy tensors."""
    ix1, iy1 = torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1])
    ix2, iy2 = torch.minimum(a[..., 2], b[..., 2]), torch.minimum(a[..., 3], b[..., 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter + eps
    iou = inter / union
    cx1, cy1 = torch.minimum(a[..., 0], b[..., 0]), torch.minimum(a[..., 1], b[..., 1])
    cx2, cy2 = torch.maximum(a[..., 2], b[..., 2]), torch.maximum(a[..., 3], b[..., 3])
    hull = (cx2 - cx1) * (cy2 - cy1) + eps
    return iou, iou - (hull - union) / hull


class DetectionLoss(nn.Module):
    """Centre-sampling assignment + quality focal loss + GIoU loss.

    ``targets`` is ``[B, M, 5]`` (class, x1, y1, x2, y2 in input pixels) padded
    with class -1.
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = STRIDE,
        centre_radius: float = 2.5,
        box_weight: float = 2.0,
        l1_weight: float = 0.25,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stride = stride
        self.centre_radius = centre_radius
        self.box_weight = box_weight
        self.l1_weight = l1_weight

    def forward(self, distances: Tensor, logits: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        B, _, h, w = distances.shape
        ltrb = distances.flatten(2).transpose(1, 2)  # [B, N, 4]
        cls_logits = logits.flatten(2).transpose(1, 2)  # [B, N, nc]
        points = anchor_points(h, w, self.stride, distances)  # [N, 2]
        pred_boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)

        assigned, positive = self._assign(points, targets, h, w)  # [B, N], [B, N]
        gt = torch.gather(targets, 1, assigned.unsqueeze(-1).expand(-1, -1, 5))  # [B, N, 5]
        gt_boxes, gt_cls = gt[..., 1:], gt[..., 0].long()

        num_pos = max(int(positive.sum()), 1)
        iou, giou = box_iou_pairs(pred_boxes[positive], gt_boxes[positive])
        box_loss = (1.0 - giou).sum() / num_pos
        target_ltrb = torch.cat([points - gt_boxes[..., :2], gt_boxes[..., 2:] - points], dim=-1)
        l1_loss = (ltrb[positive] - target_ltrb[positive]).abs().sum() / (4 * num_pos * self.stride)

        quality = torch.zeros_like(cls_logits)
        pos_b, pos_n = positive.nonzero(as_tuple=True)
        quality[pos_b, pos_n, gt_cls[positive]] = iou.detach().clamp(min=0.01)
        prob = cls_logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(cls_logits, quality, reduction="none")
        cls_loss = (bce * (prob - quality).abs().pow(2)).sum() / num_pos

        total = cls_loss + self.box_weight * box_loss + self.l1_weight * l1_loss
        parts = {
            "cls": float(cls_loss.detach()),
            "box": float(box_loss.detach()),
            "l1": float(l1_loss.detach()),
            "pos": float(num_pos) / B,
        }
        return total, parts

    @torch.no_grad()
    def _assign(self, points: Tensor, targets: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Index of the GT each cell learns from, and which cells are positive.

        A cell is positive for a box when its centre lies inside the box and
        within ``centre_radius`` strides of the box centre; the cell holding
        the box centre always is, so tiny boxes get one. A cell claimed by
        several boxes learns the smallest.
        """
        valid = targets[..., 0] >= 0  # [B, M]
        x1, y1, x2, y2 = (targets[..., i].unsqueeze(1) for i in range(1, 5))  # [B, 1, M]
        px, py = points[:, 0].view(1, -1, 1), points[:, 1].view(1, -1, 1)  # [1, N, 1]
        inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        r = self.centre_radius * self.stride
        near = ((px - cx).abs() < r) & ((py - cy).abs() < r)
        candidate = inside & near & valid.unsqueeze(1)  # [B, N, M]

        centre_cell = (cy.squeeze(1) / self.stride).long().clamp(0, h - 1) * w + (
            cx.squeeze(1) / self.stride
        ).long().clamp(0, w - 1)  # [B, M]
        b_idx, m_idx = valid.nonzero(as_tuple=True)
        candidate[b_idx, centre_cell[b_idx, m_idx], m_idx] = True

        area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
        area = torch.where(candidate, area, torch.full_like(area, float("inf")))
        best_area, assigned = area.min(dim=2)
        return assigned, torch.isfinite(best_area)
