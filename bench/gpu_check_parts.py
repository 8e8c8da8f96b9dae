"""The three parts of bench/gpu_check.py: kernels, decode step vs roofline, offline throughput.

Each part takes the driver's :class:`Check` (device, smoke flag, time budget, result rows) and
returns a JSON-able dict; shoal and torch are imported inside the functions, after the driver
has made ``shoal.engine`` importable.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_check import Check

SHAPES: dict[str, dict[str, Any]] = {  # Llama-3 family shapes (vocab 128256); "tiny" is the --smoke stand-in
    "8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": False},
}  # fmt: skip


def rel_err(got: Any, ref: Any) -> float:
    got, ref = got.float(), ref.float()
    if got.isnan().any():
        return math.inf
    return float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-6))


# ---- part 1: kernels --------------------------------------------------------------------------------
def part_kernels(c: Check) -> dict[str, Any]:
    torch = c.torch
    from shoal.engine.kernels import get_backend

    ref, tri, dev = get_backend("torch"), get_backend("triton"), c.device
    gen = torch.Generator(device=dev).manual_seed(0)
    t, hidden, hq, hk, d, inter = (8, 64, 4, 2, 32, 96) if c.smoke else (64, 4096, 32, 8, 128, 14336)
    out: dict[str, Any] = {}
    dtypes = [torch.float32, torch.float16] + ([] if c.smoke else [torch.bfloat16])

    def randn(*shape: int, dtype: Any = torch.float32) -> Any:
        return torch.randn(*shape, generator=gen, device=dev).to(dtype)

    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        errs: dict[str, float] = {}
        x, r, w = randn(t, hidden, dtype=dtype), randn(t, hidden, dtype=dtype), randn(hidden, dtype=dtype)
        errs["rms_norm"] = rel_err(tri.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5))
        got, exp = tri.fused_add_rms_norm(x, r, w, 1e-5), ref.fused_add_rms_norm(x, r, w, 1e-5)
        errs["fused_add_rms_norm"] = max(rel_err(got[0], exp[0]), rel_err(got[1], exp[1]))
        qkv = randn(t, (hq + 2 * hk) * d, dtype=dtype)
        q, k = qkv[:, : hq * d].view(t, hq, d), qkv[:, hq * d : (hq + hk) * d].view(t, hk, d)
        angles = torch.arange(4096, device=dev)[:, None] * torch.rand(d // 2, generator=gen, device=dev)[None]
        cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
        pos = torch.randint(0, 4096, (t,), generator=gen, device=dev)
        got, exp = tri.rotary(q, k, pos, cache), ref.rotary(q, k, pos, cache)
        errs["rotary"] = max(rel_err(got[0], exp[0]), rel_err(got[1], exp[1]))
        y = randn(t, 2 * inter, dtype=dtype)
        errs["silu_and_mul"] = rel_err(tri.silu_and_mul(y), ref.silu_and_mul(y))
        errs["store_kv"] = store_kv_err(c, ref, tri, hk, d, dtype, gen)
        for bs in (1, 16, 128):
            errs[f"paged_attention_bs{bs}"] = attention_err(c, ref, tri, hq, hk, d, bs, dtype, gen, decode_only=False)
        errs["paged_attention_decode_split"] = attention_err(c, ref, tri, hq, hk, d, 16, dtype, gen, decode_only=True)
        out[name] = errs
        worst = max(errs.values())
        c.row("kernels", f"{name} max rel err ({len(errs)} ops)", f"{worst:.2e}", "PASS" if worst <= 1e-2 else "FAIL")
    out["sampling"] = sampling_check(c, ref, tri, gen)
    return out


def store_kv_err(c: Check, ref: Any, tri: Any, hk: int, d: int, dtype: Any, gen: Any) -> float:
    torch = c.torch
    k, v = (torch.randn(32, hk, d, generator=gen, device=c.device).to(dtype) for _ in range(2))
    slots = torch.randperm(8 * 16, generator=gen, device=c.device)[:32]
    slots[::5] = -1
    caches = [torch.zeros(8, 16, hk, d, dtype=dtype, device=c.device) for _ in range(4)]
    ref.store_kv(k, v, caches[0], caches[1], slots)
    tri.store_kv(k, v, caches[2], caches[3], slots)
    return 0.0 if torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3]) else math.inf


def attention_err(
    c: Check, ref: Any, tri: Any, hq: int, hk: int, d: int, block_size: int, dtype: Any, gen: Any, decode_only: bool
) -> float:
    """A mixed batch (prefill chunks + decodes) or a small decode-only batch with long contexts."""
    torch = c.torch
    scale = 4 if c.smoke else 1
    if decode_only:
        seqs = [(1, 3000 // scale), (1, 77)]
    else:
        seqs = [(1, 300 // scale), (100 // scale, 100 // scale), (37, 700 // scale), (1, 1), (1, 129)]
    if block_size == 1:
        seqs = [(q, min(ctx, 40)) for q, ctx in seqs]
    nblocks = [-(-ctx // block_size) for _, ctx in seqs]
    total = sum(nblocks) + 2
    k_cache = torch.randn(total, block_size, hk, d, generator=gen, device=c.device).to(dtype)
    v_cache = torch.randn(total, block_size, hk, d, generator=gen, device=c.device).to(dtype)
    perm = torch.randperm(total, generator=gen, device=c.device).to(torch.int32)
    tables = torch.zeros(len(seqs), max(nblocks), dtype=torch.int32, device=c.device)
    used = 0
    for b, nb in enumerate(nblocks):
        tables[b, :nb] = perm[used : used + nb]
        used += nb
    q_lens = [q for q, _ in seqs]
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=c.device)
    ctx = torch.tensor([x for _, x in seqs], dtype=torch.int32, device=c.device)
    q = torch.randn(sum(q_lens), hq, d, generator=gen, device=c.device).to(dtype)
    args = (q, k_cache, v_cache, tables, cu, ctx, d**-0.5, max(q_lens), int(ctx.max()))
    return rel_err(tri.paged_attention(*args), ref.paged_attention(*args))


def sampling_check(c: Check, ref: Any, tri: Any, gen: Any) -> dict[str, Any]:
    torch = c.torch
    rows, vocab = (8, 1000) if c.smoke else (256, 128256)
    logits = torch.randn(rows, vocab, generator=gen, device=c.device) * 3
    top_k = torch.randint(0, 200, (rows,), generator=gen, device=c.device)
    top_p = torch.rand(rows, generator=gen, device=c.device).clamp(min=0.1)
    min_p = torch.where(torch.arange(rows, device=c.device) % 3 == 0, 0.05, 0.0)
    args = (logits, top_k, top_p, min_p)
    got, exp = tri.top_k_top_p_min_p(*args), ref.top_k_top_p_min_p(*args)
    mismatch = int(((got == float("-inf")) != (exp == float("-inf"))).sum())
    deterministic = bool(torch.equal(got, tri.top_k_top_p_min_p(*args)))
    out: dict[str, Any] = {"rows": rows, "vocab": vocab, "kept_mismatches": mismatch, "deterministic": deterministic}
    ok = mismatch <= rows and deterministic  # at most a rounding-boundary token per row
    c.row("kernels", "sampling filter: kept-set mismatches", f"{mismatch} / {rows * vocab}", "PASS" if ok else "FAIL")
    if not c.smoke:
        out["triton_ms"] = 1e3 * c.time_it(lambda: tri.top_k_top_p_min_p(*args), 10)
        out["torch_ms"] = 1e3 * c.time_it(lambda: ref.top_k_top_p_min_p(*args), 10)
        c.row("kernels", f"sampling filter B={rows} V={vocab} (triton / torch)",
              f"{out['triton_ms']:.2f} / {out['torch_ms']:.2f} ms")  # fmt: skip
    return out


# ---- part 2: decode step vs roofline ------------------------------------------------------------------
def model_config(shape: str) -> Any:
    from shoal.engine.model_config import ModelConfig

    s = SHAPES[shape]
    return ModelConfig(
        architecture="llama", vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_layers=s["num_hidden_layers"],
        num_heads=s["num_attention_heads"], num_kv_heads=s["num_key_value_heads"],
        head_dim=s["hidden_size"] // s["num_attention_heads"], rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=None, max_position_embeddings=8192, tie_word_embeddings=s["tie_word_embeddings"],
        attention_bias=False, qk_norm=False, bos_token_id=None, eos_token_ids=(),
    )  # fmt: skip


def copy_bandwidth(c: Check) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    nbytes = (64 << 20) if c.smoke else (2 << 30)
    src = c.torch.empty(nbytes, dtype=c.torch.uint8, device=c.device)
    dst = c.torch.empty_like(src)
    seconds = c.time_it(lambda: dst.copy_(src), 5 if c.smoke else 20)
    return 2 * nbytes / seconds


def part_decode(c: Check) -> dict[str, Any]:
    torch = c.torch
    from shoal.engine.models.llama import LlamaForCausalLM

    bw = copy_bandwidth(c)
    c.row("decode", "copy bandwidth (read + write)", f"{bw / 1e9:.0f} GB/s")
    shape = "tiny" if c.smoke else "8b"
    dtype = torch.float32 if c.smoke else torch.bfloat16
    model = LlamaForCausalLM(model_config(shape), dtype=dtype, device=c.device).random_init_(std=0.02)
    out: dict[str, Any] = {"shape": shape, "params": sum(p.numel() for p in model.parameters()),
                           "copy_bandwidth_gbs": bw / 1e9}  # fmt: skip
    for batch in (1, 4) if c.smoke else (1, 32, 256):
        if c.left() < 60 and not c.smoke:
            out[f"batch{batch}"] = "skipped: time budget"
            continue
        res = decode_step(c, model, shape, batch, bw)
        out[f"batch{batch}"] = res
        best = res["graph_ms"] or res["eager_ms"]
        verdict = "" if batch != 1 or c.smoke else ("PASS" if res["ratio"] <= 1.25 else "FAIL")
        graph_txt = f", graph {res['graph_ms']:.2f}" if res["graph_ms"] else ""
        c.row("decode", f"{shape} batch {batch} ctx {res['context']}: eager{', graph' if graph_txt else ''} / roofline",
              f"{res['eager_ms']:.2f}{graph_txt} / {res['roofline_ms']:.2f} ms (x{best / res['roofline_ms']:.2f})",
              verdict)  # fmt: skip
        c.row("decode", f"{shape} batch {batch}: NaN in logits", str(res["nan"]), "FAIL" if res["nan"] else "PASS")
        if c.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def decode_step(c: Check, model: Any, shape: str, batch: int, bw: float) -> dict[str, Any]:
    """Times one decode step (forward + logits) of ``batch`` sequences, each with ``context`` cached tokens."""
    torch = c.torch
    from shoal.engine.attention_context import AttentionContext
    from shoal.engine.cuda_graph import DecodeCudaGraphs
    from shoal.engine.kernels import get_backend

    cfg, dev = model.config, c.device
    dtype = next(model.parameters()).dtype
    ops = get_backend("triton")
    context, block_size = (16, 4) if c.smoke else (512, 16)
    blocks_per_seq = -(-(context + 1) // block_size)
    kv_shape = (batch * blocks_per_seq + 1, block_size, cfg.num_kv_heads, cfg.head_dim)
    caches = [(torch.randn(kv_shape, device=dev, dtype=dtype), torch.randn(kv_shape, device=dev, dtype=dtype))
              for _ in range(cfg.num_layers)]  # fmt: skip
    tables = (torch.arange(batch * blocks_per_seq, device=dev, dtype=torch.int32) + 1).view(batch, blocks_per_seq)
    ctx_lens = torch.full((batch,), context + 1, dtype=torch.int32, device=dev)
    positions = torch.full((batch,), context, dtype=torch.long, device=dev)
    slots = tables[:, context // block_size].long() * block_size + context % block_size
    ids = torch.randint(0, cfg.vocab_size, (batch,), device=dev)
    cu = torch.arange(batch + 1, dtype=torch.int32, device=dev)
    ctx = AttentionContext(ops, caches, slots, tables, cu, ctx_lens, 1, context + 1)
    # On CPU (--smoke) the same padded-bucket path runs eagerly.
    use_graphs = dev.type == "cuda"
    graphs = DecodeCudaGraphs(model, ops, caches, batch, blocks_per_seq, buckets=[batch], use_graphs=use_graphs)
    iters = 3 if c.smoke else 20

    def eager() -> Any:
        return model.compute_logits(model(ids, positions, ctx))

    def replay() -> Any:
        return model.compute_logits(graphs.run(ids, positions, slots, tables, ctx_lens))

    with torch.inference_mode():
        nan = bool(eager().isnan().any()) or bool(replay().isnan().any())
        eager_s = c.time_it(eager, iters)
        graph_s = c.time_it(replay, iters) if use_graphs else None
    elem = torch.empty((), dtype=dtype).element_size()
    params = sum(p.numel() for p in model.parameters())
    # An untied embedding table is only gathered (batch rows); a tied one is read whole as the lm_head.
    embed = 0 if cfg.tie_word_embeddings else model.model.embed_tokens.weight.numel()
    weight_bytes = (params - embed + batch * cfg.hidden_size) * elem
    kv_bytes = batch * (context + 1) * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * elem
    roofline = (weight_bytes + kv_bytes) / bw
    best = graph_s or eager_s
    return {"context": context, "eager_ms": eager_s * 1e3, "graph_ms": graph_s and graph_s * 1e3,
            "roofline_ms": roofline * 1e3, "ratio": best / roofline, "weight_gb": weight_bytes / 1e9,
            "kv_gb": kv_bytes / 1e9, "nan": nan}  # fmt: skip


# ---- part 3: offline throughput vs transformers --------------------------------------------------------
def write_dummy_checkpoint(shape: str, folder: Path) -> None:
    """config.json + a word-level tokenizer + a placeholder safetensors file (weights come from random_init_)."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    s = SHAPES[shape]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **s, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "max_position_embeddings": 8192, "bos_token_id": 0, "eos_token_id": 1,
              "torch_dtype": "bfloat16"}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(s["vocab_size"])}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "t0", "eos_token": "t1"}))
    save_file({"placeholder": torch.zeros(1)}, str(folder / "model.safetensors"))


