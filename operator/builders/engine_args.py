"""ModelPool spec -> the engine's command-line flags (shared by the Deployment and ``shoal up``)."""

from __future__ import annotations

from shoal.crds.modelpool import ModelPoolSpec

ENGINE_API_KEY_ENV = "SHOAL_API_KEY"
"""The environment variable ``python -m shoal.engine serve`` takes its ``--api-key`` default from."""


def engine_args(spec: ModelPoolSpec, model: str, *, host: str, port: int) -> list[str]:
    """Flags of ``python -m shoal.engine serve`` for one replica of ``spec``.

    ``model`` is what ``--model`` receives: a path as seen by the replica, or ``bundled:<name>``.
    The API key (``engine.auth``) never goes on the command line: the engine reads it from
    ``ENGINE_API_KEY_ENV``.
    """
    e = spec.engine
    args = [
        "serve",
        "--model", model,
        "--served-model-name", spec.model.served_model_name,
        "--host", host,
        "--port", str(port),
        "--device", spec.device.value,
        "--dtype", e.dtype.value,
        "--block-size", str(e.block_size),
        "--max-num-seqs", str(e.max_num_seqs),
        "--drain-timeout", str(e.drain_timeout_seconds),
    ]  # fmt: skip
    if e.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(e.max_num_batched_tokens)]
    if e.kv_cache_memory_gb is not None:
        args += ["--kv-cache-memory-gb", f"{e.kv_cache_memory_gb:g}"]
    if e.max_model_len is not None:
        args += ["--max-model-len", str(e.max_model_len)]
    if not e.prefix_caching:
        args.append("--no-prefix-caching")
    if e.kernels is not None:
        args += ["--kernels", e.kernels.value]
    if e.max_waiting_requests is not None:
        args += ["--max-waiting", str(e.max_waiting_requests)]
    if e.speculation is not None:
        s = e.speculation
        args += [
            "--speculation", s.method,
            "--spec-max-draft-tokens", str(s.num_speculative_tokens),
            "--spec-max-batch-size", str(s.max_batch_size),
            "--spec-global-trie-nodes", str(s.global_trie_nodes),
        ]  # fmt: skip
    return args
