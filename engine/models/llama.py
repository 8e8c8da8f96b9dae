"""Llama-family decoder (Llama 2/3.x, SmolLM2, Mistral-like, Qwen2/2.5, Qwen3) over the paged KV cache.

Tokens of many sequences are packed flat (``[T]``, no batch dim). Every hot-path op goes
through ``ctx.ops`` (a :class:`~shoal.engine.kernels.backend.KernelBackend`), so the Triton
backend swaps in without touching the model.

Parameters are created uninitialised (``torch.empty``): fill them with :meth:`load_weights`
or :meth:`LlamaForCausalLM.random_init_`. To build straight on a device without a CPU copy::

    model = LlamaForCausalLM(config, dtype=torch.bfloat16, device="cuda").random_init_(std=0.02)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shoal.engine.attention_context import AttentionContext
from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.kernels.cpu.batch_matmul import pack_weight, packed_linear
from shoal.engine.kernels.cpu.quant_linear import KERNEL_MAX_ROWS, QuantizedWeight, quant_linear
from shoal.engine.loader.errors import ModelLoadError
from shoal.engine.model_config import ModelConfig
from shoal.engine.models.rotary import build_cos_sin_cache


@dataclass(frozen=True)
class _Factory:
    """Where and in which dtype parameters are created."""

    dtype: torch.dtype | None
    device: torch.device | str | None

    def param(self, *shape: int) -> nn.Parameter:
        # Uninitialised on purpose: weights are loaded or random_init_ fills them.
        return nn.Parameter(torch.empty(*shape, dtype=self.dtype, device=self.device), requires_grad=False)


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with uninitialised parameters (no costly default init)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, factory: _Factory) -> None:
        super().__init__()
        self.weight = factory.param(out_features, in_features)
        self.bias = factory.param(out_features) if bias else None
        self.quantized: QuantizedWeight | None = None
        """Set by ``use_quantized_weights``: up to ``KERNEL_MAX_ROWS`` rows are computed from these
        blocks; more use ``weight`` (a GEMM beats dequantizing per call), maybe packed for oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            if x.numel() <= KERNEL_MAX_ROWS * self.quantized.in_features:
                return quant_linear(x, self.quantized, self.bias)
            if self.weight.is_mkldnn:  # packed by LlamaForCausalLM.use_packed_batch_gemm
                return packed_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def quantize_(self, quantized: QuantizedWeight) -> None:
        if (quantized.out_features, quantized.in_features) != tuple(self.weight.shape):
            raise ModelLoadError(
                f"quantized weight {quantized.out_features}x{quantized.in_features} does not fit "
                f"a {tuple(self.weight.shape)} linear layer"
            )
        self.quantized = quantized


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int, factory: _Factory) -> None:
        super().__init__()
        self.weight = factory.param(num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """Holds the weight and eps; the math is the backend's ``rms_norm``."""

    def __init__(self, size: int, eps: float, factory: _Factory) -> None:
        super().__init__()
        self.weight = factory.param(size)
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: KernelBackend) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_forward(
        self, x: torch.Tensor, residual: torch.Tensor, ops: KernelBackend
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, factory: _Factory) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.q_size
        self.kv_size = config.kv_size
        self.scale = config.head_dim**-0.5
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, config.attention_bias, factory)
        self.o_proj = Linear(self.q_size, config.hidden_size, False, factory)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, factory) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, factory) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cos_sin_cache: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        ctx: AttentionContext,
    ) -> torch.Tensor:
        ops = ctx.ops
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q, ops)
            k = self.k_norm(k, ops)
        q, k = ops.rotary(q, k, positions, cos_sin_cache)
        k_cache, v_cache = kv_cache
        ops.store_kv(k, v, k_cache, v_cache, ctx.slot_mapping)
        out = ops.paged_attention(
            q,
            k_cache,
            v_cache,
            ctx.block_tables,
            ctx.cu_seqlens_q,
            ctx.context_lens,
            self.scale,
            ctx.max_q_len,
            ctx.max_context_len,
        )
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, factory: _Factory) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, False, factory)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, False, factory)

    def forward(self, x: torch.Tensor, ops: KernelBackend) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, factory: _Factory) -> None:
        super().__init__()
        self.self_attn = Attention(config, factory)
        self.mlp = MLP(config, factory)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, factory)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, factory)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        cos_sin_cache: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        ctx: AttentionContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ops = ctx.ops
        if residual is None:
            residual = x
            x = self.input_layernorm(x, ops)
        else:
            x, residual = self.input_layernorm.add_forward(x, residual, ops)
        x = self.self_attn(x, positions, cos_sin_cache, kv_cache, ctx)
        x, residual = self.post_attention_layernorm.add_forward(x, residual, ops)
        return self.mlp(x, ops), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, factory: _Factory) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, factory)
        self.layers = nn.ModuleList([DecoderLayer(config, factory) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, factory)


class LlamaForCausalLM(nn.Module):
    """The causal LM: :meth:`forward` -> hidden states, :meth:`compute_logits` -> fp32 logits."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        factory = _Factory(dtype, device)
        self.model = LlamaModel(config, factory)
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size, False, factory)
        )
        # Not a buffer: it must stay fp32 whatever dtype the model is cast to, and survive `to_empty`.
        self._cos_sin_cache: torch.Tensor | None = None
        self._quantized_lm_head: QuantizedWeight | None = None
        self._gemm_lm_head: torch.Tensor | None = None
        self.batch_gemm: torch.dtype | None = None  # set by use_packed_batch_gemm

    @property
    def cos_sin_cache(self) -> torch.Tensor:
        """``[max_position_embeddings, head_dim]`` fp32 on the parameters' device (built once)."""
        device = self.model.embed_tokens.weight.device
        cache = self._cos_sin_cache
        if cache is None or cache.device != device:
            cache = build_cos_sin_cache(self.config, device)
            self._cos_sin_cache = cache
        return cache

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` after the final norm, for the packed tokens of the step.

        Layer ``i`` reads and writes ``ctx.kv_caches[i]``.
        """
        cos_sin_cache = self.cos_sin_cache
        x = self.model.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.model.layers, ctx.kv_caches, strict=True):
            x, residual = layer(x, residual, positions, cos_sin_cache, kv_cache, ctx)
        assert residual is not None
        x, _ = self.model.norm.add_forward(x, residual, ctx.ops)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, vocab]`` float32 logits for the selected hidden states ``[N, hidden]``."""
        head = self._quantized_lm_head
        if head is not None and hidden.shape[0] <= KERNEL_MAX_ROWS:
            return quant_linear(hidden.float(), head)
        if self.lm_head is not None:  # past the kernel's rows: a GEMM (see Linear.forward)
            return self.lm_head(hidden).float()
        if self._gemm_lm_head is not None:
            return packed_linear(hidden, self._gemm_lm_head)
        return F.linear(hidden, self.model.embed_tokens.weight).float()

    @property
    def uses_quantized_weights(self) -> bool:
        """True once :meth:`use_quantized_weights` switched any layer."""
        return self._quantized_lm_head is not None or any(
            isinstance(m, Linear) and m.quantized is not None for m in self.modules()
        )

    @torch.no_grad()
    def use_quantized_weights(self, quantized: Mapping[str, QuantizedWeight]) -> int:
        """Compute linear layers (and the LM head) from quantized blocks; returns how many switched.

        ``quantized`` maps HF weight names to blocks of the same values the fp32 weights were
        loaded with. A fused layer (qkv, gate_up) switches only when all its parts are present in
        one format; the rest stay fp32. The fp32 weights stay too: inputs of more than
        ``KERNEL_MAX_ROWS`` rows (prefill, large batches) use them.
        """
        if self.model.embed_tokens.weight.device.type != "cpu" or self.model.embed_tokens.weight.dtype != torch.float32:
            raise ModelLoadError("quantized weights are computed by CPU kernels: they need device cpu and float32")
        by_module: dict[str, list[tuple[int, str]]] = {}
        for hf_proj, (fused, start, _) in self._shards().items():
            by_module.setdefault(fused, []).append((start, hf_proj))
        switched = 0
        for name, module in self.named_modules():
            if not isinstance(module, Linear) or name == "lm_head":
                continue
            prefix, _, leaf = name.rpartition(".")
            parts = [f"{prefix}.{proj}.weight" for _, proj in sorted(by_module.get(leaf, []))] or [f"{name}.weight"]
            pieces = [quantized.get(part) for part in parts]
            present = [p for p in pieces if p is not None]
            if len(present) != len(pieces) or len({p.qtype for p in present}) != 1:
                continue
            blocks = torch.cat([p.blocks for p in present]) if len(present) > 1 else present[0].blocks
            module.quantize_(QuantizedWeight(present[0].qtype, blocks, present[0].in_features))
            switched += 1
        head = quantized.get("model.embed_tokens.weight" if self.lm_head is None else "lm_head.weight")
        if head is not None:
            if self.lm_head is not None:
                self.lm_head.quantize_(head)
            self._quantized_lm_head = head
            switched += 1
        return switched

    @torch.no_grad()
    def use_packed_batch_gemm(self, dtype: torch.dtype) -> None:
        """Past ``KERNEL_MAX_ROWS`` rows, quantized layers and head run oneDNN's ``dtype`` GEMM
        (``packed_linear``) on weights packed here, replacing their fp32 copies. A tied head shares
        the embedding's fp32 table in float32 (unpacked) and gets a packed copy in bfloat16."""
        if self.batch_gemm is not None or not self.uses_quantized_weights:
            raise ModelLoadError("use_packed_batch_gemm: call once, after use_quantized_weights switched layers")
        for module in self.modules():
            if isinstance(module, Linear) and module.quantized is not None:
                module.weight = nn.Parameter(pack_weight(module.weight, dtype), requires_grad=False)
        if self._quantized_lm_head is not None and self.lm_head is None:  # an untied head is a Linear
            table = self.model.embed_tokens.weight
            self._gemm_lm_head = table.detach() if dtype == torch.float32 else pack_weight(table, dtype)
        self.batch_gemm = dtype

    @torch.no_grad()
    def random_init_(self, std: float = 0.02, seed: int | None = 0) -> LlamaForCausalLM:
        """Fill parameters for benchmarks/tests: normal(0, std) matrices, unit norms, zero biases."""
        gen = None
        device = self.model.embed_tokens.weight.device
        if seed is not None and device.type != "meta":
            gen = torch.Generator(device=device).manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=gen)
        return self

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in (cast to the parameters' dtype/device).

        q/k/v go into slices of ``qkv_proj``, gate/up into ``gate_up_proj``. Every parameter must
        be covered exactly once; a missing, unexpected or mis-shaped tensor raises
        :class:`ModelLoadError` naming it.
        """
        params = dict(self.named_parameters())
        pending = self._expected_targets(params)
        for hf_name, tensor in weights:
            target = self._target_of(hf_name)
            if target is None:
                continue
            param_name, start, length = target
            param = params.get(param_name)
            if param is None or (param_name, start) not in pending:
                raise ModelLoadError(f"unexpected or duplicate tensor {hf_name!r} in the checkpoint")
            dest = param if start is None else param.narrow(0, start, length)
            if tuple(tensor.shape) != tuple(dest.shape):
                raise ModelLoadError(
                    f"tensor {hf_name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            pending.discard((param_name, start))
        if pending:
            missing = sorted(self._hf_name_of(name, start) for name, start in pending)
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ModelLoadError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")

    # name mapping -------------------------------------------------------------------------------

    def _shards(self) -> dict[str, tuple[str, int, int]]:
        """HF projection name -> (fused module name, row offset, rows)."""
        c = self.config
        q, kv, inter = c.q_size, c.kv_size, c.intermediate_size
        return {
            "q_proj": ("qkv_proj", 0, q),
            "k_proj": ("qkv_proj", q, kv),
            "v_proj": ("qkv_proj", q + kv, kv),
            "gate_proj": ("gate_up_proj", 0, inter),
            "up_proj": ("gate_up_proj", inter, inter),
        }

    def _target_of(self, hf_name: str) -> tuple[str, int | None, int] | None:
        """(our parameter, row offset or None for the whole tensor, rows); None = ignore."""
        if hf_name.endswith("rotary_emb.inv_freq"):
            return None  # old checkpoints store it; we compute our own
        if hf_name == "lm_head.weight" and self.lm_head is None:
            return None  # tied: some checkpoints still save a copy
        parts = hf_name.split(".")
        if len(parts) >= 2 and parts[-2] in self._shards():
            fused, start, rows = self._shards()[parts[-2]]
            return ".".join([*parts[:-2], fused, parts[-1]]), start, rows
        return hf_name, None, 0

    def _hf_name_of(self, param_name: str, start: int | None) -> str:
        if start is None:
            return param_name
        parts = param_name.split(".")
        for hf_proj, (fused, offset, _) in self._shards().items():
            if parts[-2] == fused and offset == start:
                return ".".join([*parts[:-2], hf_proj, parts[-1]])
        return param_name

    def _expected_targets(self, params: dict[str, nn.Parameter]) -> set[tuple[str, int | None]]:
        expected: set[tuple[str, int | None]] = set()
        by_fused: dict[str, list[int]] = {}
        for _, (fused, start, _) in self._shards().items():
            by_fused.setdefault(fused, []).append(start)
        for name in params:
            module = name.split(".")[-2] if "." in name else ""
            if module in by_fused:
                expected.update((name, start) for start in by_fused[module])
            else:
                expected.add((name, None))
        return expected
