"""Mimi-compatible streaming neural audio codec (24 kHz mono <-> 12.5 Hz discrete codes).

encode: SEANet (24 kHz -> 25 Hz) -> transformer -> learnt stride-2 conv (-> 12.5 Hz) -> split RVQ.
decode: RVQ lookup -> depthwise transposed conv (-> 25 Hz) -> transformer -> SEANet decoder.
Offline calls (`StreamingCodec.encode/decode`) are streaming calls over a fresh state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from models.codec.base import StreamingCodec, check_codebooks
from models.codec.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTrState
from models.codec.quantizer import QuantizerConfig, SplitResidualVQ
from models.codec.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder, StackState
from models.codec.transformer import CodecTransformer, CodecTransformerConfig, TransformerState
from models.layout import store_linear_weights_transposed
from models.state import StreamState

SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
FRAME_SIZE = 1920


@dataclass
class CodecConfig:
    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    transformer: CodecTransformerConfig = field(default_factory=CodecTransformerConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    num_codebooks: int = 8  # codebooks used for encode (Moshi uses 8)

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def downsample_stride(self) -> int:
        stride = self.frame_size // self.seanet.hop_length
        if stride * self.seanet.hop_length != self.frame_size:
            raise ValueError("frame size must be a multiple of the SEANet hop length")
        return stride

    @classmethod
    def mimi(cls, num_codebooks: int = 8) -> CodecConfig:
        """kyutai's published Mimi (tokenizer-e351c8d8-checkpoint125)."""
        return cls(num_codebooks=num_codebooks)

    @classmethod
    def tiny(cls, num_codebooks: int = 4) -> CodecConfig:
        """A small config with Mimi's topology, for tests and the embedded default."""
        return cls(
            seanet=SEANetConfig(dimension=32, n_filters=4),
            transformer=CodecTransformerConfig(d_model=32, num_heads=2, num_layers=2, dim_feedforward=64),
            quantizer=QuantizerConfig(dimension=16, n_q=8, bins=64, input_dimension=32, output_dimension=32),
            num_codebooks=num_codebooks,
        )

    def with_codebooks(self, n: int) -> CodecConfig:
        return replace(self, num_codebooks=n)


@dataclass
class CodecState(StreamState):
    """Per-session streaming state; one row per batch slot."""

    encoder: StackState
    encoder_transformer: TransformerState
    downsample: ConvState
    upsample: ConvTrState
    decoder_transformer: TransformerState
    decoder: StackState

    @property
    def batch_size(self) -> int:
        return self.downsample.first.shape[0]


class Codec(StreamingCodec):
    def __init__(self, cfg: CodecConfig | None = None):
        super().__init__()
        cfg = cfg or CodecConfig.mimi()
        check_codebooks(cfg.num_codebooks, cfg.quantizer.n_q)
        self.cfg = cfg
        dim = cfg.seanet.dimension
        self.encoder = SEANetEncoder(cfg.seanet)
        self.decoder = SEANetDecoder(cfg.seanet)
        self.encoder_transformer = CodecTransformer(cfg.transformer)
        self.decoder_transformer = CodecTransformer(cfg.transformer)
        stride = cfg.downsample_stride
        self.downsample = CausalConv1d(dim, dim, 2 * stride, stride=stride, bias=False, pad_mode="replicate")
        self.upsample = CausalConvTranspose1d(dim, dim, 2 * stride, stride=stride, groups=dim, bias=False)
        self.quantizer = SplitResidualVQ(cfg.quantizer)
        store_linear_weights_transposed(self)

    @property
    def max_codebooks(self) -> int:
        return self.cfg.quantizer.n_q

    @property
    def bins(self) -> int:
        return self.cfg.quantizer.bins

    @property
    def device(self) -> torch.device:
        return self.downsample.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.downsample.weight.dtype

    # -- streaming --------------------------------------------------------------------------------
    def init_state(self, batch: int = 1, device: torch.device | None = None, chunk: int = 16) -> CodecState:
        device = device or self.device
        return CodecState(
            encoder=self.encoder.init_state(batch, device),
            encoder_transformer=self.encoder_transformer.init_state(batch, device, chunk),
            downsample=self.downsample.init_state(batch, device),
            upsample=self.upsample.init_state(batch, device),
            decoder_transformer=self.decoder_transformer.init_state(batch, device, chunk),
            decoder=self.decoder.init_state(batch, device),
        )

    def encode_step(self, wav: torch.Tensor, state: CodecState) -> torch.Tensor:
        """wav: [B, 1, k*frame_size] -> codes [B, n_q, k]. Advances `state`."""
        wav = self._check_frames(wav)
        x = self.encoder(wav, state.encoder)
        x = self.encoder_transformer(x, state.encoder_transformer)
        x = self.downsample(x, state.downsample)
        return self.quantizer.encode(x, self.num_codebooks)

    def decode_step(self, codes: torch.Tensor, state: CodecState) -> torch.Tensor:
        """codes: [B, K, k] -> wav [B, 1, k*frame_size]. Advances `state`."""
        self._check_codes(codes)
        x = self.quantizer.decode(codes)
        x = self.upsample(x, state.upsample)
        x = self.decoder_transformer(x, state.decoder_transformer)
        return self.decoder(x, state.decoder)

    def reset_decoder(self, state: CodecState, mask: torch.Tensor) -> None:
        """Restart the decoding half of `state` for the masked rows (the encoding half keeps running)."""
        for part in (state.upsample, state.decoder_transformer, state.decoder):
            part.reset(mask)
