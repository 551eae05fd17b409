"""Multi-head pose encoder: a VGG16-style CNN shared by M fully-connected heads (paper Sec. 4.1).

Each head predicts a rotation (6D / S2S2) and an in-plane shift in pixels; width, depth and the image
size seen by the encoder are configurable so the same design runs on a laptop CPU and a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry.rotations import sixd_to_matrix

# VGG16's convolution counts per block; channels double per block up to 8× the base width.
_VGG16_BLOCKS = (2, 2, 3, 3, 3)


def _vgg_backbone(width: int, box: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    c_in, size = 1, box
    for i, n_conv in enumerate(_VGG16_BLOCKS):
        if size < 2:
            break
        c_out = width * min(2**i, 8)
        for _ in range(n_conv):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.MaxPool2d(2))
        size //= 2
    return nn.Sequential(*layers), c_in * size * size


class MultiHeadEncoder(nn.Module):
    """Image (B, L, L) → M candidate poses: rotations (B, M, 3, 3) and shifts (B, M, 2) in pixels."""

    def __init__(self, box: int, heads: int, width: int = 32, hidden: int = 256, max_shift: float = 0.0):
        super().__init__()
        self.box, self.heads, self.max_shift = box, heads, max_shift
        self.backbone, n_feat = _vgg_backbone(width, box)
        self.heads_mlp = nn.ModuleList(
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(n_feat, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, 8),
            )
            for _ in range(heads)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate rotations and shifts for a batch of (already normalised) images."""
        feat = self.backbone(images[:, None])
        out = torch.stack([head(feat) for head in self.heads_mlp], dim=1)
        rotations = sixd_to_matrix(out[..., :6])
        shifts = self.max_shift * torch.tanh(out[..., 6:8])
        return rotations, shifts
