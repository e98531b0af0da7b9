"""Which models are available locally: the embedded default, folders named in the config file, or a path.

The config file is TOML (`$DUPLEX_CONFIG`, else `~/.config/duplex/config.toml`):

    [models]
    moshiko = "/data/kyutai/moshiko-pytorch-bf16"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from agent.bundle import ModelFiles, describe_folder
from agent.errors import DuplexError, ModelNotFoundError

DEFAULT_MODEL = "default"
EMBEDDED_DIR = Path(__file__).resolve().parent / "weights"


def config_path() -> Path:
    env = os.environ.get("DUPLEX_CONFIG")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "duplex" / "config.toml"


def configured_models() -> dict[str, Path]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DuplexError(f"{path} is not valid TOML: {exc}") from exc
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise DuplexError(f"{path}: [models] must be a table of name = \"folder\" entries")
    return {str(k): Path(str(v)).expanduser() for k, v in models.items()}


def embedded_models() -> dict[str, Path]:
    if not EMBEDDED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(EMBEDDED_DIR.iterdir()) if (p / "duplex.json").is_file()}


def available() -> dict[str, Path]:
    """Name -> folder; configured names override embedded ones."""
    return {**embedded_models(), **configured_models()}


def resolve(name_or_path: str | os.PathLike | None = None) -> ModelFiles:
    """A registered name, or a folder path, to the model's files."""
    target = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    models = available()
    if target in models:
        return describe_folder(models[target], target)
    path = Path(target).expanduser()
    if path.exists():
        return describe_folder(path)
    known = ", ".join(sorted(models)) or "none"
    raise ModelNotFoundError(
        f"no model named '{target}' (known: {known}). Register a local folder with "
        f"`duplex models add {Path(target).name} /path/to/folder`, or pass the folder path itself")


def add(name: str, folder: str | Path) -> Path:
    """Register `folder` under `name` in the config file (validated first); returns the config path."""
    folder = Path(folder).expanduser().resolve()
    describe_folder(folder, name)  # raises with a clear message if the folder is not a model
    models = configured_models()
    models[name] = folder
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["[models]"] + [f"{_toml_key(k)} = {_toml_str(str(v))}" for k, v in sorted(models.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(s: str) -> str:
    return s if s.replace("-", "").replace("_", "").isalnum() else _toml_str(s)
