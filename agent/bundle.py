"""Load a complete model (codec + LM + text tokenizer) from a local folder.

Two folder layouts are understood:
- ours: `duplex.json` naming `codec`, `lm` and `tokenizer` files (configs live in the safetensors metadata);
- kyutai's published Moshi release: `model.safetensors` (LM), `tokenizer-*.safetensors` (Mimi) and
  `tokenizer_spm_32k_3.model`, optionally with the release's `config.json` naming the files.
Nothing is downloaded: a folder that lacks a file gives an error that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agent.errors import ModelLoadError, ModelNotFoundError
from models.checkpoint import CheckpointError
from models.codec import Codec, load_codec
from models.lm import LMConfig, LMModel, SamplingConfig, load_lm
from models.lm.tokenizer import TextTokenizer, TokenizerError

MANIFEST = "duplex.json"


@dataclass
class ModelFiles:
    name: str
    kind: str  # "duplex" or "kyutai"
    folder: Path
    codec: Path
    lm: Path
    tokenizer: Path | None
    description: str = ""
    trained: bool = True
    sampling: dict = field(default_factory=dict)
    lm_config: LMConfig | None = None
    # RMS of the noise floor the model heard in training; the engine adds it to the user's audio, because a model
    # that never heard digital silence (exact zeros, e.g. from a file or a muted track) mishears around it
    input_noise_floor: float = 0.0
    # a LoRA adapter (`duplex train lm --lora R --export-adapter`) merged into the LM's weights at load
    adapter: Path | None = None
    adapter_scale: float = 1.0
    # the attention window to run with, in frames, where the folder sets one (duplex.json "context"), instead of
    # the LM's own: a window as long as the training sequences keeps long sessions in the distances it learned
    context: int | None = None

    def missing(self) -> list[Path]:
        paths = [self.codec, self.lm] + ([self.tokenizer] if self.tokenizer else []) + \
            ([self.adapter] if self.adapter else [])
        return [p for p in paths if not p.is_file()]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in [self.codec, self.lm, self.tokenizer] if p and p.is_file())


@dataclass
class ModelBundle:
    files: ModelFiles
    codec: Codec
    lm: LMModel
    tokenizer: TextTokenizer | None
    sampling: SamplingConfig

    @property
    def name(self) -> str:
        return self.files.name

    def token_text(self, token: int) -> str:
        if self.tokenizer is None:
            return "" if token in (self.lm.cfg.text_padding_id, self.lm.cfg.text_end_padding_id) else f"<{token}>"
        return self.tokenizer.piece_text(token)


def write_manifest(folder: Path, description: str, trained: bool, tokenizer: str | None,
                   sampling: dict | None = None, input_noise_floor: float = 0.0) -> None:
    """Write `duplex.json` (the layout `describe_folder` reads) for codec.safetensors + lm.safetensors."""
    manifest = {"description": description, "trained": trained, "codec": "codec.safetensors",
                "lm": "lm.safetensors", "tokenizer": tokenizer, "sampling": sampling or {}}
    if input_noise_floor:
        manifest["input_noise_floor"] = input_noise_floor
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def write_adapter_manifest(folder: Path, base: str, adapter: str, scale: float, description: str) -> None:
    """`duplex.json` of an adapter folder: the base model (a name or a folder) and the adapter file."""
    manifest = {"description": description, "base": base, "adapter": adapter, "adapter_scale": scale}
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _describe_adapter(folder: Path, name: str, meta: dict) -> ModelFiles:
    import dataclasses

    from agent.registry import resolve  # the base is any model the registry knows

    base = meta["base"]
    if Path(base).expanduser().resolve() == folder.resolve() or base == name:
        raise ModelLoadError(f"{folder / MANIFEST}: an adapter folder cannot name itself as its base")
    try:
        files = resolve(base)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"the base model of adapter '{name}' is not available: {exc}") from exc
    if files.adapter is not None:
        raise ModelLoadError(f"{folder / MANIFEST}: its base '{base}' is itself an adapter; merge one first")
    return dataclasses.replace(files, name=name, folder=folder, description=meta.get("description", ""),
                               adapter=folder / meta.get("adapter", "adapter.safetensors"),
                               adapter_scale=float(meta.get("adapter_scale", 1.0)))


def describe_folder(folder: str | Path, name: str | None = None) -> ModelFiles:
    """Work out which files in `folder` make up the model (no weights are read)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelNotFoundError(f"model folder not found: {folder}")
    if folder.is_file():
        raise ModelNotFoundError(f"{folder} is a file; give the folder that holds the model files")
    name = name or folder.name
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{manifest} is not valid JSON: {exc}") from exc
        if meta.get("base"):
            return _describe_adapter(folder, name, meta)
        return ModelFiles(name=name, kind="duplex", folder=folder,
                          codec=folder / meta.get("codec", "codec.safetensors"),
                          lm=folder / meta.get("lm", "lm.safetensors"),
                          tokenizer=folder / meta["tokenizer"] if meta.get("tokenizer") else None,
                          description=meta.get("description", ""), trained=bool(meta.get("trained", True)),
                          sampling=meta.get("sampling", {}),
                          input_noise_floor=float(meta.get("input_noise_floor", 0.0)),
                          context=meta.get("context"))
    return _describe_kyutai(folder, name)


