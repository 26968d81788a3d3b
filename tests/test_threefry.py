"""p2pllm_abm.threefry: the CPU lowering of JAX's Threefry-2x32 gives the hash's exact bits."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from jax.extend.random import threefry2x32_p

import p2pllm_abm.dynamics  # noqa: F401  (registers the lowering, as importing the toolkit does)
from p2pllm_abm.threefry import PARITY, ROTATIONS, threefry2x32

WORD = st.integers(0, 2**32 - 1)


def reference_threefry(key: tuple[int, int], counter: np.ndarray) -> np.ndarray:
    """Threefry-2x32-20 of ``counter`` (``(2, ...)`` uint32) written out round by round in NumPy."""
    ks = [np.uint32(key[0]), np.uint32(key[1]), np.uint32(key[0]) ^ np.uint32(key[1]) ^ PARITY]
    a, b = counter[0] + ks[0], counter[1] + ks[1]
    for group in range(5):
        for bits in ROTATIONS[group % 2]:
            a = a + b
            b = a ^ ((b << bits) | (b >> np.uint32(32 - bits)))
        a, b = a + ks[(group + 1) % 3], b + ks[(group + 2) % 3] + np.uint32(group + 1)
    return np.stack([a, b])


def test_random123_known_answers():
    """The known-answer vectors of Random123 (kat_vectors, threefry2x32_20), compiled on the CPU."""
    hashed = jax.jit(lambda k1, k2, x1, x2: threefry2x32_p.bind(k1, k2, x1, x2))
    for key, counter, expected in [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
                                   ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
                                   ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]:
        words = [jnp.uint32(value) for value in (*key, *counter)]
        assert tuple(int(word) for word in hashed(*words)) == expected
        assert tuple(int(word) for word in threefry2x32(*words)) == expected


@settings(max_examples=60, deadline=None)
@given(key=st.tuples(WORD, WORD), counter=st.lists(st.tuples(WORD, WORD), min_size=1, max_size=9))
def test_the_compiled_hash_equals_a_numpy_threefry(key, counter):
    counter = np.array(counter, dtype=np.uint32).T
    hashed = jax.jit(lambda x1, x2: threefry2x32_p.bind(jnp.uint32(key[0]), jnp.uint32(key[1]), x1, x2))
    np.testing.assert_array_equal(np.stack(hashed(counter[0], counter[1])), reference_threefry(key, counter))


def test_random_bits_follow_the_hash():
    """jax.random's draws (partitionable Threefry) are the NumPy hash of the counters ``(0, i)``:
    32-bit draw ``i`` is the XOR of the two words, 64-bit draw ``i`` the first word above the second."""
    key = jax.random.key(7)
    words = tuple(int(word) for word in jax.random.key_data(key))
    hashed = reference_threefry(words, np.stack([np.zeros(6, np.uint32), np.arange(6, dtype=np.uint32)]))
    draw = jax.jit(jax.random.bits, static_argnums=(1, 2))
    assert jax.config.jax_threefry_partitionable
    np.testing.assert_array_equal(draw(key, (6,), jnp.uint32), hashed[0] ^ hashed[1])
    np.testing.assert_array_equal(draw(key, (6,), jnp.uint64),
                                  (hashed[0].astype(np.uint64) << np.uint64(32)) | hashed[1].astype(np.uint64))
