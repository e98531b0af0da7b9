"""Streaming codecs: Mimi-compatible (neural) and our vocoder codec, behind one interface."""

from models.codec.base import StreamingCodec
from models.codec.checkpoint import load_codec, load_mimi_state_dict, save_codec
from models.codec.codec import FRAME_SIZE, SAMPLE_RATE, Codec, CodecConfig, CodecState
from models.codec.vocoder import VocoderCodec, VocoderConfig

__all__ = ["Codec", "CodecConfig", "CodecState", "FRAME_SIZE", "SAMPLE_RATE", "load_codec",
           "load_mimi_state_dict", "save_codec", "StreamingCodec", "VocoderCodec", "VocoderConfig"]
