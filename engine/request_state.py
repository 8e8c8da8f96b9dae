"""Per-request bookkeeping in the engine: its sequences, decoded text and timings."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.engine.detokenizer import IncrementalDetokenizer
from shoal.engine.outputs import CompletionOutput, RequestOutput
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.sequence import Sequence
from shoal.engine.stop_checker import StopChecker
from shoal.engine.tokenizer import Tokenizer


@dataclass
class SampleState:
    """Decoded text of one sample."""

    seq: Sequence
    detokenizer: IncrementalDetokenizer
    text: str = ""
    logprobs: list[dict[int, float]] = field(default_factory=list)
    final_text: str | None = None
    """Set when a stop string ended the sample: the text before it."""


class RequestState:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        arrival: float,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = tuple(prompt_token_ids)
        self.params = params
        self.tokenizer = tokenizer
        self.samples: dict[int, SampleState] = {}
        self.stop_checker = StopChecker(params.stop)
        self.metrics: dict[str, float] = {"arrival": arrival}

    def add_sequence(self, seq: Sequence) -> SampleState:
        state = SampleState(
            seq=seq,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, list(self.prompt_token_ids), skip_special_tokens=self.params.skip_special_tokens
            ),
        )
        self.samples[seq.index] = state
        return state

    @property
    def sequences(self) -> list[Sequence]:
        return [s.seq for s in self.samples.values()]

    @property
    def finished(self) -> bool:
        return len(self.samples) == self.params.n and all(s.seq.is_finished for s in self.samples.values())

    def on_token(self, index: int, token_id: int, logprobs: dict[int, float] | None) -> str | None:
        """Decode a new token of sample ``index``; returns a stop string if one was completed."""
        state = self.samples[index]
        if logprobs is not None:
            state.logprobs.append(logprobs)
        delta = state.detokenizer.add(token_id)
        if not delta:
            return None
        state.text += delta
        match = self.stop_checker.find(state.text, len(delta))
        if match is None:
            return None
        state.final_text = match.text
        return match.stop

    def flush(self, index: int) -> None:
        """At the end of a sample: release text held back for an incomplete UTF-8 sequence."""
        state = self.samples[index]
        if state.final_text is None:
            state.text += state.detokenizer.flush()

    def snapshot(self, num_cached_tokens: int) -> RequestOutput:
        outputs = []
        for index in sorted(self.samples):
            state = self.samples[index]
            seq = state.seq
            if state.final_text is not None:
                text = state.final_text
            elif seq.is_finished:
                text = state.text
            else:
                text = state.text[: self.stop_checker.safe_length(state.text)]
            outputs.append(
                CompletionOutput(
                    index=index,
                    text=text,
                    token_ids=tuple(seq.output_token_ids),
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                    logprobs=tuple(state.logprobs) if self.params.logprobs is not None else None,
                )
            )
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            outputs=tuple(outputs),
            finished=self.finished,
            num_cached_tokens=num_cached_tokens,
            metrics=dict(self.metrics),
        )
