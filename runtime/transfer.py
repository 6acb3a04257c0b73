"""Host <-> device copies: the one copy path the weight streamer uses and the profiler measures.

`copy_to_device(dst, src, stream)` copies host `src` into device `dst` on `stream` (a CUDA copy stream),
non-blocking when `src` is pinned, so the copy overlaps compute and the caller orders it with events;
`copy_to_host(dst, src, stream)` is the reverse (non-blocking into pinned `dst`). With `stream=None` or
no CUDA tensor involved the copy is a plain synchronous `dst.copy_(src)` (CPU-only runs, forced
streaming in tests). Both return the CUDA event recorded on `stream` after the copy, or None.
"""

from __future__ import annotations

import torch


def _copy(dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream | None,
          host: torch.Tensor) -> torch.cuda.Event | None:
    on_cuda = dst.device.type == "cuda" or src.device.type == "cuda"
    if stream is None or not on_cuda:
        dst.copy_(src)
        return None
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=host.is_pinned())
        done = torch.cuda.Event()
        done.record(stream)
    return done


def copy_to_device(dst: torch.Tensor, src: torch.Tensor,
                   stream: torch.cuda.Stream | None = None) -> torch.cuda.Event | None:
    return _copy(dst, src, stream, host=src)


def copy_to_host(dst: torch.Tensor, src: torch.Tensor,
                 stream: torch.cuda.Stream | None = None) -> torch.cuda.Event | None:
    return _copy(dst, src, stream, host=dst)
