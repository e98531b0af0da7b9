"""Split residual vector quantizer: one semantic codebook plus N acoustic codebooks.

Both halves quantize the *same* latent (the acoustic half is not the residual of the semantic one).
Codebooks are stored as plain vector tables; kyutai's EMA buffers are converted at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerConfig:
    dimension: int = 256
    input_dimension: int = 512
    output_dimension: int = 512
    n_q: int = 32  # codebooks stored in the checkpoint
    n_q_semantic: int = 1
    bins: int = 2048


class ResidualVQ(nn.Module):
    def __init__(self, cfg: QuantizerConfig, n_q: int):
        super().__init__()
        self.input_proj = nn.Conv1d(cfg.input_dimension, cfg.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(cfg.dimension, cfg.output_dimension, 1, bias=False)
        self.register_buffer("codebooks", torch.randn(n_q, cfg.bins, cfg.dimension))

    def _augmented_tables(self) -> torch.Tensor:
        """[n_q, D + 2, bins] = per code (e, 1, |e|^2): distances become one matmul, as in torch.cdist."""
        if torch.compiler.is_compiling():  # exported graphs: the same table, computed in the graph (no cache key)
            books = self.codebooks
            return torch.cat([books, torch.ones_like(books[..., :1]), books.pow(2).sum(-1, keepdim=True)],
                             dim=-1).transpose(1, 2)
        key = (self.codebooks.data_ptr(), self.codebooks._version, self.codebooks.device)
        if getattr(self, "_aug_key", None) != key:
            books = self.codebooks.detach()
            ones = torch.ones_like(books[..., :1])
            norms = books.pow(2).sum(-1, keepdim=True)
            self._aug = torch.cat([books, ones, norms], dim=-1).transpose(1, 2).contiguous()
            self._aug_key = key
        return self._aug

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """x: [B, C, T] -> codes [B, n_q, T] (greedy residual nearest neighbour, L2).

        Squared distances are computed exactly like torch.cdist's matmul path ([-2x, |x|^2, 1] . [e, 1, |e|^2])
        so codes match kyutai's reference bit for bit, without re-deriving |e|^2 every frame.
        """
        B, _, T = x.shape
        residual = F.conv1d(x, self.input_proj.weight).transpose(1, 2).reshape(B * T, -1)
        tables = self._augmented_tables()
        codes = []
        for k in range(n_q):
            x_aug = torch.cat([residual * -2, residual.pow(2).sum(-1, keepdim=True),
                               torch.ones_like(residual[:, :1])], dim=-1)
            idx = torch.matmul(x_aug, tables[k]).argmin(dim=-1)
            residual = residual - F.embedding(idx, self.codebooks[k])
            codes.append(idx)
        return torch.stack(codes, dim=-1).view(B, T, n_q).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, K, T] -> [B, C_out, T]."""
        out = None
        for k in range(codes.shape[1]):
            vec = F.embedding(codes[:, k], self.codebooks[k])
            out = vec if out is None else out + vec
        return F.conv1d(out.transpose(1, 2), self.output_proj.weight)


class SplitResidualVQ(nn.Module):
    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.cfg = cfg
        self.rvq_first = ResidualVQ(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualVQ(cfg, cfg.n_q - cfg.n_q_semantic)

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        s = self.cfg.n_q_semantic
        codes = self.rvq_first.encode(x, min(n_q, s))
        if n_q > s:
            codes = torch.cat([codes, self.rvq_rest.encode(x, n_q - s)], dim=1)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        s = self.cfg.n_q_semantic
        out = self.rvq_first.decode(codes[:, :s])
        if codes.shape[1] > s:
            out = out + self.rvq_rest.decode(codes[:, s:])
        return out
