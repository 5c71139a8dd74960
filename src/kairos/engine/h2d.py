"""Host-to-device copies that do not stall the host.

``torch.tensor(values, device="cuda")`` copies from pageable memory and then waits for the
stream, so every small per-step tensor (ids, positions, block tables, sampling parameters)
would be a host sync behind the GPU work already queued. Staging through pinned memory
(torch's caching host allocator keeps those buffers alive until the copy has run) lets the
copy queue like a kernel; a step then syncs once, when the sampled token ids come back.
"""

from __future__ import annotations

import torch


def h2d(values: list | torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``values`` (a Python list or a CPU tensor) as a tensor on ``device``, copied asynchronously on CUDA."""
    cuda = device.type == "cuda"
    if isinstance(values, torch.Tensor):
        t = values if dtype is None else values.to(dtype)
        if not cuda:
            return t.to(device)
        t = t.pin_memory()
    else:
        t = torch.tensor(values, dtype=dtype, pin_memory=cuda)  # (pinned from the start: one copy)
        if not cuda:
            return t.to(device)
    return t.to(device, non_blocking=True)
