"""Runtime configuration of an Agent (everything has a sensible default)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AgentConfig:
    max_sessions: int = 16  # batch slots; a session beyond this is refused with SessionLimitError
    realtime: bool = True  # False: offline pacing (step as soon as input is there; nothing dropped)
    max_input_ms: int = 320  # input waiting beyond this is dropped (oldest first) when compute falls behind
    max_events: int = 256  # per-session event queue; a slow consumer loses the oldest audio/stats events
    max_chunk_s: float = 30.0  # largest single send_audio() call
    stats_every: int = 12  # frames between Stats events (~1 s)
    silence_frames_for_transcript: int = 6  # padding frames that close an utterance (~0.5 s)
    vision_fps: float = 2.0  # camera frames are sampled at most this often
    vision_min_change: float = 0.02  # ... and skipped when they barely differ from the view already encoded
    aec: bool = False  # cancel the model's own voice (AudioOut, as emitted) from send_audio's microphone input
    device: str = "auto"
    # one engine per device ("cuda:0", "cuda:1", ...; "cpu" counts as one and may repeat), each with
    # max_sessions slots; a new session goes to the engine with the most free slots (None: just `device`)
    devices: list[str] | None = None
    threads: int | None = None  # torch CPU threads (None: leave as is)
    # "torch" (PyTorch eager, CUDA graphs on a GPU) or "onnx" (the frame step as ONNX Runtime graphs)
    backend: str = "torch"
    onnx_dir: str | None = None  # exported graphs (default: the model folder's onnx/, else a per-user cache)
    onnx_quantize: str | None = None  # "int8": dynamically quantised matrix products (exported on first use)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if self.devices is not None and not self.devices:
            raise ValueError("devices, when given, must name at least one device")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', not {self.backend!r}")
        if self.max_input_ms < 80:
            raise ValueError("max_input_ms must be at least one frame (80 ms)")
        if self.max_events < 8:
            raise ValueError("max_events must be >= 8")


def config_from_args(args, **fields) -> AgentConfig:
    """AgentConfig from parsed command-line arguments (`device`, and `backend`, `onnx_dir`, `onnx_quantize` where
    the command has them) plus command-specific fields: what `duplex run/serve/chat/bench` share."""
    shared = dict(device=args.device, backend=getattr(args, "backend", "torch"),
                  onnx_dir=getattr(args, "onnx_dir", None), onnx_quantize=getattr(args, "onnx_quantize", None))
    return AgentConfig(**{**shared, **fields})
