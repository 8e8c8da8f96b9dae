"""Program pins: keyed by (tenant, program_id), a per-tenant block quota, a retention cap (no torch)."""

from __future__ import annotations

from shoal.engine.block_manager import BlockManager
from shoal.engine.programs import ProgramRetention
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.sequence import Sequence

BS = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def finished_turn(bm: BlockManager, tenant: str, program_id: str, first_token: int, blocks: int,
                  retention_s: float = 60.0) -> Sequence:  # fmt: skip
    """A sequence whose ``blocks`` full blocks are computed and cached (as after a finished turn)."""
    tokens = list(range(first_token, first_token + blocks * BS))
    seq = Sequence(f"{tenant}-{program_id}-{first_token}", tokens + [1], SamplingParams(),
                   program_id=program_id, retention_s=retention_s, tenant=tenant)  # fmt: skip
    bm.allocate(seq)
    seq.num_computed_tokens = len(tokens)
    bm.register_computed_blocks(seq)
    return seq


def finish(bm: BlockManager, programs: ProgramRetention, seq: Sequence) -> None:
    programs.on_finish(seq)
    bm.free(seq)


def make(quota: int = 100, max_retention_s: float = 600.0) -> tuple[BlockManager, ProgramRetention, Clock]:
    bm = BlockManager(64, BS)
    clock = Clock()
    return bm, ProgramRetention(bm, max_blocks_per_tenant=quota, max_retention_s=max_retention_s, clock=clock), clock


def test_same_program_id_of_two_tenants_are_two_pins() -> None:
    bm, programs, _ = make()
    finish(bm, programs, finished_turn(bm, "alice", "p", 1000, 3))
    finish(bm, programs, finished_turn(bm, "bob", "p", 2000, 2))
    assert programs.num_programs == 2 and programs.num_pinned_blocks == 5
    assert programs.release("p", "mallory") == 0
    assert programs.release("p", "bob") == 2
    assert programs.tenant_blocks("alice") == 3 and programs.num_pinned_blocks == 3


def test_tenant_quota_releases_its_own_oldest_pins_first() -> None:
    bm, programs, _ = make(quota=6)
    finish(bm, programs, finished_turn(bm, "bob", "other", 9000, 4))
    finish(bm, programs, finished_turn(bm, "alice", "a1", 1000, 3))
    finish(bm, programs, finished_turn(bm, "alice", "a2", 2000, 3))
    assert programs.tenant_blocks("alice") == 6
    finish(bm, programs, finished_turn(bm, "alice", "a3", 3000, 2))
    assert programs.tenant_blocks("alice") == 5  # a1 went, a2 and a3 stay
    assert programs.release("a1", "alice") == 0 and programs.release("a2", "alice") == 3
    assert programs.tenant_blocks("bob") == 4, "another tenant's pins are never taken for alice's quota"


def test_a_pin_bigger_than_the_quota_keeps_its_leading_blocks() -> None:
    bm, programs, _ = make(quota=16)
    seq = finished_turn(bm, "alice", "huge", 1000, 40)
    lead = seq.block_table[:16]
    finish(bm, programs, seq)
    assert programs.tenant_blocks("alice") == 16
    assert all(bm.blocks[b].ref_count == 1 for b in lead)


def test_retention_is_capped() -> None:
    bm, programs, clock = make(max_retention_s=600)
    finish(bm, programs, finished_turn(bm, "alice", "week", 1000, 2, retention_s=7 * 86400))
    clock.now = 599
    programs.expire()
    assert programs.num_programs == 1
    clock.now = 601
    programs.expire()
    assert programs.num_programs == 0 and bm.num_free_blocks == bm.num_blocks