def dummy_weights() -> Callable[[], None]:
    """Make the engine's loader fill random weights instead of reading them (no multi-GB file to write)."""
    from shoal.engine.models.llama import LlamaForCausalLM

    original = LlamaForCausalLM.load_weights

    def load_weights(self: Any, weights: Any) -> None:
        for _ in weights:
            pass
        self.random_init_(std=0.02)

    LlamaForCausalLM.load_weights = load_weights  # type: ignore[method-assign]

    def restore() -> None:
        LlamaForCausalLM.load_weights = original  # type: ignore[method-assign]

    return restore


def part_throughput(c: Check) -> dict[str, Any]:
    torch = c.torch
    from shoal.engine import LLM, SamplingParams

    shape = c.throughput_shape
    num_seqs, prompt_len, out_len = (8, 16, 8) if c.smoke else (256, 512, 256)
    s = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(2, s["vocab_size"], (num_seqs, prompt_len), generator=gen)
    out: dict[str, Any] = {"shape": shape, "num_seqs": num_seqs, "prompt_len": prompt_len, "output_len": out_len}
    with tempfile.TemporaryDirectory() as tmp:
        write_dummy_checkpoint(shape, Path(tmp))
        restore = dummy_weights()
        try:
            llm = LLM(
                tmp, device=c.device.type, dtype="float32" if c.smoke else "bfloat16",
                kernels="torch" if c.smoke else "triton", max_num_seqs=num_seqs, max_num_batched_tokens=8192,
                max_model_len=prompt_len + out_len + 16, kv_cache_memory_gb=1.0 if c.smoke else 30.0,
                enable_prefix_caching=False,
            )  # fmt: skip
        finally:
            restore()
    params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True)
    llm.generate(prompt_token_ids=prompts[:4, :32].tolist(), params=SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    c.sync()
    start = time.perf_counter()
    results = llm.generate(prompt_token_ids=prompts.tolist(), params=params)
    c.sync()
    engine_s = time.perf_counter() - start
    lengths = {len(r.token_ids) for r in results}
    out["engine_s"] = engine_s
    out["engine_tok_s"] = num_seqs * out_len / engine_s
    out["engine_output_lengths"] = sorted(lengths)
    c.row("throughput", f"{shape} shoal engine ({num_seqs} x {prompt_len}+{out_len})",
          f"{out['engine_tok_s']:.0f} out tok/s ({engine_s:.1f} s)", "PASS" if lengths == {out_len} else "FAIL")  # fmt: skip
    del llm, results
    if c.device.type == "cuda":
        torch.cuda.empty_cache()
    if c.left() < (30 if c.smoke else 150):
        out["hf"] = "skipped: time budget"
        c.row("throughput", "transformers generate", "skipped: time budget")
        return out
    hf_s = hf_generate_seconds(c, shape, prompts, out_len)
    out["hf_s"] = hf_s
    out["hf_tok_s"] = num_seqs * out_len / hf_s
    out["speedup"] = out["engine_tok_s"] / out["hf_tok_s"]
    c.row("throughput", f"{shape} transformers generate", f"{out['hf_tok_s']:.0f} out tok/s ({hf_s:.1f} s)")
    c.row("throughput", "speedup over transformers", f"x{out['speedup']:.1f}",
          "" if c.smoke else ("PASS" if out["speedup"] >= 10 else "FAIL"))  # fmt: skip
    return out


def hf_generate_seconds(c: Check, shape: str, prompts: Any, out_len: int) -> float:
    torch = c.torch
    import transformers

    s = SHAPES[shape]
    fields: dict[str, Any] = {**s, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
                              "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # fmt: skip
    config = transformers.LlamaConfig(**fields)
    dtype = torch.float32 if c.smoke else torch.bfloat16
    with c.device:
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    ids = prompts.to(c.device)
    kwargs = {"do_sample": False, "pad_token_id": 1, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        model.generate(ids[:2, :8], max_new_tokens=2, min_new_tokens=2, **{**kwargs, "attention_mask": torch.ones_like(ids[:2, :8])})
        c.sync()
        start = time.perf_counter()
        generated = model.generate(ids, max_new_tokens=out_len, min_new_tokens=out_len, **kwargs)
        c.sync()
    assert generated.shape[1] == ids.shape[1] + out_len, generated.shape
    return time.perf_counter() - start
