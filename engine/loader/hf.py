"""``load_model``: one entry point for HF folders, GGUF files and bundled models."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shoal.engine.bundled import BUNDLED_PREFIX, bundled_model_path
from shoal.engine.loader.errors import ModelLoadError
from shoal.engine.model_config import ModelConfig
from shoal.engine.models.llama import LlamaForCausalLM
from shoal.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what the engine needs around it."""

    model: LlamaForCausalLM
    config: ModelConfig
    tokenizer: Tokenizer
    name: str
    """Default served name: the folder name, the GGUF file stem or the bundled name."""
    load_seconds: float = 0.0


def load_model(
    spec: str, dtype: torch.dtype, device: torch.device | str, weights: str = "dequantized"
) -> LoadedModel:
    """Load ``spec``: an HF folder, a ``.gguf`` file or ``bundled:<name>``.

    The model comes back in eval mode on ``device`` with ``dtype`` parameters. Any problem with
    the spec or the files raises :class:`ModelLoadError` with a message naming it. ``weights``:
    see :attr:`EngineConfig.weights <shoal.engine.config.EngineConfig.weights>`.
    """
    start = time.perf_counter()
    name: str | None = None
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX) :]
        try:
            path = bundled_model_path(name)
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from exc
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path not found: {spec}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{spec} is a file but not a .gguf model; give a .gguf file or an HF folder")
        from shoal.engine.loader.gguf_loader import load_gguf

        native = native_weights(weights, dtype, device)
        model, config, tokenizer = load_gguf(path, dtype, device, native, require_native=weights == "native")
        name = name or path.stem
    elif path.is_dir():
        if weights == "native":
            raise ModelLoadError("weights=native needs a GGUF model with Q4_1/Q8_0 weights; this is an HF folder")
        model, config, tokenizer = load_hf_folder(path, dtype, device)
        name = name or path.resolve().name
    else:
        raise ModelLoadError(f"{spec} is neither an HF model folder nor a .gguf file")
    return LoadedModel(model, config, tokenizer, name, time.perf_counter() - start)


def native_weights(weights: str, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether a GGUF model computes from its quantized blocks (``weights`` = auto/native/dequantized)."""
    from shoal.engine.kernels.cpu.build import KernelUnavailable, quant_kernels

    if weights == "dequantized":
        return False
    fits = torch.device(device).type == "cpu" and dtype == torch.float32
    if weights == "native" and not fits:
        raise ModelLoadError(f"weights=native runs on CPU in float32 only (got {device}, {dtype})")
    if not fits:
        return False
    try:
        quant_kernels()
    except KernelUnavailable as exc:
        if weights == "native":
            raise ModelLoadError(f"weights=native: {exc}") from exc
        logger.warning("weights=auto: %s; using dequantized fp32 weights", exc)
        return False
    return True


def load_hf_folder(
    folder: Path, dtype: torch.dtype, device: torch.device | str
) -> tuple[LlamaForCausalLM, ModelConfig, Tokenizer]:
    """config.json + *.safetensors (single or sharded) + tokenizer files."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no config.json: not an HF model folder")
    try:
        raw_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot parse {config_path}: {exc}") from exc
    if not isinstance(raw_config, dict):
        raise ModelLoadError(f"{config_path} is not a JSON object")
    config = ModelConfig.from_hf_dict(raw_config)
    tokenizer = _load_tokenizer(folder)
    files = _safetensors_files(folder)
    model = LlamaForCausalLM(config, dtype=dtype, device=device)
    model.load_weights(_iter_safetensors(files))
    model.eval()
    return model, _with_generation_eos(config, folder, tokenizer), tokenizer


def _load_tokenizer(folder: Path) -> Tokenizer:
    try:
        return Tokenizer.from_hf_folder(folder)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing tokenizer: {exc}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"broken tokenizer files in {folder}: {exc}") from exc


def _with_generation_eos(config: ModelConfig, folder: Path, tokenizer: Tokenizer) -> ModelConfig:
    """Fold the tokenizer's eos ids (incl. generation_config.json) into the config."""
    from dataclasses import replace

    merged = tuple(dict.fromkeys([*config.eos_token_ids, *sorted(tokenizer.eos_token_ids)]))
    return replace(config, eos_token_ids=merged) if merged != config.eos_token_ids else config


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot parse {index}: {exc}") from exc
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index.name} lists shard(s) that are missing: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no *.safetensors weights (.bin checkpoints are not supported)")
    return files


def _iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"corrupt or truncated safetensors file {path.name}: {exc}") from exc
        with handle as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                try:
                    tensor = f.get_tensor(key)
                except Exception as exc:
                    raise ModelLoadError(f"cannot read tensor {key!r} from {path.name}: {exc}") from exc
                yield key, tensor
