"""The engine loop: ``step()`` = schedule -> run the model -> postprocess."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from typing import Any

from shoal.engine.block_manager import BlockManager
from shoal.engine.config import EngineConfig
from shoal.engine.errors import DuplicateRequestError, PromptTooLongError, StepFailedError
from shoal.engine.kernels.cpu.quant_linear import KERNEL_MAX_ROWS
from shoal.engine.model_runner import ModelRunner, SampleRequest
from shoal.engine.outputs import EngineStats, RequestOutput
from shoal.engine.programs import ProgramRetention
from shoal.engine.request_state import RequestState
from shoal.engine.sampler import SampleResult
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from shoal.engine.sequence import Sequence
from shoal.engine.spec.speculator import TOKEN_COST, Speculator
from shoal.engine.structured import GrammarCompiler, advance

logger = logging.getLogger("shoal.engine")


class LLMEngine:
    """One engine replica: single-threaded; a server drives it from its own thread."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        self.tokenizer = self.runner.tokenizer
        self.model_name = config.served_model_name or self.runner.model_name
        self.block_size = config.block_size
        self.num_blocks = self.runner.num_blocks
        model_len = config.max_model_len or self.runner.model_config.max_position_embeddings
        # a lone sequence must always fit the pool, so preemption can never deadlock
        self.max_model_len = min(model_len, self.runner.model_config.max_position_embeddings, self.num_blocks * self.block_size)
        self.block_manager = BlockManager(self.num_blocks, self.block_size, config.enable_prefix_caching)
        quota = config.max_pinned_blocks_per_tenant
        self.programs = ProgramRetention(
            self.block_manager,
            max_blocks_per_tenant=self.num_blocks // 4 if quota is None else quota,
            max_retention_s=config.max_retention_s,
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_num_seqs=config.max_num_seqs,
                max_model_len=self.max_model_len,
                watermark_blocks=max(1, self.num_blocks // 100),
            ),
            self.block_manager,
            on_finish=self.programs.on_finish,
        )
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids)
        self.grammars = GrammarCompiler(self.tokenizer, self.runner.model_config.vocab_size, self.eos_token_ids)
        """Structured-output grammars; the server compiles through it off the engine thread."""
        self.speculator = None
        if config.speculation is not None:
            cost = TOKEN_COST.get(self.runner.device.type, TOKEN_COST["cpu"])
            # quantized weights: keep verification inside the kernel's row-independent range
            quantized = self.runner.model.uses_quantized_weights
            self.speculator = Speculator(
                config.speculation, token_cost=cost, max_step_rows=KERNEL_MAX_ROWS if quantized else None
            )
        self._requests: dict[str, RequestState] = {}
        self._arrivals = itertools.count()
        self._prompt_tokens = 0
        self._generation_tokens = 0

    # ---- requests --------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: str | None = None,
        params: SamplingParams | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
        priority: int = 0,
        program_id: str | None = None,
        retention_s: float | None = None,
        tenant: str = "",
        cache_salt: str = "",
    ) -> None:
        """Queue a request. Raises ValueError (naming the problem) for bad input.

        Every parameter is checked against what this model can represent here, so a
        request that is accepted cannot break a step. ``tenant`` owns the program pin;
        ``cache_salt`` separates prefix-cache sharing (equal salts share).
        """
        params = params or SamplingParams()
        if request_id in self._requests:
            raise DuplicateRequestError(request_id)
        if prompt_token_ids is None:
            if prompt is None:
                raise ValueError("either a prompt or prompt_token_ids is required")
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
            if not prompt:
                raise ValueError("prompt must not be empty")
            prompt_token_ids = self.tokenizer.encode(prompt)
        prompt_token_ids = list(prompt_token_ids)
        if not prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        vocab = self.runner.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}), got {bad[0]!r}")
        if len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLongError(len(prompt_token_ids), self.max_model_len)
        if retention_s is not None and retention_s < 0:
            raise ValueError(f"retention must be >= 0 seconds, got {retention_s}")
        params = self._fit_to_model(params, vocab)
        state = RequestState(request_id, prompt_token_ids, params, self.tokenizer, time.monotonic())
        seq = Sequence(
            request_id,
            prompt_token_ids,
            params,
            priority=priority,
            arrival=next(self._arrivals),
            program_id=program_id,
            retention_s=retention_s,
            cache_salt=cache_salt,
            tenant=tenant,
        )
        if params.structured is not None:
            seq.matcher = self.grammars.matcher(params.structured)
        state.add_sequence(seq)
        self._requests[request_id] = state
        self._prompt_tokens += len(prompt_token_ids)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output (None if unknown)."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return None
        for seq in state.sequences:
            self.scheduler.finish(seq, "abort")
        self._release_drafter(state)
        self.runner.release_request(request_id, state.params.n)
        return state.snapshot(self._cached_tokens(state))

    def _fit_to_model(self, params: SamplingParams, vocab: int) -> SamplingParams:
        bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"stop_token_ids must be token ids in [0, {vocab}), got {bad[0]}")
        if params.top_k >= vocab:  # keeping the whole vocabulary is no top-k at all
            params = dataclasses.replace(params, top_k=0)
        if params.logprobs is not None and params.logprobs > vocab:
            params = dataclasses.replace(params, logprobs=vocab)
        return params

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def release_program(self, program_id: str, tenant: str = "") -> int:
        """Drop ``tenant``'s pin of ``program_id``; the number of blocks unpinned."""
        return self.programs.release(program_id, tenant)

    # ---- the loop --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        self.programs.expire()
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running, self.max_model_len)
        output = self.scheduler.schedule()
        if output.is_empty and self.scheduler.waiting and not self.scheduler.running:
            # only pinned program blocks stand in the way: give them up rather than stall
            while output.is_empty and self.programs.release_oldest():
                output = self.scheduler.schedule()
        if output.is_empty:
            return []
        try:
            outputs = self._run_step(output)
        except Exception as exc:
            # Only the requests in this batch fail; aborting them frees their blocks and
            # leaves the scheduler consistent for everyone else.
            failed = frozenset(item.seq.request_id for item in output.scheduled)
            logger.exception("engine step failed; failing its %d request(s)", len(failed))
            for request_id in failed:
                self.abort_request(request_id)
            raise StepFailedError(failed, exc) from exc
        if self.speculator is not None:
            # [speculation] decode step times teach the speculator what verifying more tokens costs
            self.speculator.observe_step(output.scheduled, time.perf_counter() - started)
        return outputs

    def _run_step(self, output: SchedulerOutput) -> list[RequestOutput]:
        now = time.monotonic()
        requests = self._sample_requests(output)
        drafts = {item.seq.seq_id: item.draft for item in output.scheduled if item.draft is not None}
        results = self.runner.run(output.scheduled, requests)
        self.scheduler.postprocess(output)
        touched: dict[str, RequestState] = {}
        for item in output.scheduled:
            state = self._requests.get(item.seq.request_id)
            if state is not None:
                touched[state.request_id] = state
                state.metrics.setdefault("first_scheduled", now)
        for req, samples in zip(requests, results, strict=True):
            state = self._requests[req.seq.request_id]
            if req.seq.pending_fork:
                self._fork(state, req.seq, samples[1:])
                samples = samples[:1]
            # [speculation] a verified draft yields its accepted tokens, then the model's next one
            for sample in samples:
                self._accept(state, req.seq, sample.token_id, sample.logprobs)
                if req.seq.is_finished:
                    break
            draft = drafts.get(req.seq.seq_id)
            if draft is not None and self.speculator is not None:
                self.speculator.record(req.seq, draft, len(samples) - 1)
                self.scheduler.commit_draft(req.seq, len(samples) - 1)
            state.metrics.setdefault("first_token", time.monotonic())
        outputs = []
        for state in touched.values():
            if state.finished:
                state.metrics["finished"] = time.monotonic()
                del self._requests[state.request_id]
                self._release_drafter(state)
                self.runner.release_request(state.request_id, state.params.n)
            outputs.append(state.snapshot(self._cached_tokens(state)))
        return outputs

    def _sample_requests(self, output: SchedulerOutput) -> list[SampleRequest]:
        requests = []
        for item in output.scheduled:
            if not item.samples:
                continue
            seq = item.seq
            banned: tuple[int, ...] = ()
            if seq.num_output_tokens < seq.params.min_tokens:
                banned = tuple(sorted(set(seq.params.stop_token_ids) | (set() if seq.params.ignore_eos else set(self.eos_token_ids))))
            requests.append(SampleRequest(seq, seq.params.n if seq.pending_fork else 1, banned))
        return requests

    def _release_drafter(self, state: RequestState) -> None:
        if self.speculator is not None:
            for seq in state.sequences:
                self.speculator.release(seq)

    def _fork(self, state: RequestState, parent: Sequence, samples: list[SampleResult]) -> None:
        parent.pending_fork = False
        for offset, result in enumerate(samples, start=1):
            child = Sequence(
                parent.request_id,
                parent.token_ids[: parent.num_prompt_tokens],
                parent.params,
                index=parent.index + offset,
                priority=parent.priority,
                arrival=parent.arrival,
                program_id=parent.program_id,
                retention_s=parent.retention_s,
                cache_salt=parent.cache_salt,
                tenant=parent.tenant,
            )
            if parent.matcher is not None:  # the parent has not consumed its own first token yet
                child.matcher = parent.matcher.deep_copy()
            state.add_sequence(child)
            self.scheduler.fork(parent, child)
            self._accept(state, child, result.token_id, result.logprobs)

    def _accept(self, state: RequestState, seq: Sequence, token_id: int, logprobs: dict[int, float] | None) -> None:
        self._generation_tokens += 1
        grammar_done = False
        if seq.matcher is not None:
            if not advance(seq.matcher, token_id):
                self.scheduler.finish(seq, "abort")  # unreachable while the mask holds: never emit past it
                state.flush(seq.index)
                return
            grammar_done = seq.matcher.is_stopped()
        self.scheduler.append_token(seq, token_id, self.eos_token_ids)
        if grammar_done and not seq.is_finished:
            # nothing but EOS could follow: end now instead of spending a step on it
            self.scheduler.finish(seq, "stop")
        stop = state.on_token(seq.index, token_id, logprobs)
        if stop is None:
            if seq.is_finished:
                state.flush(seq.index)
        elif seq.is_finished:  # the same token also hit a length limit: the stop string is the reason
            seq.finish_reason, seq.stop_reason = "stop", stop
        else:
            self.scheduler.finish(seq, "stop", stop)

    # ---- introspection ---------------------------------------------------------------------
    def _cached_tokens(self, state: RequestState) -> int:
        seqs = state.sequences
        return seqs[0].num_cached_tokens if seqs else 0

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len({s.request_id for s in self.scheduler.running}),
            num_waiting=len({s.request_id for s in self.scheduler.waiting} - {s.request_id for s in self.scheduler.running}),
            num_blocks=bm.num_blocks,
            num_free_blocks=bm.num_free_blocks,
            kv_usage=bm.usage,
            block_size=bm.block_size,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_pinned_blocks=self.programs.num_pinned_blocks,
            num_programs=self.programs.num_programs,
            prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens,
            num_cached_blocks=bm.num_cached_free_blocks,
            **self._spec_stats(),
        )

    def _spec_stats(self) -> dict[str, Any]:
        if self.speculator is None:
            return {}
        s = self.speculator.stats
        return {
            "spec_num_drafts": s.num_drafts,
            "spec_num_draft_tokens": s.num_draft_tokens,
            "spec_num_accepted_tokens": s.num_accepted_tokens,
            "spec_accepted_per_pos": tuple(s.accepted_per_pos),
        }

    def cached_block_hashes(self) -> list[int]:
        return self.block_manager.cached_block_hashes()
