"""Engine exceptions callers can tell apart.

The ValueError subclasses mean the request is at fault (a 400); :class:`StepFailedError`
means a step failed and only the requests in it were failed (a 500 for them).
"""

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


class StepFailedError(RuntimeError):
    """A step raised; the requests scheduled in it were aborted and their blocks freed.

    The engine itself is consistent afterwards and keeps serving the others.
    """

    def __init__(self, request_ids: frozenset[str], cause: BaseException) -> None:
        self.request_ids = request_ids
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")
