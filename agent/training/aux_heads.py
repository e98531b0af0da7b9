"""Training-only auxiliary heads: dense supervision for what the answer loss teaches only sparsely.

The answer text gives the backbone a handful of useful targets per dialogue, and only after the question. Two
extra losses make the hard parts learnable in a CPU budget; neither head is exported or used at inference:

- `question` (CTC): the backbone's hidden state during the user's turn must spell the user's question (streaming
  ASR on the user track, alignment-free, so full-sentence TTS needs no word timings);
- `scene`: the image encoder's pooled tokens must classify the scene's shape, colour and object count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agent.training.dialogues import COLOURS, SHAPES

MAX_COUNT = 4


@dataclass
class AuxTargets:
    """Per batch row: the question's token ids and how many steps its CTC window spans (0 = no question), and
    the scene labels (shape, colour, count - 1) or None."""

    question: list[torch.Tensor]
    window: list[int]
    scene: list[tuple[int, int, int] | None]


def scene_labels(scene: dict | None) -> tuple[int, int, int] | None:
    if not scene:
        return None
    return SHAPES.index(scene["shape"]), COLOURS.index(scene["colour"]), scene["count"] - 1


class AuxHeads(nn.Module):
    def __init__(self, dim: int, text_card: int, image_dim: int | None):
        super().__init__()
        self.blank = text_card
        self.question = nn.Linear(dim, text_card + 1)
        self.scene = nn.Linear(image_dim, len(SHAPES) + len(COLOURS) + MAX_COUNT) if image_dim else None

    def question_loss(self, hidden: torch.Tensor, aux: AuxTargets, rows_total: float | None = None) -> torch.Tensor:
        """CTC of the question over the first `window` steps of each row's hidden states [B, T, dim], per row
        divided by its length and averaged over `rows_total` rows (default: this batch's rows with a question;
        a rank of a distributed run passes the global batch's count scaled by the world size)."""
        rows = question_rows(aux)
        if not rows:
            return hidden.sum() * 0
        T = max(aux.window[i] for i in rows)
        logp = F.log_softmax(self.question(hidden[rows, :T]).float(), -1).transpose(0, 1)  # [T, B, C]
        targets = torch.cat([aux.question[i] for i in rows]).to(hidden.device)
        lengths = [aux.question[i].numel() for i in rows]
        per_row = F.ctc_loss(logp, targets, [aux.window[i] for i in rows], lengths, blank=self.blank,
                             zero_infinity=True, reduction="none")
        per_row = per_row / torch.tensor(lengths, device=per_row.device, dtype=per_row.dtype)
        return per_row.sum() / (rows_total or len(rows))

    def scene_loss(self, tokens: torch.Tensor, labels: list[tuple[int, int, int] | None],
                   rows_total: float | None = None) -> torch.Tensor:
        """Shape / colour / count classification from the image tokens [B, N, D] of the rows with a scene,
        averaged over `rows_total` rows (default: this batch's rows with a scene)."""
        rows = scene_rows(labels)
        if self.scene is None or not rows:
            return tokens.sum() * 0
        logits = self.scene(tokens[rows].mean(1)).float()
        y = torch.tensor([labels[i] for i in rows], device=tokens.device)
        s, c = len(SHAPES), len(COLOURS)
        ce = (F.cross_entropy(logits[:, :s], y[:, 0], reduction="sum")
              + F.cross_entropy(logits[:, s:s + c], y[:, 1], reduction="sum")
              + F.cross_entropy(logits[:, s + c:], y[:, 2], reduction="sum"))
        return ce / 3 / (rows_total or len(rows))


def question_rows(aux: AuxTargets) -> list[int]:
    return [i for i, (q, w) in enumerate(zip(aux.question, aux.window)) if w > 0 and q.numel()]


def scene_rows(labels: list) -> list[int]:
    return [i for i, lab in enumerate(labels) if lab is not None]
