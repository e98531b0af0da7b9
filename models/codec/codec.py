"""Mimi-compatible streaming neural audio codec (24 kHz mono <-> 12.5 Hz discrete codes).

encode: SEANet (24 kHz -> 25 Hz) -> transformer -> learnt stride-2 conv (-> 12.5 Hz) -> split RVQ.
decode: RVQ lookup -> depthwise transposed conv (-> 25 Hz) -> transformer -> SEANet decoder.
Offline calls are streaming calls over a fresh state, so both give the same codes and audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

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


class Codec(nn.Module):
    def __init__(self, cfg: CodecConfig | None = None):
        super().__init__()
        cfg = cfg or CodecConfig.mimi()
        if not 1 <= cfg.num_codebooks <= cfg.quantizer.n_q:
            raise ValueError(f"num_codebooks must be in [1, {cfg.quantizer.n_q}], got {cfg.num_codebooks}")
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

    # -- properties -------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_size(self) -> int:
        return self.cfg.frame_size

    @property
    def num_codebooks(self) -> int:
        return self.cfg.num_codebooks

    @property
    def bins(self) -> int:
        return self.cfg.quantizer.bins

    @property
    def delay(self) -> int:
        """Samples by which decoded audio lags the input (none: encode and decode are frame-aligned)."""
        return 0

    @property
    def device(self) -> torch.device:
        return self.downsample.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.downsample.weight.dtype

    def set_num_codebooks(self, n: int) -> None:
        if not 1 <= n <= self.cfg.quantizer.n_q:
            raise ValueError(f"num_codebooks must be in [1, {self.cfg.quantizer.n_q}], got {n}")
        self.cfg = self.cfg.with_codebooks(n)

    # -- streaming --------------------------------------------------------------------------------
    def init_state(self, batch: int = 1, device: torch.device | None = None, chunk: int = 16) -> CodecState:
        device = device or self.downsample.weight.device
        return CodecState(
            encoder=self.encoder.init_state(batch, device),
            encoder_transformer=self.encoder_transformer.init_state(batch, device, chunk),
            downsample=self.downsample.init_state(batch, device),
            upsample=self.upsample.init_state(batch, device),
            decoder_transformer=self.decoder_transformer.init_state(batch, device, chunk),
            decoder=self.decoder.init_state(batch, device),
        )

    def _check_wav(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 2:
            wav = wav[:, None]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio shaped [B, 1, T] or [B, T], got {tuple(wav.shape)}")
        return wav.to(self.downsample.weight.dtype)

    def encode_step(self, wav: torch.Tensor, state: CodecState) -> torch.Tensor:
        """wav: [B, 1, k*frame_size] -> codes [B, n_q, k]. Advances `state`."""
        wav = self._check_wav(wav)
        T = wav.shape[-1]
        if T == 0 or T % self.frame_size:
            raise ValueError(f"streaming encode needs a positive multiple of {self.frame_size} samples, got {T}")
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

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3 or codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected integer codes [B, K, T], got {codes.dtype} {tuple(codes.shape)}")
        if codes.shape[1] > self.cfg.quantizer.n_q or codes.shape[1] < 1:
            raise ValueError(f"codes have {codes.shape[1]} codebooks; this codec has {self.cfg.quantizer.n_q}")

    # -- offline (streaming over all frames on a fresh state) -------------------------------------
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, 1, T] or [B, T] at 24 kHz -> codes [B, n_q, ceil(T / frame_size)] (zero-padded)."""
        wav = self._check_wav(wav)
        pad = (-wav.shape[-1]) % self.frame_size
        if pad:
            wav = F.pad(wav, (0, pad))
        if wav.shape[-1] == 0:
            raise ValueError("cannot encode empty audio")
        return self.encode_step(wav, self.init_state(wav.shape[0], chunk=64))

    def validate_codes(self, codes: torch.Tensor) -> None:
        """Shape and value checks for untrusted codes (host sync: not for the per-frame hot path)."""
        self._check_codes(codes)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.quantizer.bins):
            raise ValueError(f"code values must lie in [0, {self.cfg.quantizer.bins}): "
                             "were these codes made with other codec weights?")

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> wav [B, 1, T * frame_size]."""
        self.validate_codes(codes)
        return self.decode_step(codes, self.init_state(codes.shape[0], chunk=64))
