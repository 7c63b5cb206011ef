"""The seed's light augmentation: small random rotation, zoom and shift, per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 2.0,
    zoom: float = 0.01,
    shift: float = 0.01,
) -> torch.Tensor:
    """Rotate by up to ``degrees``, zoom by up to ``zoom`` and shift by up to ``shift``
    (fractions of the image size) each image of an [N, C, H, W] batch independently."""
    n = images.shape[0]

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(degrees))
    scale = 1 + uniform(zoom)
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of s image
    # widths is 2s there, and zooming in by `scale` samples a 1/scale smaller area.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, 2 * uniform(shift)], dim=1),
            torch.stack([sin, cos, 2 * uniform(shift)], dim=1),
        ],
        dim=1,
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
