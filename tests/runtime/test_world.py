from __future__ import annotations

import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from gotask.runtime.world import World, decode_id, encode_id, sim_world


def fixed_world(now: list[float], seed: int = 1) -> World:
    return World(wall=lambda: now[0], monotonic=lambda: now[0], rng=random.Random(seed))


def test_ids_are_strictly_increasing_within_one_millisecond() -> None:
    now = [1000.0]
    world = fixed_world(now)
    ids = [world.new_id() for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000


def test_ids_sort_by_time() -> None:
    now = [1000.0]
    world = fixed_world(now)
    first = world.new_id()
    now[0] = 1000.002
    assert world.new_id() > first
    assert decode_id(first) >> 80 == 1_000_000


def test_id_string_round_trip_and_rejects() -> None:
    for value in (0, 1, (1 << 128) - 1, 123456789 << 70):
        assert decode_id(encode_id(value)) == value
        assert len(encode_id(value)) == 26
    with pytest.raises(ValueError, match="26 characters"):
        decode_id("ABC")
    with pytest.raises(ValueError, match="invalid character"):
        decode_id("U" * 26)
    with pytest.raises(ValueError, match="out of range"):
        encode_id(1 << 128)


def _base32_digits(value: int) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@given(st.integers(0, (1 << 128) - 1), st.integers(0, (1 << 128) - 1))
def test_id_strings_are_base32_digits_and_sort_like_ids(a: int, b: int) -> None:
    assert encode_id(a) == _base32_digits(a)
    assert (encode_id(a) < encode_id(b)) == (a < b)


def test_consecutive_ids_stay_exact_across_the_cached_prefix() -> None:
    # new_id re-encodes its top bits only when they change: increments that carry
    # past bit 40, or far into the top bits, must change the cached prefix too.
    now = [1000.0]
    world = fixed_world(now)
    for start in ((1 << 40) - 3, (1 << 79) - 3):
        world.rng.getrandbits = lambda bits, start=start: start  # type: ignore[method-assign]
        now[0] += 1.0
        ids = [world.new_id() for _ in range(6)]
        values = [decode_id(i) for i in ids]
        assert ids == [_base32_digits(v) for v in values]
        assert values == list(range(values[0], values[0] + 6))


def test_same_seed_same_ids() -> None:
    assert [fixed_world([5.0], 7).new_id() for _ in range(3)] == [
        fixed_world([5.0], 7).new_id() for _ in range(3)
    ]
    assert fixed_world([5.0], 7).new_id() != fixed_world([5.0], 8).new_id()


async def test_sim_world_follows_trio_clock(autojump_clock: object) -> None:
    world = sim_world(3, skew_s=2.0)
    before = world.wall()
    await trio.sleep(10)
    assert world.wall() - before == pytest.approx(10)
    assert sim_world(3).wall() == pytest.approx(world.wall() - 2.0)
