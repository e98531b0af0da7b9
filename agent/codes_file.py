"""The `.codes` file: discrete codec codes plus what is needed to decode them back to audio."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


class CodesFileError(ValueError):
    pass


@dataclass
class CodesFile:
    codes: torch.Tensor  # [K, T] int
    num_samples: int  # original length at sample_rate, for trimming the decoded audio
    sample_rate: int
    frame_rate: float
    model: str

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {"num_samples": str(self.num_samples), "sample_rate": str(self.sample_rate),
                "frame_rate": str(self.frame_rate), "model": self.model, "format": "duplex-codes-v1"}
        save_file({"codes": self.codes.to(torch.int32).contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> CodesFile:
        path = Path(path)
        if not path.is_file():
            raise CodesFileError(f"codes file not found: {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                codes = f.get_tensor("codes").long()
        except Exception as exc:  # noqa: BLE001
            raise CodesFileError(f"{path} is not a codes file written by `duplex codec encode` ({exc})") from exc
        if meta.get("format") != "duplex-codes-v1" or codes.dim() != 2:
            raise CodesFileError(f"{path} is not a duplex codes file (metadata: {json.dumps(meta)})")
        return cls(codes, int(meta["num_samples"]), int(meta["sample_rate"]), float(meta["frame_rate"]),
                   meta.get("model", "?"))
