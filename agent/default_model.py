"""The embedded default model: its sizes, its text tokenizer, and writing a model folder.

Sized to run several sessions in real time on a 2-core CPU and to ship inside the package (< 60 MB): a
6-layer Mamba2/attention hybrid LM sized from its codec. The shipped codec is the vocoder codec (8 codebooks,
`models.codec.vocoder`); `codec_config` sizes the small Mimi-topology neural codec of earlier rounds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from agent.bundle import write_manifest
from models.codec import Codec, CodecConfig, save_codec
from models.codec.quantizer import QuantizerConfig
from models.codec.seanet import SEANetConfig
from models.codec.transformer import CodecTransformerConfig
from models.lm import LMConfig, LMModel, MambaConfig, save_lm
from models.lm.config import VisionAdapterConfig
from models.vision.encoder import ImageEncoderConfig

CODEBOOKS = 4
TEXT_VOCAB = 256

# Seed text for the tokenizer: the conversation domain of the default model.
DOMAIN_TEXT = """hello how are you
hi there i am fine thank you
what is two plus three
the answer is five
what is seven minus four
it is three
how many circles do you see
i see three red circles
what colour is the square
the square is blue
spell the word cat
c a t
what do you see
i see a green triangle and the number four
count to five
one two three four five
good bye see you soon
sorry go ahead
zero one two three four five six seven eight nine ten eleven twelve
red green blue yellow black white orange purple circle square triangle star
"""


def codec_config(codebooks: int = CODEBOOKS, filters: int = 8) -> CodecConfig:
    """`codebooks` used of the 8 trained (x 8 bits x 12.5 Hz = 100 bit/s each); `filters`: SEANet width."""
    if not 1 <= codebooks <= 8:
        raise ValueError(f"codebooks must be in [1, 8], got {codebooks}")
    return CodecConfig(
        seanet=SEANetConfig(dimension=64, n_filters=filters),
        transformer=CodecTransformerConfig(d_model=64, num_heads=4, num_layers=2, dim_feedforward=256,
                                           context=250),
        quantizer=QuantizerConfig(dimension=32, n_q=8, bins=256, input_dimension=64, output_dimension=64),
        num_codebooks=codebooks,
    )


def lm_config(text_card: int = TEXT_VOCAB, codebooks: int = CODEBOOKS, semantic: int = 0) -> LMConfig:
    """`codebooks` per speaker: the codec's acoustic ones (the depformer generates that many per frame);
    `semantic`: user input streams after them that carry what was said (the ears' token, delay 0)."""
    k = codebooks
    return LMConfig(dim=256, num_heads=4, num_layers=6, pattern="MMA", context=250, text_card=text_card,
                    card=256, n_q=2 * k + semantic, dep_q=k,
                    delays=[0] + ([0] + [1] * (k - 1)) * 2 + [0] * semantic,
                    depformer_dim=128, depformer_dim_feedforward=int(4.125 * 128), depformer_num_heads=4,
                    depformer_num_layers=2, mamba=MambaConfig(d_state=32, headdim=32, chunk_size=32),
                    vision=VisionAdapterConfig(xa_dim=128, layers=[5], encoder=dataclasses.asdict(
                        ImageEncoderConfig(image_size=64, patch=8, dim=128, layers=2, heads=4, summary=1))))


def train_tokenizer(out_prefix: Path, text: str = DOMAIN_TEXT, vocab: int = TEXT_VOCAB) -> Path:
    """A SentencePiece model with kyutai's special ids (0 = EPAD, 3 = PAD)."""
    import sentencepiece as spm

    corpus = out_prefix.with_suffix(".txt")
    corpus.write_text(text)
    spm.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(out_prefix), vocab_size=vocab,
                                   hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
                                   bos_id=0, unk_id=1, eos_id=2, pad_id=3, minloglevel=2)
    corpus.unlink()
    out_prefix.with_suffix(".vocab").unlink(missing_ok=True)
    return out_prefix.with_suffix(".model")


def write_bundle(folder: Path, codec: Codec, lm: LMModel, tokenizer: Path | None, description: str,
                 trained: bool, sampling: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_codec(codec, folder / "codec.safetensors")
    save_lm(lm, folder / "lm.safetensors")
    write_manifest(folder, description, trained, tokenizer.name if tokenizer else None, sampling)


def init_untrained(folder: Path, seed: int = 0) -> None:
    """Seeded random weights at the default sizes (the starting point of `duplex train`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    codec = Codec(codec_config()).eval()
    lm = LMModel(lm_config()).eval()
    write_bundle(folder, codec, lm, tok, "untrained default (random weights; train with `duplex train`)",
                 trained=False)