def _describe_kyutai(folder: Path, name: str) -> ModelFiles:
    config = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{folder / 'config.json'} is not valid JSON: {exc}") from exc
    lm = folder / config.get("moshi_name", "model.safetensors")
    mimi_name = config.get("mimi_name")
    mimi = folder / mimi_name if mimi_name else next(iter(sorted(folder.glob("tokenizer-*.safetensors"))), None)
    spm_name = config.get("tokenizer_name")
    spm = folder / spm_name if spm_name else next(iter(sorted(folder.glob("tokenizer_spm_*.model"))), None)
    if not lm.is_file() and mimi is None:
        raise ModelNotFoundError(
            f"{folder} holds neither our model ({MANIFEST}) nor kyutai's Moshi files (model.safetensors, "
            "tokenizer-*.safetensors, tokenizer_spm_32k_3.model)")
    if mimi is None:
        raise ModelNotFoundError(f"{folder}: no Mimi codec file (tokenizer-*.safetensors) next to {lm.name}")
    lm_fields = {k: v for k, v in config.items() if k in LMConfig.__dataclass_fields__ and k != "mamba"}
    lm_config = LMConfig(**{**LMConfig.moshi_7b().__dict__, **lm_fields}) if lm_fields else LMConfig.moshi_7b()
    return ModelFiles(name=name, kind="kyutai", folder=folder, codec=mimi, lm=lm, tokenizer=spm,
                      description="kyutai Moshi release", lm_config=lm_config)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def _merge_adapter(lm: LMModel, files: ModelFiles) -> None:
    from models.checkpoint import read_safetensors
    from models.lm.lora import apply_adapter

    try:
        apply_adapter(lm, read_safetensors(files.adapter), files.adapter_scale)
    except (KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"adapter {files.adapter} does not fit its base model {files.lm}: {exc}") from exc


def load_bundle(files: ModelFiles, device: str | torch.device = "auto",
                dtype: torch.dtype | None = None) -> ModelBundle:
    missing = files.missing()
    if missing:
        raise ModelNotFoundError(f"model '{files.name}' in {files.folder} is missing: "
                                 + ", ".join(p.name for p in missing))
    dev = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" and files.kind == "kyutai" else torch.float32
    if files.context is not None and (not isinstance(files.context, int) or isinstance(files.context, bool)
                                      or files.context < 1):
        raise ModelLoadError(f"{files.folder / 'duplex.json'}: \"context\" must be a whole number of frames >= 1, "
                             f"got {files.context!r}")
    try:
        lm = load_lm(files.lm, cfg=files.lm_config, device=dev, dtype=dtype)
        if files.context is not None:
            lm.cfg.context = files.context  # every attention layer reads its window from this config
        if files.adapter is not None:
            _merge_adapter(lm, files)
        codec = load_codec(files.codec, device=dev, num_codebooks=lm.cfg.user_streams)
        tokenizer = TextTokenizer(files.tokenizer) if files.tokenizer else None
    except (CheckpointError, TokenizerError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model '{files.name}' from {files.folder}: {exc}") from exc
    if tokenizer is not None and tokenizer.vocab_size > lm.cfg.text_card:
        raise ModelLoadError(f"tokenizer {files.tokenizer.name} has {tokenizer.vocab_size} pieces but the LM's text "
                             f"vocabulary is {lm.cfg.text_card}: are these files from the same model?")
    sampling = SamplingConfig(**files.sampling) if files.sampling else SamplingConfig()
    return ModelBundle(files=files, codec=codec, lm=lm, tokenizer=tokenizer, sampling=sampling)
