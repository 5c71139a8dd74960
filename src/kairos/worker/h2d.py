"""Host-to-device copies that do not stall the host, and device-to-host copies that wait for
their own step only.

``torch.tensor(values, device="cuda")`` copies from pageable memory and then waits for the
stream, so every small per-step tensor (ids, positions, block tables, sampling parameters)
would be a host sync behind the GPU work already queued. Staging through pinned memory
(torch's caching host allocator keeps those buffers alive until the copy has run) lets the
copy queue like a kernel; a step then syncs once, when the sampled token ids come back.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class HostCopy:
    """Tensors on their way to the host: :func:`d2h`."""

    tensors: list[torch.Tensor]
    event: torch.cuda.Event | None  # recorded after the copies; None: already on the host

    def wait(self) -> list[torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
        return self.tensors


def d2h(tensors: list[torch.Tensor]) -> HostCopy:
    """Start copying ``tensors`` to pinned host memory behind the work queued so far. Waiting on
    the copy waits for that work alone: with async scheduling the next step is queued before
    this one's tokens are read, and ``tensor.tolist()`` would wait for it as well."""
    if not tensors or tensors[0].device.type != "cuda":
        return HostCopy(tensors, None)
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
    event = torch.cuda.Event()
    event.record()
    return HostCopy(host, event)
