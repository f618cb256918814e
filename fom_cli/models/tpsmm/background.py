"""BgMotionPredictor: the background's motion between two frames, as one affine transform.

Used in training only (the original demo passes no background motion, i.e. the identity), but the
released vox, taichi and ted checkpoints hold its weights, so it must load.
"""

import torch
import torchvision
from torch import nn


class BgMotionPredictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.bg_encoder = torchvision.models.resnet18(weights=None, num_classes=6)
        # Source and driving frames stacked: 6 input channels.
        self.bg_encoder.conv1 = nn.Conv2d(6, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        # Start from the identity transform, whatever the images.
        with torch.no_grad():
            self.bg_encoder.fc.weight.zero_()
            self.bg_encoder.fc.bias.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float32))

    def forward(self, source_image, driving_image):
        """Two (N, 3, H, W) batches -> (N, 3, 3) matrices [[a, b, tx], [c, d, ty], [0, 0, 1]] mapping
        driving-frame coordinates (x, y, 1) to the source's."""
        n = source_image.shape[0]
        top_rows = self.bg_encoder(torch.cat([source_image, driving_image], dim=1)).view(n, 2, 3)
        last_row = torch.tensor([0, 0, 1], dtype=top_rows.dtype, device=top_rows.device).expand(n, 1, 3)
        return torch.cat([top_rows, last_row], dim=1)
