"""torchvision's resized image size, ``floor(side * scale)`` with Python (float64) floats,
computed in integer arithmetic.

torchvision's ``GeneralizedRCNNTransform`` (Mask R-CNN's resize, He et al. 2017 section 3.1)
takes scale = min(min_size / short side, max_size / long side) and output side =
floor(side * scale), both in float64. The float64 rounding matters: (800 / 49) * 49 is
799.99... in float64, so a 49-pixel short side becomes 799 pixels, not 800; over the sizes
16..3000 one pair in 25 differs from the exact rational floor, one in 13 from float32
arithmetic. LiteRT has no float64 arithmetic among its builtins, so this module reproduces
the float64 result with int64 operations (multiply, floor-mod, compare, gather) and one exact
float32 quotient, which every runtime runs. ``preprocessing.shorter_side_output_size`` uses it
everywhere, so ``detect``, training and every export compute the same sizes.

Method (exact for sides and sizes below 2**20, which covers every image the pixel cap admits
except absurd strips): for positive integers x, a, d, let n, r = divmod(x * a, d).
    * r != 0: x * a / d is at least 1 / d away from an integer, far more than float64's error
      (relative 2**-52), so the float64 floor is n.
    * r == 0 (the exact product is the integer n): q = float64(a / d) = Q * 2**(E - 52),
      E = floor(log2(a / d)), Q = round-half-even(a * 2**k / d), k = 52 - E. When Q rounds up
      (or a * 2**k / d is exact), x * q >= n and the floor is n. When Q rounds down by
      rho = (a * 2**k mod d) / d units, x * q = n - x * rho * 2**(E - 52), which float64
      rounds below n iff that gap exceeds half the spacing of doubles just below n
      (2**(g - 53), g = floor(log2 n), one less when n is a power of two; a tie goes to the
      even n): x * (a * 2**k mod d) > d * 2**(g - E - 1). Then the floor is n - 1.
    a * 2**k mod 2d (whose top bit is Q's parity) is reached by multiplying by powers of two
    in steps of at most 2**30 modulo 2d.

tests/ops/test_size_rule.py compares it with Python's float64 arithmetic on every size pair
of a grid and on the pairs where float64 and the exact floor disagree.
"""
import tensorflow as tf

_MAX_SHIFT = 30  # a * 2**k mod 2d in steps of 2**30 (2d < 2**21: products < 2**51)
_POW2 = [2 ** i for i in range(63)]


def _pow2(exponent):
    """2**exponent (int64) for an int64 tensor exponent in [0, 62]."""
    return tf.gather(tf.constant(_POW2, tf.int64), tf.cast(exponent, tf.int32))


def _exact_quotient(multiple, d):
    """multiple / d (int64) for a multiple of d whose quotient is below 2**21, through float32
    (LiteRT's FloorDiv has no int64 kernel): the float32 quotient is within 2**-3 of it."""
    quotient = tf.cast(multiple, tf.float32) / tf.cast(d, tf.float32)
    return tf.cast(tf.round(quotient), tf.int64)


def _floor_log2(value):
    """floor(log2(value)) (int64) of a positive int64 tensor below 2**62."""
    guess = tf.cast(tf.floor(tf.math.log(tf.cast(value, tf.float32)) / tf.math.log(2.0)),
                    tf.int64)
    guess = tf.clip_by_value(guess, 0, 61)
    guess = tf.where(_pow2(guess) > value, guess - 1, guess)  # float32 log rounded up
    return tf.where(_pow2(guess + 1) <= value, guess + 1, guess)  # ... or down


def _ratio_exponent(a, d):
    """E = floor(log2(a / d)) (int64) for positive int64 a, d (|E| <= 40)."""
    e = _floor_log2(a) - _floor_log2(d)  # E or E + 1
    # a / d < 2**e  <=>  a < d * 2**e (e >= 0)  or  a * 2**-e < d (e < 0)
    below = tf.where(e >= 0, a < d * _pow2(tf.maximum(e, 0)), a * _pow2(tf.maximum(-e, 0)) < d)
    return tf.where(below, e - 1, e)


def _times_pow2_mod(value, exponent, modulus, max_exponent):
    """value * 2**exponent mod modulus (int64), exponent in [0, max_exponent] (static bound)."""
    remaining = exponent
    for _ in range(-(-max_exponent // _MAX_SHIFT)):
        step = tf.minimum(remaining, _MAX_SHIFT)
        value = tf.math.floormod(value * _pow2(step), modulus)
        remaining -= step
    return value


def floor_times_ratio(x, a, d):
    """floor(float64(x) * float64(a / d)) exactly as Python floats compute it.

    Args:
        x, a, d: positive integer tensors (any int dtype, broadcastable), each below 2**20,
            with x * a / d below 2**21 (an image side: ``_exact_quotient``).

    Returns:
        int32 tensor of the broadcast shape.
    """
    x, a, d = (tf.cast(v, tf.int64) for v in (x, a, d))
    r = tf.math.floormod(x * a, d)
    n = _exact_quotient(x * a - r, d)
    e = _ratio_exponent(a, d)  # q = Q * 2**(E - 52)
    k = 52 - e  # in [12, 92]
    twice = _times_pow2_mod(tf.math.floormod(a, 2 * d), k, 2 * d, 92)  # a * 2**k mod 2d
    rest, odd = tf.math.floormod(twice, d), twice >= d  # rounding remainder, Q's parity
    rounds_down = (2 * rest < d) | ((2 * rest == d) & ~odd)
    g = _floor_log2(tf.maximum(n, 1))
    g = tf.where(_pow2(g) == n, g - 1, g)  # power of two: half the spacing below it
    j = g - e - 1  # below n iff x * rest > d * 2**j
    lhs = x * rest * _pow2(tf.maximum(-j, 0))
    rhs = d * _pow2(tf.maximum(j, 0))
    drops = tf.equal(r, 0) & (rest > 0) & rounds_down & (lhs > rhs)
    return tf.cast(tf.where(drops, n - 1, n), tf.int32)


def shorter_side_ratio(height, width, min_size, max_size):
    """torchvision's scale as a ratio (a, d) of int64 tensors: (min_size, short side) or
    (max_size, long side), whichever is smaller (compared exactly; equal ratios give the same
    float64, so either is right)."""
    h, w = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    short, long_ = tf.minimum(h, w), tf.maximum(h, w)
    lo, hi = tf.cast(min_size, tf.int64), tf.cast(max_size, tf.int64)
    capped = hi * short < lo * long_  # max_size / long < min_size / short
    return tf.where(capped, hi, lo), tf.where(capped, long_, short)
