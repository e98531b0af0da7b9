"""Text tokenizer for the inner-monologue stream: a SentencePiece model from a local file.

kyutai ships `tokenizer_spm_32k_3.model`; ids 0 (EPAD) and 3 (PAD) are special and never printed.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_IDS = (0, 3)


class TokenizerError(RuntimeError):
    pass


class TextTokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer model not found: {path} (kyutai's is tokenizer_spm_32k_3.model)")
        try:
            import sentencepiece
        except ImportError as exc:
            raise TokenizerError("sentencepiece is required for text tokens: pip install sentencepiece") from exc
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise TokenizerError(f"{path} is not a SentencePiece model: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: list[int]) -> str:
        return self._sp.DecodeIds([i for i in ids if i not in SPECIAL_IDS])

    def piece_text(self, token: int) -> str:
        """Text of one streamed token as servers print it ('▁' -> space); '' for PAD/EPAD."""
        if token in SPECIAL_IDS or not 0 <= token < self.vocab_size:
            return ""
        if self._sp.IsControl(token) or self._sp.IsUnknown(token):
            return ""
        return self._sp.IdToPiece(token).replace("▁", " ")
