"""Device helpers shared by every CUDA kernel family.

Row kernels
-----------
A row (the class axis of a C-contiguous (rows, classes) array) is handled by a
*group* of ``tpr`` consecutive threads of a block, ``tpr`` a power of two: the
whole block for long rows (one row per block), a few threads for short ones
(``blockDim.x // tpr`` rows per block).  Thread ``lane`` of a group reads the
columns lane, lane + tpr, ...; every group of a block takes part in the same
barriers, so rows past the end are masked, never skipped.  Blocks loop over
row groups (grid-stride), so the grid never needs more than
``_config.MAX_BLOCKS`` blocks.  Offsets are computed in int64.

Online softmax (Milakov & Gimelshein 2018): each thread keeps a running
(m, s) over its columns: the max m and the *excess* s = d - 1, the sum
d = sum exp(x - m) less the max's own term exp(m - m) = 1, so that log d =
log1p(s) keeps its relative precision when one term dominates
(logsumexp([0, -40]) = 4.2e-18, a confident cross-entropy loss).  A new max
x turns the old max's 1 into an ordinary term: s <- (s + 1) e^(m - x).  The
group merges (m_a, s_a) (+) (m_b, s_b) with M = max(m_a, m_b):
s_a + s_b + 1 for m_a == m_b (one of the two 1s joins the excess),
s_a + (s_b + 1) e^(m_b - m_a) for m_a > m_b.  While m is -inf (no finite
term yet) s is a plain sum (d itself): -inf (+) -inf adds s_a + s_b, which is
also how :func:`group_sum` sums with m = -inf.  NaN never becomes the max; it
reaches s through exp(NaN - m) and so the row's result.  The per-thread sums
are in the input's dtype (float32 adds over at most C / tpr terms); the
merges are in float64.

Reductions
----------
Shared memory is declared by the kernels (``SCRATCH`` float64 and a flag) and
passed to these helpers: numba-cuda links a device function that declares a
shared array once per call path, and the copies collide at link time.

:func:`group_reduce` merges (m, d) and sums a third value e over a group,
through shared memory (always available, and the only way on the simulator)
or, when ``shuffle`` is true, with warp shuffles (and shared memory across
the warps of a group larger than a warp).  Plain sums use it with m = -inf.

:func:`block_total` sums two values over a whole launch without a second
kernel: each block stores its partial sums, and the last block to finish
(an atomic ticket) adds them in block order, so the result is deterministic.
"""

import numpy as np
from numba import float64

from fastxent.cuda._config import MAX_BLOCK
from fastxent.cuda._numba_cuda import cuda, exp

FULL_MASK = 0xFFFFFFFF

#: Shape of the float64 shared scratch array of every reducing kernel.
SCRATCH = (3, MAX_BLOCK)

# Slots of the per-call int64 ``status`` array (see fastxent.cuda._arrays.status_array).
BAD = 0        # first bad row / element (atomic min; starts at the item count)
TICKET_A = 1   # last-block tickets of the kernels that reduce
TICKET_B = 2


@cuda.jit(device=True)
def rescale(m, big):
    """e^(m - big), exactly 1 when m == big (also for infinities)."""
    if m == big:
        return 1.0
    return exp(m - big)


@cuda.jit(device=True)
def merge(m_a, s_a, m_b, s_b):
    """(m_a, s_a) (+) (m_b, s_b) of running (max, excess) in float64 (see
    the module docstring)."""
    if m_a == m_b:
        if m_a == -np.inf:
            return m_a, s_a + s_b
        return m_a, s_a + s_b + 1.0
    if m_a > m_b:
        return m_a, s_a + (s_b + 1.0) * rescale(m_b, m_a)
    return m_b, s_b + (s_a + 1.0) * rescale(m_a, m_b)


@cuda.jit(device=True)
def online_add(m, s, x, one):
    """Add exp(x) to a running (max m, excess s) in x's dtype (see the
    module docstring); ``one`` is 1 in that dtype."""
    if x > m:
        s = (s + one) * exp(m - x)
        m = x
    elif x == m:
        s += one
    else:
        s += exp(x - m)  # NaN stays NaN; -inf adds 0
    return m, s


@cuda.jit(device=True)
def row_max_sum(row, lane, tpr):
    """This thread's online (max, excess) over columns lane, lane + tpr, ...
    of ``row``, computed in the row's dtype, returned as float64 (-inf, 0
    with no columns).  The row's sum of exp(x - max) is 1 + the merged
    excess; its log is log1p of it."""
    m = row.dtype.type(-np.inf)
    d = row.dtype.type(0.0)
    one = row.dtype.type(1.0)
    for j in range(lane, row.shape[0], tpr):
        m, d = online_add(m, d, row[j], one)
    return float64(m), float64(d)


@cuda.jit(device=True)
def _warp_reduce(m, d, e, width):
    """Xor-shuffle merge over aligned groups of ``width`` (<= 32) lanes."""
    offset = width // 2
    while offset > 0:
        m2 = cuda.shfl_xor_sync(FULL_MASK, m, offset)
        d2 = cuda.shfl_xor_sync(FULL_MASK, d, offset)
        e2 = cuda.shfl_xor_sync(FULL_MASK, e, offset)
        m, d = merge(m, d, m2, d2)
        e += e2
        offset //= 2
    return m, d, e


