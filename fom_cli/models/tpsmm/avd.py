"""AvdNetwork: Animation via Disentanglement (the paper's Sec. 3.4).

Relative motion transfers the driving video's keypoint motion, which goes wrong when the source and the
first driving frame differ in pose. AVD instead encodes the source keypoints into an identity (shape)
code and the driving keypoints into a pose code, and decodes the pair into keypoints with the source's
shape in the driving pose. Trained on its own, after the rest of the model.
"""

import torch
from torch import nn

from fom_cli.models.tpsmm.keypoints import POINTS_PER_TPS


def _perceptron(sizes):
    """Linear -> BatchNorm1d -> ReLU between consecutive sizes, a plain Linear last: the original's
    nn.Sequential indices (0, 1, 3, 4, ...) are the state-dict keys."""
    layers = []
    for i, (in_size, out_size) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(in_size, out_size))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(out_size), nn.ReLU()]
    return nn.Sequential(*layers)


class AvdNetwork(nn.Module):
    def __init__(self, num_tps, id_bottle_size=64, pose_bottle_size=64):
        super().__init__()
        keypoint_size = POINTS_PER_TPS * 2 * num_tps
        self.num_tps = num_tps
        self.id_encoder = _perceptron([keypoint_size, 256, 512, 1024, id_bottle_size])
        self.pose_encoder = _perceptron([keypoint_size, 256, 512, 1024, pose_bottle_size])
        self.decoder = _perceptron([pose_bottle_size + id_bottle_size, 1024, 512, 256, keypoint_size])

    def encode_identity(self, kp_source):
        """The source keypoints' identity code: computed once per source image."""
        return self.id_encoder(kp_source.flatten(1))

    def decode(self, identity, kp_driving):
        """Keypoints with the identity's shape in each driving frame's pose. identity: batch 1 or N."""
        n = kp_driving.shape[0]
        pose = self.pose_encoder(kp_driving.flatten(1))
        keypoints = self.decoder(torch.cat([pose, identity.expand(n, -1)], dim=1))
        return keypoints.view(n, self.num_tps * POINTS_PER_TPS, 2)

    def forward(self, kp_source, kp_driving):
        """kp_source (1 or N, 5 * num_tps, 2), kp_driving (N, 5 * num_tps, 2) -> (N, 5 * num_tps, 2)."""
        return self.decode(self.encode_identity(kp_source), kp_driving)
