from __future__ import annotations

from gotask.actors._worker_outcomes import CHUNK_BYTES_MAX, chunks
from gotask.actors.storage.base import AckItem, AckJobs, NackItem, NackJobs
from gotask.transports._wire import FRAME_BYTES_MAX, encode


def test_outcomes_are_chunked_to_fit_a_frame() -> None:
    acks = [AckItem(f"job{i}", 1, b"r" * 200_000) for i in range(20)]
    commands = chunks(acks, AckJobs)
    assert sum(len(c.items) for c in commands) == 20
    assert all(len(encode(c)) < FRAME_BYTES_MAX for c in commands)
    assert len(commands) == 7


def test_small_outcomes_share_one_command() -> None:
    nacks = [NackItem(f"job{i}", 1, "E", "boom", "tb") for i in range(1000)]
    commands = chunks(nacks, NackJobs)
    assert len(commands) == 1
    assert len(encode(commands[0])) < CHUNK_BYTES_MAX
