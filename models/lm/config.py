"""Configuration of the dual-stream LM (temporal backbone + depth transformer)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MambaConfig:
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1


@dataclass
class VisionAdapterConfig:
    """MoshiVis-style adapters: shared gated cross-attention into the backbone layers."""

    xa_dim: int = 128  # width of the image tokens
    layers: list[int] | None = None  # backbone layers with cross-attention (None = all)
    encoder: dict | None = None  # our ImageEncoderConfig fields (None: image tokens come from elsewhere)
    num_tokens: int = 256  # tokens per image when they come from an external encoder (ours defines its own)


@dataclass
class LMConfig:
    dim: int = 4096
    num_heads: int = 32
    kv_heads: int | None = None  # grouped-query attention in attention blocks (None = num_heads)
    num_layers: int = 32
    pattern: str | None = None  # e.g. "MMMA" repeated; None = all attention (Moshi/Helium)
    hidden_scale: float = 4.125
    context: int = 3000
    max_period: float = 10_000.0
    norm_eps: float = 1e-8
    text_card: int = 32000
    card: int = 2048
    n_q: int = 16  # audio codebooks in the input (model's + user's)
    dep_q: int = 8  # codebooks the depformer generates
    delays: list[int] = field(default_factory=lambda: [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    text_padding_id: int = 3
    text_end_padding_id: int = 0
    depformer_dim: int = 1024
    depformer_dim_feedforward: int = 4224
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    mamba: MambaConfig = field(default_factory=MambaConfig)
    vision: VisionAdapterConfig | None = None

    def __post_init__(self) -> None:
        if len(self.delays) != 1 + self.n_q:
            raise ValueError(f"delays must have 1 + n_q = {1 + self.n_q} entries, got {len(self.delays)}")
        if self.layer_kinds.count("A") + self.layer_kinds.count("M") != self.num_layers:
            raise ValueError("pattern may only contain 'A' (attention) and 'M' (Mamba2) characters")
        if self.dim % self.num_heads:
            raise ValueError("dim must be divisible by num_heads")

    @property
    def layer_kinds(self) -> str:
        """One character per layer: the pattern repeated to num_layers."""
        if not self.pattern:
            return "A" * self.num_layers
        return (self.pattern * (self.num_layers // len(self.pattern) + 1))[: self.num_layers]

    def has_cross_attention(self, layer: int) -> bool:
        return self.vision is not None and (self.vision.layers is None or layer in self.vision.layers)

    @property
    def dim_feedforward(self) -> int:
        return int(self.hidden_scale * self.dim)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def user_streams(self) -> int:
        return self.n_q - self.dep_q

    @classmethod
    def moshi_7b(cls) -> LMConfig:
        """kyutai's Moshiko/Moshika 7B."""
        return cls()

    @classmethod
    def hybrid_7b(cls) -> LMConfig:
        """A 7B-class Mamba2/attention hybrid: 1 attention layer in 8, GQA with 8 KV heads."""
        return cls(pattern="MMMAMMMM", kv_heads=8, mamba=MambaConfig(d_state=128, headdim=64, ngroups=8))

    @classmethod
    def tiny(cls, pattern: str | None = None, k: int = 4) -> LMConfig:
        """A test-sized config with Moshi's token layout (K codebooks per speaker)."""
        return cls(dim=64, num_heads=4, num_layers=2 if pattern is None else len(pattern), pattern=pattern,
                   context=50, text_card=100, card=64, n_q=2 * k, dep_q=k,
                   delays=[0] + ([0] + [1] * (k - 1)) * 2, depformer_dim=32,
                   depformer_dim_feedforward=int(4.125 * 32), depformer_num_heads=2, depformer_num_layers=2,
                   mamba=MambaConfig(d_state=16, headdim=16, chunk_size=8))

    @classmethod
    def small_100m(cls, pattern: str | None = None) -> LMConfig:
        """~100M compute parameters (plus ~50M of embedding tables) for CPU benchmarks."""
        return cls(dim=640, num_heads=10, num_layers=8, pattern=pattern, kv_heads=None, context=3000,
                   text_card=32000, depformer_dim=256, depformer_dim_feedforward=int(4.125 * 256),
                   depformer_num_heads=4, depformer_num_layers=2,
                   mamba=MambaConfig(d_state=64, headdim=64))
