"""SIMULATOR workload: multi-turn chats that share a few system prompts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatWorkload:
    system_prompts: int = 8
    system_tokens: int = 800
    turns: int = 6
    user_tokens: tuple[int, int] = (60, 240)
    reply_tokens: tuple[int, int] = (100, 300)
    think_time_s: float = 4.0
    """Mean pause (exponential) between an answer and the next user turn."""
    vocab: int = 32000


@dataclass
class Conversation:
    cid: int
    system: list[int]
    users: list[list[int]]
    replies: list[list[int]]
    turn: int = 0

    def prompt(self) -> list[int]:
        tokens = list(self.system)
        for i in range(self.turn + 1):
            tokens += self.users[i]
            if i < self.turn:
                tokens += self.replies[i]
        return tokens

    def reply(self) -> list[int]:
        return self.replies[self.turn]


class ConversationFactory:
    def __init__(self, w: ChatWorkload, seed: int) -> None:
        self.w = w
        self.rng = random.Random(seed)
        sys_rng = random.Random(seed * 7919 + 1)
        self.systems = [[sys_rng.randrange(w.vocab) for _ in range(w.system_tokens)] for _ in range(w.system_prompts)]
        self._next = 0

    def _tokens(self, lo_hi: tuple[int, int]) -> list[int]:
        return [self.rng.randrange(self.w.vocab) for _ in range(self.rng.randint(*lo_hi))]

    def new(self) -> Conversation:
        cid = self._next
        self._next += 1
        system = self.systems[self.rng.randrange(len(self.systems))]
        users = [self._tokens(self.w.user_tokens) for _ in range(self.w.turns)]
        replies = [self._tokens(self.w.reply_tokens) for _ in range(self.w.turns)]
        return Conversation(cid, system, users, replies)

    def think(self) -> float:
        return self.rng.expovariate(1.0 / self.w.think_time_s)
