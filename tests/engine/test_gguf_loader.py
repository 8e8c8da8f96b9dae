"""GGUF loading: our parser == gguf.GGUFReader, fast dequant == gguf.quants, converted tiny
checkpoints give the same logits as the HF folder they came from (Q/K un-permutation included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.engine.loader import load_model
from shoal.engine.loader.gguf_file import read_gguf
from shoal.engine.loader.gguf_loader import dequantize
from support.paged_runner import PagedRunner
from support.tiny_models import write_tiny_gguf


def _assert_same_as_gguf_reader(path: Path) -> None:
    from gguf import GGUFReader

    ours = read_gguf(path)
    ref = GGUFReader(str(path))
    ref_meta = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == ref_meta
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors, strict=True):
        assert mine.ggml_type == int(theirs.tensor_type)
        assert mine.shape == tuple(int(d) for d in reversed(theirs.shape.tolist()))
        assert np.array_equal(mine.data, np.asarray(theirs.data).reshape(-1).view(np.uint8)), mine.name


@pytest.fixture(scope="module")
def tiny_gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "F16"])
def test_fast_dequant_is_bit_identical(qtype: str, tiny_gguf_dir: Path, tiny_qwen2_dir: Path) -> None:
    import gguf

    path = write_tiny_gguf(tiny_qwen2_dir, tiny_gguf_dir / f"q-{qtype}.gguf", qtype)
    for tensor in read_gguf(path).tensors:
        ours = dequantize(tensor).numpy()
        rows = tensor.data.reshape(*tensor.shape[:-1], -1)
        ref = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(tensor.ggml_type))
        assert ours.shape == tuple(tensor.shape)
        assert np.array_equal(ours, ref.astype(np.float32).reshape(tensor.shape)), tensor.name


@pytest.mark.slow  # GGUFReader needs ~3 s for the 49k-token vocabulary
def test_parser_matches_gguf_reader_on_tiny(tiny_gguf_dir: Path, tiny_qwen3_dir: Path) -> None:
    _assert_same_as_gguf_reader(write_tiny_gguf(tiny_qwen3_dir, tiny_gguf_dir / "parse.gguf", "Q8_0"))


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"])
def test_converted_gguf_matches_hf_folder(fixture: str, request: pytest.FixtureRequest, tiny_gguf_dir: Path) -> None:
    folder: Path = request.getfixturevalue(fixture)
    path = write_tiny_gguf(folder, tiny_gguf_dir / f"{fixture}.gguf", "F32")
    from_gguf = load_model(str(path), torch.float32, "cpu")
    from_hf = load_model(str(folder), torch.float32, "cpu")
    assert from_gguf.name == path.stem
    for field in ("architecture", "num_layers", "head_dim", "tie_word_embeddings", "attention_bias", "qk_norm"):
        assert getattr(from_gguf.config, field) == getattr(from_hf.config, field)
    ids = from_hf.tokenizer.encode_chat([{"role": "user", "content": "Hi! 1+1=?"}])
    assert from_gguf.tokenizer.encode_chat([{"role": "user", "content": "Hi! 1+1=?"}]) == ids
    ids += [(i * 7919) % 40000 + 100 for i in range(100)]  # past the llama3 variant's original context (64)
    a = PagedRunner(from_gguf.model).step({0: ids})
    b = PagedRunner(from_hf.model).step({0: ids})
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_parser_matches_gguf_reader_on_bundled(bundled_model_path: Path) -> None:
    _assert_same_as_gguf_reader(bundled_model_path)


@pytest.mark.slow
def test_bundled_loads_via_spec() -> None:
    loaded = load_model("bundled:smollm2-135m-instruct", torch.float32, "cpu")
    cfg = loaded.config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (
        "llama", 30, 576, 9, 3
    )
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings
    assert loaded.name == "smollm2-135m-instruct" and loaded.tokenizer.chat_template
