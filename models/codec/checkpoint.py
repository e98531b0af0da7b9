"""kyutai Mimi checkpoint layout <-> our module names.

The published `tokenizer-e351c8d8-checkpoint125.safetensors` uses wrapper-nested conv names
(`encoder.model.0.conv.conv.weight`), fused attention names (`self_attn.in_proj_weight`) and EMA codebook
buffers (`embedding_sum` / `cluster_usage`). Newer kyutai code names the attention `in_projs.0.weight`;
both are accepted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, load_checked, read_safetensors, safetensors_metadata
from models.codec.base import StreamingCodec
from models.codec.codec import Codec, CodecConfig
from models.codec.quantizer import QuantizerConfig
from models.codec.seanet import SEANetConfig
from models.codec.transformer import CodecTransformerConfig
from models.codec.vocoder import VocoderCodec, VocoderConfig

_RENAMES = [
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\.(conv\.conv|convtr\.convtr)\."), r"\1.model.\2."),
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\."), r"\1.model.\2.block.\3."),
    (re.compile(r"^(encoder|decoder)_transformer\.transformer\."), r"\1_transformer."),
    (re.compile(r"self_attn\.in_projs\.0\.weight$"), "self_attn.in_proj_weight"),
    (re.compile(r"self_attn\.out_projs\.0\.weight$"), "self_attn.out_proj.weight"),
    (re.compile(r"^downsample\.conv\.conv\.conv\."), "downsample."),
    (re.compile(r"^upsample\.convtr\.convtr\.convtr\."), "upsample."),
]
_CODEBOOK = re.compile(r"^quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)$")


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def convert_mimi_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published Mimi keys -> our state dict (codebook tables = embedding_sum / cluster_usage)."""
    out: dict[str, torch.Tensor] = {}
    books: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in raw.items():
        m = _CODEBOOK.match(key)
        if m:
            books.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
            continue
        out[_rename(key)] = value
    for name, layers in books.items():
        tables = []
        for idx in range(len(layers)):
            if idx not in layers:
                raise CheckpointError(f"Mimi checkpoint lacks quantizer.{name}.vq.layers.{idx}._codebook.*")
            entry = layers[idx]
            emb_sum = entry.get("embedding_sum", entry.get("embed_sum", entry.get("embed_avg")))
            usage = entry.get("cluster_usage", entry.get("cluster_size"))
            if emb_sum is None or usage is None:
                raise CheckpointError(
                    f"quantizer.{name}.vq.layers.{idx}._codebook needs embedding_sum and cluster_usage, "
                    f"found {sorted(entry)}")
            tables.append(emb_sum.float() / usage.float().clamp(min=1e-5)[:, None])
        out[f"quantizer.{name}.codebooks"] = torch.stack(tables)
    return out


def load_mimi_state_dict(codec: Codec, raw: dict[str, torch.Tensor], source: str = "Mimi checkpoint") -> Codec:
    load_checked(codec, convert_mimi_state_dict(raw), source)
    return codec


def config_to_json(cfg: CodecConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg))


def config_from_json(text: str) -> CodecConfig:
    data = json.loads(text)
    data["seanet"]["ratios"] = tuple(data["seanet"]["ratios"])
    return CodecConfig(seanet=SEANetConfig(**data["seanet"]),
                       transformer=CodecTransformerConfig(**data["transformer"]),
                       quantizer=QuantizerConfig(**data["quantizer"]),
                       sample_rate=data["sample_rate"], frame_rate=data["frame_rate"],
                       num_codebooks=data["num_codebooks"])


def load_codec(path: str | Path, cfg: CodecConfig | None = None, device: str | torch.device = "cpu",
               num_codebooks: int | None = None) -> StreamingCodec:
    """Build a codec and load a local safetensors file: a Mimi-layout codec, or our vocoder codec (its file says
    so in its metadata).

    The config comes from `cfg`, else from the file's metadata (files we save carry it), else Mimi's.
    """
    path = Path(path)
    raw = read_safetensors(path)
    meta = safetensors_metadata(path)
    if meta.get("codec_kind") == "vocoder":
        vcfg = VocoderConfig(**json.loads(meta["vocoder_config"]))
        if num_codebooks is not None:
            vcfg = vcfg.with_codebooks(num_codebooks)
        vocoder = VocoderCodec(vcfg)
        load_checked(vocoder, raw, str(path))
        return vocoder.to(device).eval()
    if cfg is None:
        cfg = config_from_json(meta["codec_config"]) if "codec_config" in meta else CodecConfig.mimi()
    if num_codebooks is not None:
        cfg = cfg.with_codebooks(num_codebooks)
    codec = Codec(cfg)
    load_mimi_state_dict(codec, raw, source=str(path))
    return codec.to(device).eval()


def export_mimi_state_dict(codec: Codec) -> dict[str, torch.Tensor]:
    """Our weights in kyutai's published layout (cluster_usage = 1 so tables round-trip exactly)."""
    inverse = {}
    for key, value in codec.state_dict().items():
        if key.endswith(".codebooks"):
            prefix = key[: -len(".codebooks")]
            for i, table in enumerate(value):
                base = f"{prefix}.vq.layers.{i}._codebook."
                inverse[base + "embedding_sum"] = table.clone()
                inverse[base + "cluster_usage"] = torch.ones(table.shape[0])
                inverse[base + "_initialized"] = torch.ones(1)
            continue
        k = key
        k = re.sub(r"^(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.", r"\1.model.\2.block.\3.conv.conv.", k)
        if re.match(r"^(encoder|decoder)\.model\.\d+\.(weight|bias)$", k):
            wrapper = "convtr.convtr" if _is_convtr(codec, key) else "conv.conv"
            k = re.sub(r"^(encoder|decoder)\.model\.(\d+)\.", rf"\1.model.\2.{wrapper}.", k)
        k = re.sub(r"^(encoder|decoder)_transformer\.", r"\1_transformer.transformer.", k)
        k = re.sub(r"^downsample\.", "downsample.conv.conv.conv.", k)
        k = re.sub(r"^upsample\.", "upsample.convtr.convtr.convtr.", k)
        inverse[k] = value.clone()
    return inverse


def _is_convtr(codec: Codec, key: str) -> bool:
    from models.codec.conv import CausalConvTranspose1d

    part, _, idx = key.split(".")[:3]
    return isinstance(getattr(codec, part).model[int(idx)], CausalConvTranspose1d)


def save_codec(codec: Codec | VocoderCodec, path: str | Path) -> None:
    from safetensors.torch import save_file

    if isinstance(codec, VocoderCodec):
        save_file({k: v.contiguous() for k, v in codec.state_dict().items()}, str(path),
                  metadata={"codec_kind": "vocoder", "vocoder_config": json.dumps(dataclasses.asdict(codec.cfg))})
        return
    save_file({k: v.contiguous() for k, v in export_mimi_state_dict(codec).items()}, str(path),
              metadata={"codec_config": config_to_json(codec.cfg)})
