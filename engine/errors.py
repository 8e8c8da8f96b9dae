"""Engine exceptions callers can tell apart (all are ValueError: the request is at fault)."""

from __future__ import annotations


class PromptTooLongError(ValueError):
    """The prompt (plus room for one output token) does not fit the context."""

    def __init__(self, num_tokens: int, max_model_len: int) -> None:
        self.num_tokens = num_tokens
        self.max_model_len = max_model_len
        super().__init__(
            f"prompt has {num_tokens} tokens but the model's maximum context length is {max_model_len} "
            f"tokens (the prompt must leave room for at least one output token)"
        )


class DuplicateRequestError(ValueError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"request id {request_id!r} is already in use")
