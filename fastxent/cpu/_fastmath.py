"""Vectorisable scalar math for the CPU kernels.

Numba's ``math.exp`` is a call into libm (PyPI's llvmlite has no SVML), which
stops LLVM from vectorising the hot loops.  ``fast_exp`` below is written as
range reduction + polynomial + exponent bit-cast, all plain arithmetic and
selects, so a loop over it compiles to AVX2 / AVX-512 code.
``fast_exp_shifted`` is the variant the row kernels use on x - shift: the
same accuracy below a cut (44 in float32), +inf above it, and fewer
instructions: one scaling step and no NaN select.  A float32 loop over it is
23 instructions per 16 elements with AVX-512 (load, store and loop counter
included; 15 of them arithmetic), against 30 for fast_exp and for the
degree-7 Cephes exp it replaced (znver5, LLVM 22).

Accuracy (measured by ``tests/test_fastmath.py`` against float64 ``np.exp``):
float32 ≤ 2 ulp (1.08 measured), float64 ≤ 2 ulp (1.00), over the whole
finite range, with exact handling of the ends: ``-inf → 0``, underflow to
(correctly rounded) subnormals and then 0, overflow → ``+inf``, ``NaN → NaN``.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# Fast-math flags for every kernel: what vectorised sums (reassoc) and FMA
# contraction need, but *not* ``nnan``/``ninf`` -- those would let LLVM delete
# the NaN and infinity handling that the semantics require -- and not ``arcp``,
# which turns p / q into p * (1/q) and makes KL(p || p) = p log(p/p) -4e-17.
FASTMATH = {"nsz", "contract", "afn", "reassoc"}

# The exp helpers themselves must not be reassociated: Cody-Waite range
# reduction (x - n*ln2_hi) - n*ln2_lo is exact only in that order.  They are
# compiled as separate functions with these flags; LLVM inlines them into the
# kernels' loops and keeps each instruction's own flags, so the loops still
# vectorise.
_EXP_FASTMATH = {"nsz", "contract", "afn"}


def _bitcast(source, target, llvm_type):
    """An intrinsic reinterpreting a ``source`` scalar's bits as ``target``
    (one LLVM bitcast: free, and vectorisable)."""

    @intrinsic
    def bitcast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_type)

        return target(source), codegen

    return bitcast


_bits_to_float32 = _bitcast(types.int32, types.float32, ir.FloatType())
_float32_to_bits = _bitcast(types.float32, types.int32, ir.IntType(32))
_bits_to_float64 = _bitcast(types.int64, types.float64, ir.DoubleType())
_float64_to_bits = _bitcast(types.float64, types.int64, ir.IntType(64))


@intrinsic
def maxnum(typingctx, a, b):
    """IEEE maxNum of two floats of one type: a NaN operand is ignored.

    LLVM's ``llvm.maxnum`` vectorises as a reduction without ``nnan``, which
    a compare-and-select does not: a row maximum runs at memory speed."""
    if a != b or not isinstance(a, types.Float):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.maxnum.f32" if ty == ir.FloatType() else "llvm.maxnum.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]), name)
        return builder.call(fn, args)

    return sig, codegen


def _clamp_intrinsic(llvm_name: str):
    @intrinsic
    def clamp(typingctx, a, b):
        if a != b or not isinstance(a, types.Float):
            return None
        sig = a(a, b)

        def codegen(context, builder, signature, args):
            ty = args[0].type
            suffix = "f32" if ty == ir.FloatType() else "f64"
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ty, [ty, ty]), f"{llvm_name}.{suffix}")
            # nnan on this one call only: a NaN operand gives poison here, and
            # every caller selects its NaN input back at the end (a select
            # does not propagate poison from the arm it does not take).  So
            # the clamp is one vmaxps/vminps instead of compare-and-blend.
            return builder.call(fn, args, fastmath=("nnan",))

        return sig, codegen

    return clamp


_clamp_below = _clamp_intrinsic("llvm.maxnum")  # max(x, lo)
_clamp_above = _clamp_intrinsic("llvm.minnum")  # min(x, hi)


# ---------------------------------------------------------------- float32 exp
# e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln(2)/2, ln 2 split in two
# parts so that x - n ln 2 is exact (Cody-Waite).  n is rounded by adding
# 1.5 * 2^23: t = x log2(e) + 1.5 * 2^23 is an integer-spaced float whose low
# mantissa bits hold n, so n = t - 1.5 * 2^23 needs no floor and no convert,
# and the shifted exp takes 2^n straight from t's bits.
#
# fast_exp clamps with maxnum/minnum (one instruction each) and selects a NaN
# x back at the end (one masked multiply with AVX-512).  The shifted exp
# clamps by compare-and-select, ``lo if x < lo else x``, which lets a NaN x
# pass unchanged (LLVM folds both clamps into one compare and one masked
# vminps): t, r and p become NaN and the final products keep it NaN (NaN *
# anything is NaN, also NaN * 0), so it needs no NaN select at all.
_F32_LOG2E = np.float32(1.44269504088896341)
_F32_LN2_HI = np.float32(0.693359375)
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_ROUND = np.float32(12582912.0)  # 1.5 * 2^23
# e^r on |r| <= ln(2)/2: Chebyshev fit of degree 6 (mpmath.chebyfit),
# 2.0e-9 relative truncation error, below a sixteenth of a float32 ulp;
# the degree-7 Cephes polynomial it replaces was more than float32 needs.
_F32_C1 = np.float32(1.0)
_F32_C2 = np.float32(0.5)
_F32_C3 = np.float32(0.16666414)
_F32_C4 = np.float32(0.04166635)
_F32_C5 = np.float32(0.00837521)
_F32_C6 = np.float32(0.0013941213)
# exp(-104) is below half the smallest subnormal: the scaling rounds it (and
# anything clamped to it, -inf included) to exactly 0.  Above 89 the result
# is > FLT_MAX: the scaling overflows to +inf by itself.
_F32_LO = np.float32(-104.0)
_F32_HI = np.float32(89.0)
_F32_ONE = np.float32(1.0)
# The shifted exp (arguments x - shift of a row) scales by 2^(n + 64) and
# then by 2^-64: one rounding, also into the subnormals, and the exponent
# field of 2^(n + 64) = (n + 64 + 127) << 23 comes from t's low bits when
# t = x log2(e) + 1.5 * 2^23 + 191.  That covers n in [-150, 63]; n = 64
# gives the bit pattern of +inf, so clamping x at 44.5 (n = 64) returns +inf
# for every x >= 63.5 ln 2 = 44.0147.
_F32_ROUND_BIASED = np.float32(12582912.0 + 191.0)
_F32_SHIFTED_HI = np.float32(44.5)
_F32_TWO_M64 = np.float32(2.0 ** -64)


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _exp_poly_f32(r):
    """e^r for |r| <= ln(2)/2 (Horner, one FMA per coefficient)."""
    p = _F32_C6
    p = p * r + _F32_C5
    p = p * r + _F32_C4
    p = p * r + _F32_C3
    p = p * r + _F32_C2
    p = p * r + _F32_C1
    return p * r + _F32_ONE


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _exp_f32(x):
    xc = _clamp_above(_clamp_below(x, _F32_LO), _F32_HI)  # NaN: restored at the end
    t = xc * _F32_LOG2E + _F32_ROUND
    n = t - _F32_ROUND
    r = xc - n * _F32_LN2_HI
    r = r - n * _F32_LN2_LO
    p = _exp_poly_f32(r)
    # Scale by 2^n in two steps, so that subnormal results are rounded once
    # and n up to 129 overflows cleanly to +inf instead of wrapping the
    # exponent: 2^n1 is added to p's exponent field (exact, p stays normal),
    # then one multiply by the normal 2^n2.  (A product p * 2^n1 * 2^n2 would
    # be reassociated by fast-math into p * (2^n1 * 2^n2), which overflows.)
    ni = _float32_to_bits(t) - _float32_to_bits(_F32_ROUND)
    n1 = ni >> np.int32(1)
    n2 = ni - n1
    p = _bits_to_float32(_float32_to_bits(p) + (n1 << np.int32(23)))
    y = p * _bits_to_float32((n2 + np.int32(127)) << np.int32(23))
    return y if x == x else x


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _exp_shifted_f32(x):
    xc = _F32_LO if x < _F32_LO else x  # NaN passes (see above): no NaN select
    xc = _F32_SHIFTED_HI if xc > _F32_SHIFTED_HI else xc
    t = xc * _F32_LOG2E + _F32_ROUND_BIASED
    n = t - _F32_ROUND_BIASED
    r = xc - n * _F32_LN2_HI
    r = r - n * _F32_LN2_LO
    scale = _bits_to_float32(_float32_to_bits(t) << np.int32(23))  # 2^(n + 64)
    return (_exp_poly_f32(r) * scale) * _F32_TWO_M64


# ---------------------------------------------------------------- float64 exp
_F64_LOG2E = 1.4426950408889634
_F64_LN2_HI = 6.93147180369123816490e-01  # high bits of ln 2 (fdlibm)
_F64_LN2_LO = 1.90821492927058770002e-10
_F64_ROUND = 6755399441055744.0  # 1.5 * 2^52
# e^r on |r| <= ln(2)/2: Chebyshev fit of degree 11 (mpmath.chebyfit),
# 3.2e-18 relative truncation error (the Taylor polynomial needs degree 13).
_F64_C2 = 0.5000000000000019
_F64_C3 = 0.1666666666666668
_F64_C4 = 0.04166666666648666
_F64_C5 = 0.00833333333331949
_F64_C6 = 0.0013888888952696516
_F64_C7 = 0.00019841269890340666
_F64_C8 = 2.4801485074105115e-05
_F64_C9 = 2.7557240604663896e-06
_F64_C10 = 2.763279054211718e-07
_F64_C11 = 2.511015364692893e-08
_F64_LO = -746.0
_F64_HI = 710.0
# Shifted: 2^(n + 64) from t's low bits, t = x log2(e) + 1.5 * 2^52 + 1087;
# n = 960 is the bit pattern of +inf: +inf for x >= 959.5 ln 2 = 665.07.
_F64_ROUND_BIASED = 6755399441055744.0 + 1087.0
_F64_SHIFTED_HI = 665.5
_F64_TWO_M64 = 2.0 ** -64


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _exp_poly_f64(r):
    """e^r for |r| <= ln(2)/2 (Horner, one FMA per coefficient)."""
    p = _F64_C11
    p = p * r + _F64_C10
    p = p * r + _F64_C9
    p = p * r + _F64_C8
    p = p * r + _F64_C7
    p = p * r + _F64_C6
    p = p * r + _F64_C5
    p = p * r + _F64_C4
    p = p * r + _F64_C3
    p = p * r + _F64_C2
    p = p * r + 1.0
    return p * r + 1.0


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _exp_f64(x):
    xc = _clamp_above(_clamp_below(x, _F64_LO), _F64_HI)  # NaN: restored at the end
    t = xc * _F64_LOG2E + _F64_ROUND
    n = t - _F64_ROUND
    r = xc - n * _F64_LN2_HI
    r = r - n * _F64_LN2_LO
    p = _exp_poly_f64(r)
    ni = _float64_to_bits(t) - _float64_to_bits(_F64_ROUND)
    n1 = ni >> np.int64(1)
    n2 = ni - n1
    p = _bits_to_float64(_float64_to_bits(p) + (n1 << np.int64(52)))
    y = p * _bits_to_float64((n2 + np.int64(1023)) << np.int64(52))
    return y if x == x else x


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _exp_shifted_f64(x):
    xc = _F64_LO if x < _F64_LO else x  # NaN passes (see the float32 notes)
    xc = _F64_SHIFTED_HI if xc > _F64_SHIFTED_HI else xc
    t = xc * _F64_LOG2E + _F64_ROUND_BIASED
    n = t - _F64_ROUND_BIASED
    r = xc - n * _F64_LN2_HI
    r = r - n * _F64_LN2_LO
    scale = _bits_to_float64(_float64_to_bits(t) << np.int64(52))  # 2^(n + 64)
    return (_exp_poly_f64(r) * scale) * _F64_TWO_M64


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def diff_minus(a, b, c):
    """(a - b) - c in this order, also when inlined into a fast-math loop:
    these instructions carry no ``reassoc``, so LLVM cannot rewrite it as
    a - (b + c), which loses everything when |b| ~ 1e30 and c ~ 1."""
    return (a - b) - c


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def sum_of_products(a, x, b, y):
    """a x + b y in this order, never reassociated (see diff_minus): the
    binary cross-entropy t log p + (1 - t) log(1 - p), where a rewrite as
    (log p - log(1 - p)) t + log(1 - p) loses every digit of a tiny loss."""
    return a * x + b * y


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def scaled_diff(w, a, b):
    """w * (a - b), never distributed into w*a - w*b (see diff_minus); sums
    of it in a fast-math loop still vectorise."""
    return w * (a - b)


def fast_exp(x):
    """e**x for a float32 or float64 scalar, vectorisable inside loops; <= 2 ulp
    over the whole range, subnormal results correctly rounded, -inf -> 0,
    overflow -> +inf, NaN -> NaN."""
    return math.exp(x)


@overload(fast_exp, inline="always", fastmath=FASTMATH)
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    if x == types.float64:
        return lambda x: _exp_f64(x)
    return None


def fast_exp_shifted(x):
    """e**x for the shifted arguments x - shift of a row kernel: as
    :func:`fast_exp` (<= 2 ulp, subnormals, -inf -> 0, NaN -> NaN) for
    x < 44.01 (float32) / 665.07 (float64), and +inf from there on, also
    where e**x would be finite.  Fewer instructions: one scaling step.

    After a max shift x <= 0, so the cut is never met; after a target-logit
    shift, a sum that meets it is infinite and the row is redone with the max
    shift (``_rows.redo_with_max``), as for any other overflow."""
    return math.exp(x) if x < (44.0 if isinstance(x, np.float32) else 665.0) else math.inf


@overload(fast_exp_shifted, inline="always", fastmath=FASTMATH)
def _fast_exp_shifted_overload(x):
    if x == types.float32:
        return lambda x: _exp_shifted_f32(x)
    if x == types.float64:
        return lambda x: _exp_shifted_f64(x)
    return None


# ---------------------------------------------------------------- float64 log
# fdlibm's e_log.c: x = 2^k (1 + f) with sqrt(2)/2 <= 1 + f < sqrt(2);
# log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f).  < 1 ulp.
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_F64_SMALLEST_NORMAL = 2.2250738585072014e-308
_TWO_54 = 18014398509481984.0
_SQRT2_MANTISSA = 0x6A09E667F3BCD  # mantissa bits of sqrt(2)


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def _log_f64(x):
    # subnormals: scale into the normal range first
    tiny = x < _F64_SMALLEST_NORMAL
    xs = x * _TWO_54 if tiny else x
    bits = _float64_to_bits(xs)
    k = (bits >> np.int64(52)) - np.int64(1023) - (np.int64(54) if tiny else np.int64(0))
    mant = bits & np.int64(0xFFFFFFFFFFFFF)
    # put the mantissa in [sqrt(2)/2, sqrt(2)): exponent 1022 above sqrt(2)'s mantissa
    big = mant > np.int64(_SQRT2_MANTISSA)
    k = k + (np.int64(1) if big else np.int64(0))
    m = _bits_to_float64(mant | ((np.int64(1022) if big else np.int64(1023)) << np.int64(52)))
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * f * f
    kf = np.float64(np.int32(k))  # via int32: AVX2 has no int64 -> float64 vector convert
    y = kf * _F64_LN2_HI - ((hfsq - (s * (hfsq + (t1 + t2)) + kf * _F64_LN2_LO)) - f)
    y = -np.inf if x == 0.0 else y
    y = x if x == np.inf else y
    return y if x >= 0.0 else np.nan  # negative or NaN


def fast_log(x):
    """Natural log of a float64 scalar (float32 is computed in float64),
    vectorisable inside loops; log(0) = -inf, log(inf) = inf, NaN for x < 0."""
    return math.log(x)


@overload(fast_log, inline="always", fastmath=FASTMATH)
def _fast_log_overload(x):
    if x == types.float64:
        return lambda x: _log_f64(x)
    if x == types.float32:
        return lambda x: np.float32(_log_f64(np.float64(x)))
    return None


@njit(fastmath=_EXP_FASTMATH, error_model="numpy")
def fast_log1p(x):
    """log(1 + x) for float64 x, vectorisable; -inf at x = -1, inf at
    x = inf, NaN below -1 and for NaN.

    u = 1 + x rounds; the first-order correction ((u - 1) - x) / u restores
    what the rounding lost (the classic log1p trick; these instructions carry
    no ``reassoc`` flag, so it is not folded away).  At u = 0 or inf the
    correction would be NaN: log(u) is the answer there."""
    u = 1.0 + x
    y = _log_f64(u) - ((u - 1.0) - x) / u
    return _log_f64(u) if (u == 0.0 or u == np.inf) else y
