"""fieldtune's in-graph random generator (runtime/graph/src/random.rs) in numpy, bit for bit."""
import numpy as np

MODULUS = 2_147_483_647
STEP_MUL = 1_000_003
A1 = 1_103_515_245
C1 = 12_345
A2 = 1_664_525
C2 = 1_013_904_223
A3 = 69_069
C3 = 907_633_385
_M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for c in s.encode():
        h ^= c
        h = (h * 0x100000001B3) & _M64
    return h


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def stream_offset(seed, key):
    return splitmix64(seed ^ fnv1a64(key)) % MODULUS


def uniform(seed, key, step, shape):
    """float32 values in [0, 1) of stream `key` at train step `step`, shaped `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    s = (stream_offset(seed, key) + (step % MODULUS) * STEP_MUL) % MODULUS
    i = np.arange(n, dtype=np.int64)
    x1 = (i * A1 + s) % MODULUS
    x2 = (i * A2 + s + C1) % MODULUS
    x = (x1 * x2 + C2) % MODULUS
    y = (x * A3 + i) % MODULUS
    z = (y * x1 + C3) % MODULUS
    return ((z // 128).astype(np.float32) * np.float32(1.0 / 16777216.0)).reshape(shape)
