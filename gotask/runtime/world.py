"""The World: every source of time, chance and identity the runtime may use.

Rules of this module:
- Library code never calls `time.time()`, `random` or `uuid4()`; it asks a `World`.
- `real_world()` is production. `sim_world(seed)` is a simulation: wall time is trio's
  (mock) clock plus a fixed epoch, randomness is seeded, so a run is a function of its seed.
- Ids are 128-bit, time-ordered (48-bit milliseconds + 80 random bits, ULID layout) with a
  26-character Crockford base32 form that sorts like the ids themselves. Within one World
  ids are strictly increasing, even within one millisecond.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import attrs
import trio

__all__ = ["World", "decode_id", "encode_id", "real_world", "sim_world"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
#: Two characters per 10 bits: 13 table lookups encode an id (26 characters, 130 bits).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_PAIR_SHIFTS = tuple(range(120, -10, -10))
#: `new_id` re-encodes the top 88 bits only when they change: within a millisecond
#: consecutive ids differ by one, so most ids cost 4 lookups, not 13.
_LOW_BITS = 40
_HIGH_SHIFTS = tuple(range(120, _LOW_BITS - 10, -10))
_RAND_BITS = 80
_RAND_MASK = (1 << _RAND_BITS) - 1
SIM_EPOCH_S = 1_700_000_000.0


def encode_id(value: int) -> str:
    """Return the 26-character Crockford base32 form of a 128-bit id."""
    if not 0 <= value < 1 << 128:
        raise ValueError(f"id out of range: {value}")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def decode_id(text: str) -> int:
    """Parse the string form of an id.

    Raises:
        ValueError: not 26 Crockford base32 characters.
    """
    if len(text) != 26:
        raise ValueError(f"an id has 26 characters, got {len(text)}")
    value = 0
    for ch in text.upper():
        if ch not in _DECODE:
            raise ValueError(f"invalid character {ch!r} in id")
        value = (value << 5) | _DECODE[ch]
    if value >= 1 << 128:
        raise ValueError("id out of range")
    return value


@attrs.define
class World:
    """Clock, random source and id generator, injected everywhere.

    Args:
        wall: seconds since the Unix epoch (float).
        monotonic: seconds on a clock that never goes back (trio's clock).
        rng: the random source; simulations seed it.
    """

    wall: Callable[[], float]
    monotonic: Callable[[], float]
    rng: random.Random
    _last_ms: int = 0
    _last_rand: int = 0
    _high: int = -1
    _prefix: str = ""

    def new_id(self) -> str:
        """Return a new time-ordered id in its 26-character string form."""
        ms = int(self.wall() * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = self._last_rand + 1
            if rand > _RAND_MASK:
                ms, rand = ms + 1, self.rng.getrandbits(_RAND_BITS - 1)
        else:
            rand = self.rng.getrandbits(_RAND_BITS - 1)
        self._last_ms, self._last_rand = ms, rand
        value = ((ms & ((1 << 48) - 1)) << _RAND_BITS) | rand
        high = value >> _LOW_BITS
        if high != self._high:
            self._high = high
            self._prefix = "".join([_PAIRS[(value >> shift) & 1023] for shift in _HIGH_SHIFTS])
        pairs = _PAIRS
        return (self._prefix + pairs[(value >> 30) & 1023] + pairs[(value >> 20) & 1023]
                + pairs[(value >> 10) & 1023] + pairs[value & 1023])

    def jitter(self, low: float, high: float) -> float:
        """Return a uniform random float in [low, high]."""
        return self.rng.uniform(low, high)


def real_world() -> World:
    """The production World: the system clock, trio's clock, an OS-seeded generator."""
    return World(
        wall=time.time,
        monotonic=trio.current_time,
        rng=random.Random(int.from_bytes(os.urandom(16), "big")),
    )


def sim_world(seed: int, skew_s: float = 0.0) -> World:
    """A simulated World: wall time follows trio's (mock) clock, randomness is seeded.

    Args:
        seed: the simulation seed.
        skew_s: a fixed offset of this World's wall clock, to model clock skew.
    """

    def wall() -> float:
        return SIM_EPOCH_S + skew_s + trio.current_time()

    return World(wall=wall, monotonic=trio.current_time, rng=random.Random(seed))
