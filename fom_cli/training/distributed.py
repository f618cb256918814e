"""Training on several processes (torchrun): their environment, and batch norm synchronised across them.

Every process trains on its share of each batch; batch statistics and logged losses are sums or means
over all processes, so the run behaves like one process with the whole batch.
"""

import os

import torch
import torch.distributed as dist
from torch import nn


def distributed_environment():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain run."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) that gradients flow through: the gradient of a sum over processes is the sum of the
    processes' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, gradient):
        gradient = gradient.clone()
        dist.all_reduce(gradient)
        return gradient


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm whose batch statistics are sums over every process's batch: torch.nn.SyncBatchNorm for
    CPUs (torch's own runs only on GPUs). All processes normalise alike and keep equal running statistics."""

    def forward(self, input):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        count = input.numel() // channels
        totals = _SumOverProcesses.apply(torch.cat([input.sum(dims), (input * input).sum(dims),
                                                    input.new_tensor([count])]))
        n = totals[-1]
        mean = totals[:channels] / n
        variance = (totals[channels:2 * channels] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(variance * n / (n - 1), momentum)   # unbiased, as batch norm keeps it
        shape = (1, channels) + (1,) * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def synchronise_batch_norm(module, device):
    """Batch norm over the whole batch of all processes, not each process's share: torch.nn.SyncBatchNorm
    on GPUs, CpuSyncBatchNorm on CPUs. Weights, statistics and state-dict keys stay as they were."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced.to(child.weight.device))
        else:
            synchronise_batch_norm(child, device)
    return module


def mean_over_processes(values, world_size):
    """{name: float} averaged over all processes (every process must call this with the same names)."""
    if world_size == 1 or not values:
        return values
    names = list(values)   # the same order in every process: the same code put them there
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {name: value / world_size for name, value in zip(names, tensor.tolist())}
