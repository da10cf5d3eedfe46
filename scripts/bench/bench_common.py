"""What the benchmark scripts share: models that share one set of weights, the resident set size of the process."""

from __future__ import annotations

import resource

import torch

from openpi.models.pi0_config import Pi0Config
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch

MIB = 2**20


def rss_mib() -> float:
    """This process's resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB


def view(base: PI0Pytorch, config: Pi0Config) -> PI0Pytorch:
    """A model of ``config`` (in eval mode) that shares ``base``'s weights: built on the meta device, then given
    ``base``'s tensors, so its budget or prompt trimming can differ without a copy."""
    with torch.device("meta"):
        model = PI0Pytorch(config)
    model.load_state_dict(base.state_dict(), assign=True, strict=True)
    return model.eval()
