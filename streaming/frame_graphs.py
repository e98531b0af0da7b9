"""The whole frame step (codec encode -> LM -> codec decode) as one CUDA graph per batch-size bucket.

The slot pool's states are persistent tensors stepped in place, so a graph captured over rows [0, bucket)
stays valid while sessions join (row reset) and leave (last row moved down): no recapture. A step with n
active sessions replays the smallest bucket >= n; rows [n, bucket) are padding (free slots: their state
advances harmlessly and is reset when a session claims the slot). Every bucket is captured once, up front,
while the whole pool is fresh, and the pool is reset afterwards. The graphs share one memory pool (they
never run concurrently, and each keeps its own outputs alive).

Without CUDA (or with NO_CUDA_GRAPH=1) the same bucketed step runs eagerly, which is what CPU tests check.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

StepFn = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]


def bucket_sizes(capacity: int) -> list[int]:
    """Powers of two below `capacity`, then `capacity` itself."""
    sizes, b = [], 1
    while b < capacity:
        sizes.append(b)
        b *= 2
    return [*sizes, capacity]


def graphs_wanted(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("NO_CUDA_GRAPH") != "1"


class FrameGraphs:
    def __init__(self, step: StepFn, capacity: int, frame_shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype, use_graphs: bool):
        """`step(inputs[:b], b)` runs the device step over pool rows [0, b) and returns its output tensors."""
        self.step_fn, self.use_graphs = step, use_graphs
        self.buckets = bucket_sizes(capacity)
        self.inputs = torch.zeros(capacity, *frame_shape, device=device, dtype=dtype)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, dict[str, torch.Tensor]] = {}

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} rows exceed the pool's capacity {self.buckets[-1]}")

    def capture(self, reset_pool: Callable[[], None], warmup: int = 2) -> None:
        """Capture every bucket (the pool must be fresh: capturing steps it), then reset the pool."""
        if not self.use_graphs:
            return
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        for b in reversed(self.buckets):  # largest first: later captures fit in the memory it left
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):  # lazy initialisation (cuBLAS handles, Triton autotuning) outside capture
                    self.step_fn(self.inputs[:b], b)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[b] = self.step_fn(self.inputs[:b], b)
            self._graphs[b] = graph
        torch.cuda.synchronize()
        reset_pool()

    def run(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames [n, ...] for pool rows [0, n) -> each output's first n rows."""
        n = frames.shape[0]
        b = self.bucket(n)
        self.inputs[:n].copy_(frames)
        self.inputs[n:b].zero_()
        if b in self._graphs:
            self._graphs[b].replay()
            outputs = self._outputs[b]
        else:
            outputs = self.step_fn(self.inputs[:b], b)
        return {name: t[:n] for name, t in outputs.items()}
