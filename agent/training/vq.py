"""Training-time residual vector quantization: straight-through estimator + EMA codebooks + dead-code restarts.

Inference uses `models.codec.quantizer` unchanged; this only updates its `codebooks` buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.codec.quantizer import ResidualVQ


class EMACodebooks:
    def __init__(self, rvq: ResidualVQ, decay: float = 0.99, eps: float = 1e-5):
        self.rvq, self.decay, self.eps = rvq, decay, eps
        books = rvq.codebooks
        self.usage = torch.ones(books.shape[:2], device=books.device)
        self.sums = books.detach().clone()

    def state_dict(self) -> dict:
        return {"usage": self.usage, "sums": self.sums}

    def load_state_dict(self, state: dict) -> None:
        self.usage.copy_(state["usage"])
        self.sums.copy_(state["sums"])

    def quantize(self, x: torch.Tensor, n_q: int, update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C_in, T] -> (decoded latent [B, C_out, T] with straight-through gradient, commitment loss)."""
        rvq = self.rvq
        z = F.conv1d(x, rvq.input_proj.weight)  # [B, D, T]
        B, D, T = z.shape
        flat = z.transpose(1, 2).reshape(-1, D)
        residual = flat
        quant = torch.zeros_like(flat)
        commit = flat.new_zeros(())
        for k in range(n_q):
            book = rvq.codebooks[k]
            dist = residual.detach().pow(2).sum(1, keepdim=True) - 2 * residual.detach() @ book.t() + \
                book.pow(2).sum(1)[None]
            idx = dist.argmin(1)
            q = F.embedding(idx, book)
            commit = commit + F.mse_loss(residual, q.detach())
            if update:
                self._ema_update(k, residual.detach(), idx)
            quant = quant + q
            residual = residual - q.detach()
        quant = flat + (quant - flat).detach()
        out = F.conv1d(quant.view(B, T, D).transpose(1, 2), rvq.output_proj.weight)
        return out, commit / n_q

    @torch.no_grad()
    def _ema_update(self, k: int, vectors: torch.Tensor, idx: torch.Tensor) -> None:
        bins = self.usage.shape[1]
        counts = torch.bincount(idx, minlength=bins).float()
        sums = torch.zeros_like(self.sums[k]).index_add_(0, idx, vectors)
        self.usage[k].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums[k].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        dead = self.usage[k] < 0.02  # restart unused codes on random current vectors
        if dead.any():
            pick = vectors[torch.randint(0, vectors.shape[0], (int(dead.sum()),), device=vectors.device)]
            self.sums[k][dead] = pick
            self.usage[k][dead] = 1.0
        self.rvq.codebooks[k].copy_(self.sums[k] / self.usage[k].clamp_min(self.eps)[:, None])