@cuda.jit(device=True)
def _shared_reduce(m, d, e, tpr, scratch):
    """Tree merge through shared memory over groups of ``tpr`` threads."""
    t = cuda.threadIdx.x
    lane = t % tpr
    scratch[0, t] = m
    scratch[1, t] = d
    scratch[2, t] = e
    cuda.syncthreads()
    step = tpr // 2
    while step > 0:
        if lane < step:
            m, d = merge(m, d, scratch[0, t + step], scratch[1, t + step])
            e += scratch[2, t + step]
            scratch[0, t] = m
            scratch[1, t] = d
            scratch[2, t] = e
        cuda.syncthreads()
        step //= 2
    first = t - lane
    m = scratch[0, first]
    d = scratch[1, first]
    e = scratch[2, first]
    cuda.syncthreads()  # the scratch may be reused right after
    return m, d, e


@cuda.jit(device=True)
def _shuffle_reduce(m, d, e, tpr, scratch):
    """Warp shuffles, then shared memory across the warps of a group."""
    m, d, e = _warp_reduce(m, d, e, min(tpr, 32))
    if tpr <= 32:
        return m, d, e
    t = cuda.threadIdx.x
    warp = t // 32
    if t % 32 == 0:
        scratch[0, warp] = m
        scratch[1, warp] = d
        scratch[2, warp] = e
    cuda.syncthreads()
    warps = tpr // 32
    first = (t // tpr) * warps
    m = scratch[0, first]
    d = scratch[1, first]
    e = scratch[2, first]
    for k in range(first + 1, first + warps):
        m, d = merge(m, d, scratch[0, k], scratch[1, k])
        e += scratch[2, k]
    cuda.syncthreads()
    return m, d, e


@cuda.jit(device=True)
def group_reduce(m, d, e, tpr, shuffle, scratch):
    """Merge (m, s) and sum e over each group of ``tpr`` threads; every
    thread of the group gets the float64 result.  Every thread of the block
    must call it (it holds barriers).  ``scratch`` is the kernel's
    :func:`shared_scratch`."""
    m = float64(m)
    d = float64(d)
    e = float64(e)
    tpr = np.int64(tpr)
    if shuffle:
        return _shuffle_reduce(m, d, e, tpr, scratch)
    return _shared_reduce(m, d, e, tpr, scratch)


@cuda.jit(device=True)
def group_sum(a, b, tpr, shuffle, scratch):
    """(sum of a, sum of b) over each group of ``tpr`` threads (float64)."""
    _, sa, sb = group_reduce(-np.inf, a, b, tpr, shuffle, scratch)
    return sa, sb


@cuda.jit(device=True)
def block_total(a, b, partials, status, ticket, shuffle, scratch, flag):
    """Sum a and b over every thread of the launch.

    Returns (last, total_a, total_b): ``last`` is true in the block that
    finished last, whose threads all get the totals (the other blocks get
    zeros).  ``partials`` holds 2 float64 per block; ``status[ticket]`` must
    be 0 at launch; ``flag`` is a shared int32[1].  Every thread of every
    block must call it."""
    block = np.int64(cuda.blockDim.x)
    sa, sb = group_sum(a, b, block, shuffle, scratch)
    t = cuda.threadIdx.x
    bid = cuda.blockIdx.x
    if t == 0:
        partials[2 * bid] = sa
        partials[2 * bid + 1] = sb
        cuda.threadfence()
        done = cuda.atomic.add(status, ticket, 1)
        flag[0] = 1 if done == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    last = flag[0] == 1
    ta = 0.0
    tb = 0.0
    if last:
        for k in range(t, cuda.gridDim.x, block):
            # atomic reads come from L2: other blocks' stores are visible
            ta += cuda.atomic.add(partials, 2 * k, 0.0)
            tb += cuda.atomic.add(partials, 2 * k + 1, 0.0)
        ta, tb = group_sum(ta, tb, block, shuffle, scratch)
    return last, ta, tb


@cuda.jit(device=True)
def row_group(tpr):
    """(lane, group index in the block, groups per block) of this thread."""
    t = cuda.threadIdx.x
    return t % tpr, t // tpr, cuda.blockDim.x // tpr


@cuda.jit(device=True)
def first_row(group, groups):
    """(first row of this thread's group, row step between loop iterations)."""
    return np.int64(cuda.blockIdx.x) * groups + group, np.int64(cuda.gridDim.x) * groups


@cuda.jit(device=True)
def loop_rows(n_rows, groups):
    """Row-group iterations of every block (the same count in all its threads)."""
    per_launch = np.int64(cuda.gridDim.x) * groups
    return (n_rows + per_launch - 1) // per_launch


@cuda.jit(device=True)
def grid_start():
    """(this thread's first flat index, the grid stride), in int64."""
    return (np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x,
            np.int64(cuda.gridDim.x) * cuda.blockDim.x)
