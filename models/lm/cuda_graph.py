"""Capture a whole generator frame step (backbone + depformer loop + sampling) in one CUDA graph.

The generator state is a persistent pool of batch slots: its tensors are allocated once and updated in
place, so sessions join (slot reset) and leave without recapture; one graph per pool size (bucket).
Falls back to eager execution on CPU or when NO_CUDA_GRAPH=1.
"""

from __future__ import annotations

import os

import torch

from models.lm.generator import GenState, LMGenerator, StepOutput


class GraphedGenerator:
    def __init__(self, gen: LMGenerator, state: GenState, warmup: int = 2):
        self.gen, self.state = gen, state
        self.enabled = gen.model.device.type == "cuda" and os.environ.get("NO_CUDA_GRAPH") != "1"
        self._graph: torch.cuda.CUDAGraph | None = None
        self._codes: torch.Tensor | None = None
        self._out: StepOutput | None = None
        self._warmup = warmup

    def _capture(self, codes: torch.Tensor) -> None:
        self._codes = codes.clone()
        # Capture happens on the pool's first frame, while every slot is fresh: warm up on a side stream
        # (allocator + lazy init), capture, then reset the pool to that fresh state.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self._warmup):
                self.gen.step(self._codes, self.state)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self.gen.step(self._codes, self.state)
        self.state.reset()

    @torch.no_grad()
    def step(self, codes: torch.Tensor) -> StepOutput:
        if not self.enabled:
            return self.gen.step(codes, self.state)
        if self._graph is None:
            self._capture(codes)
        self._codes.copy_(codes)
        self._graph.replay()
        return self._out
