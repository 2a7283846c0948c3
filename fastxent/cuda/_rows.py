"""Device helpers shared by every CUDA kernel family.

Row kernels
-----------
A row (the class axis of a C-contiguous (rows, classes) array) is handled by a
*group* of ``tpr`` consecutive threads of a block, ``tpr`` a power of two: the
whole block for long rows (one row per block), a few threads for short ones
(``blockDim.x // tpr`` rows per block).  Every group of a block takes part in
the same barriers, so rows past the end are masked, never skipped.  Blocks
loop over row groups (grid-stride), so the grid never needs more than
``_config.MAX_BLOCKS`` blocks.  Row offsets are int64.

Memory access (the kernels are bandwidth-bound)
-----------------------------------------------
:func:`vector_layout` splits a row into a *head* of 0-3 elements up to the
first 16-byte boundary, a body of 4-element *chunks* read and written as one
16-byte access each (``_numba_cuda.load4``/``store4``), and a tail of 0-3
elements.  Thread ``lane`` takes chunks lane, lane + tpr, ... (a warp reads
512 contiguous bytes per access) and the head/tail elements lane, lane +
tpr, ... of their concatenation.  The vector path needs every row touched
in the pass (logits, target, output) to sit at the same offset from a
16-byte boundary; otherwise, or with ``_config.VECTOR_ACCESS`` off, the
*scalar* path reads columns lane, lane + tpr, ... .

Both paths issue four independent loads before using any (four chunks, 64
bytes per thread, or four scalars), and a pass that writes issues all of an
iteration's loads before its stores, so each thread keeps several requests in
flight.  :func:`make_row_map` builds the loop of a pass from a per-element
function, so that every kernel's second pass shares one loop.

Online softmax (Milakov & Gimelshein 2018), branch-free, with the excess
------------------------------------------------------------------------
Each thread keeps (m, s, ones, small): the running max m, the *shift* s = m
when m is finite and 0 otherwise, and the row's sum d = sum exp(x - s) split
into ``ones``, the count of columns equal to a finite m (each exp(0) = 1),
and ``small``, the sum of the other terms, in the input's dtype.  The row's
log-sum-exp is then M + log1p(excess), excess = (ones - 1) + small: one term
dominating (logsumexp([0, -40]) = 4.2e-18, a confident cross-entropy loss)
keeps its relative precision, since 1 + small is never formed.

A batch of columns is added by taking its maximum first; if it raises m,
the old ones become ordinary terms and everything is rescaled once:
small <- (small + ones) exp(min(s_old - s_new, 0)), ones <- 0 (selects, no
branch); then each column adds 1 to ``ones`` (x == m, m finite) or
exp(x - s) to ``small``.  The shift keeps the special rows exact: a row
holding +inf gets small = inf (logsumexp +inf), a row of -inf gets ones =
small = 0 (excess -1, logsumexp -inf), and min(., 0) keeps an empty start
(m = -inf) at 0 whatever the first finite maximum.  ``fmax`` ignores NaN,
so NaN never becomes the max; it reaches ``small`` through exp(NaN - s) and
so the row's result.

Reductions
----------
:func:`group_softmax` merges the threads' states over a group the cheap
way: the group maximum M first (fmax), then each thread rescales its own
sums by one exp (threads whose max is M keep their ones), then plain
float64 sums.  With ``shuffle`` (a GPU) the max and
sums are warp shuffles, and groups larger than a warp finish with one pass
through shared memory: each warp's lane 0 stores its partial, one barrier,
and every warp reduces the (at most 32) partials with shuffles again (the
same few instructions in every warp, so no second barrier is needed to
broadcast a result).  Successive reductions use different shared-memory
slots (``SLOT_*``), so one barrier per reduction suffices: a slot is only
rewritten after another reduction's barrier.  When a group fits in a warp,
the reduction ends with ``syncwarp()``: shuffles are no memory fence, and the
in-place gradient needs every read of pass 1 (the target logit) done before
any thread of the group writes.

Without ``shuffle`` (the simulator has no warp shuffles; always correct on a
GPU too) the same reductions go through a shared-memory tree with a barrier
per step and a trailing barrier.

Shared memory is declared by the kernels (``SCRATCH`` float64 and a flag) and
passed to these helpers: numba-cuda links a device function that declares a
shared array once per call path, and the copies collide at link time.

:func:`block_total` sums two values over a whole launch without a second
kernel: each block stores its partial sums, and the last block to finish (an
atomic ticket, with a fence on both sides) adds them in block order, so the
result is deterministic; it resets the ticket, so a status array can be
reused.
"""

import math

import numpy as np
from numba import float64

from fastxent.cuda import _config
from fastxent.cuda._config import MAX_BLOCK
from fastxent.cuda._numba_cuda import (address, cast_like, cuda, exp_fast, fmax, fmin, load1,
                                       load4, store1, store4, syncwarp)

FULL_MASK = 0xFFFFFFFF

#: Shape of the float64 shared scratch array of every reducing kernel: rows
#: 0-2 for the shared-memory tree (one entry per thread); in the shuffle path
#: row 0 holds slots of 32 per-warp partials.
SCRATCH = (3, MAX_BLOCK)

# Shuffle-path slots (32 entries each, in scratch row 0).  Consecutive
# reductions must use different slots (see the module docstring).
SLOT_MAX = 0        # group_softmax: the maximum
SLOT_SUM = 1        # group_softmax: the sums (slots 1-3)
SLOT_ROW = 4        # a per-row group_sum after the second pass (4-6)
SLOT_TOTAL = 7      # block_total, every block (7-9)
SLOT_FINAL = 10     # block_total, the last block (10-12)

# Slots of the per-call int64 ``status`` array (see fastxent.cuda._arrays.status_array).
BAD = 0        # first bad row / element (atomic min; starts at the item count)
TICKET_A = 1   # last-block tickets of the kernels that reduce
TICKET_B = 2

#: Alignment (bytes) of the vector accesses.
VECTOR_BYTES = 16


# ------------------------------------------------------------ online softmax
@cuda.jit(device=True)
def shift_of(m, zero):
    """The shift of a running max: m when finite, else 0 (``zero``, in m's dtype)."""
    return m if math.isfinite(m) else zero


@cuda.jit(device=True)
def online_rescale(m, s, ones, small, batch_max, zero):
    """(m, s, ones, small) moved to max(m, batch_max) (see the module
    docstring), and whether columns equal to the new m count as ones."""
    m_new = fmax(m, batch_max)
    s_new = shift_of(m_new, zero)
    scale = exp_fast(fmin(s - s_new, zero))
    grew = m_new != m
    small = (small + ones) * scale if grew else small
    ones = zero if grew else ones
    return m_new, s_new, ones, small, math.isfinite(m_new)


@cuda.jit(device=True)
def online_term(v, m, s, counted, zero, one):
    """(add to ones, add to small) of column value v under (m, s)."""
    is_max = counted and v == m
    return (one if is_max else zero), (zero if is_max else exp_fast(v - s))


@cuda.jit(device=True)
def online_add4(v, m, s, counted, ones, small, zero, one):
    """Add the four columns v to (ones, small)."""
    o0, t0 = online_term(v[0], m, s, counted, zero, one)
    o1, t1 = online_term(v[1], m, s, counted, zero, one)
    o2, t2 = online_term(v[2], m, s, counted, zero, one)
    o3, t3 = online_term(v[3], m, s, counted, zero, one)
    return ones + ((o0 + o1) + (o2 + o3)), small + ((t0 + t1) + (t2 + t3))


@cuda.jit(device=True)
def max4(v):
    return fmax(fmax(v[0], v[1]), fmax(v[2], v[3]))


@cuda.jit(device=True)
def vector_layout(xr, other_a, other_b, tpr):
    """(vector, head, chunks) of a row pass over ``xr`` that also touches the
    rows ``other_a``/``other_b`` (same length, or None): the vector path
    reads chunks of 4 elements starting ``head`` elements in, and is taken
    when ``_config.VECTOR_ACCESS`` is on, there is at least one chunk, all
    rows share xr's offset from a 16-byte boundary, and ``tpr`` >= 2 (so
    that one batch of 4 per thread covers the <= 6 head and tail elements)."""
    n = xr.shape[0]
    itemsize = xr.itemsize
    at = address(xr)
    misaligned = at % VECTOR_BYTES
    ok = _config.VECTOR_ACCESS and tpr >= 2 and misaligned % itemsize == 0
    if other_a is not None:
        ok = ok and (address(other_a) - at) % VECTOR_BYTES == 0
    if other_b is not None:
        ok = ok and (address(other_b) - at) % VECTOR_BYTES == 0
    head = np.int64(((VECTOR_BYTES - misaligned) % VECTOR_BYTES) // itemsize)
    if head > n:
        head = n
    chunks = (n - head) // 4
    return ok and chunks > 0, head, chunks


@cuda.jit(device=True)
def leftover_column(q, head, body_end):
    """Column of the q-th head/tail element of a vector-path row."""
    return q if q < head else body_end + (q - head)


@cuda.jit(device=True)
def column_lane(j, tpr, vector, head, chunks):
    """The lane of a group that handles column ``j`` in a row pass."""
    if not vector:
        return j % tpr
    body_end = head + 4 * chunks
    if j >= head and j < body_end:
        return ((j - head) // 4) % tpr
    q = j if j < head else head + (j - body_end)
    return q % tpr


@cuda.jit(device=True)
def _load4_if(xr, p, ok, fill):
    if ok:
        return load4(xr, p)
    return (fill, fill, fill, fill)


@cuda.jit(device=True)
def _load1_if(xr, j, ok, fill):
    if ok:
        return load1(xr, j)
    return fill


@cuda.jit(device=True)
def _online_chunks(xr, p, step4, ok1, ok2, ok3, state):
    """Add four chunks at p, p + step4, ... (chunk 0 always present, chunk
    k when ok_k) to the online state: all loads first, one rescale."""
    zero = xr.dtype.type(0.0)
    one = xr.dtype.type(1.0)
    fill = xr.dtype.type(-np.inf)  # adds exp(-inf) = 0 and never becomes the max
    v0 = load4(xr, p)
    v1 = _load4_if(xr, p + step4, ok1, fill)
    v2 = _load4_if(xr, p + 2 * step4, ok2, fill)
    v3 = _load4_if(xr, p + 3 * step4, ok3, fill)
    m, s, ones, small = state
    m, s, ones, small, counted = online_rescale(
        m, s, ones, small, fmax(fmax(max4(v0), max4(v1)), fmax(max4(v2), max4(v3))), zero)
    ones, small = online_add4(v0, m, s, counted, ones, small, zero, one)
    ones, small = online_add4(v1, m, s, counted, ones, small, zero, one)
    ones, small = online_add4(v2, m, s, counted, ones, small, zero, one)
    ones, small = online_add4(v3, m, s, counted, ones, small, zero, one)
    return m, s, ones, small


@cuda.jit(device=True)
def _online_columns(xr, j0, j1, j2, j3, ok0, ok1, ok2, ok3, state):
    """Add the columns j_k (those with ok_k) to the online state."""
    zero = xr.dtype.type(0.0)
    one = xr.dtype.type(1.0)
    fill = xr.dtype.type(-np.inf)
    v = (_load1_if(xr, j0, ok0, fill), _load1_if(xr, j1, ok1, fill),
         _load1_if(xr, j2, ok2, fill), _load1_if(xr, j3, ok3, fill))
    m, s, ones, small = state
    m, s, ones, small, counted = online_rescale(m, s, ones, small, max4(v), zero)
    ones, small = online_add4(v, m, s, counted, ones, small, zero, one)
    return m, s, ones, small


@cuda.jit(device=True)
def row_online(xr, lane, tpr, vector, head, chunks):
    """This thread's online (m, s, ones, small) over its columns of ``xr``
    (see the module docstring), in the row's dtype: (-inf, 0, 0, 0) with no
    columns.  Each loop iteration loads four chunks (or four columns) before
    using any; the rest of the thread's columns is one masked batch."""
    zero = xr.dtype.type(0.0)
    state = (xr.dtype.type(-np.inf), zero, zero, zero)
    n = xr.shape[0]
    step = np.int64(tpr)
    if vector:
        c = np.int64(lane)
        while c + 3 * step < chunks:
            state = _online_chunks(xr, head + 4 * c, 4 * step, True, True, True, state)
            c += 4 * step
        if c < chunks:
            state = _online_chunks(xr, head + 4 * c, 4 * step, c + step < chunks,
                                   c + 2 * step < chunks, c + 3 * step < chunks, state)
        body_end = head + 4 * chunks
        left = head + (n - body_end)
        q = np.int64(lane)
        if q < left:
            state = _online_columns(
                xr, leftover_column(q, head, body_end), leftover_column(q + step, head, body_end),
                leftover_column(q + 2 * step, head, body_end),
                leftover_column(q + 3 * step, head, body_end),
                True, q + step < left, q + 2 * step < left, q + 3 * step < left, state)
    else:
        j = np.int64(lane)
        while j + 3 * step < n:
            state = _online_columns(xr, j, j + step, j + 2 * step, j + 3 * step,
                                    True, True, True, True, state)
            j += 4 * step
        if j < n:
            state = _online_columns(xr, j, j + step, j + 2 * step, j + 3 * step,
                                    True, j + step < n, j + 2 * step < n, j + 3 * step < n, state)
    return state


def make_row_map(element):
    """A device function ``row_map(xr, tr, outr, lane, tpr, vector, head,
    chunks, params, acc)`` that visits this thread's columns j of the row
    ``xr`` (see :func:`vector_layout`), calls ``element(x, t, j, params)`` ->
    (value, add) with x = xr[j] and t = tr[j] (t = x when ``tr`` is None),
    writes ``outr[j] = value`` unless ``outr`` is None, and returns ``acc``
    plus the float64 sum of the ``add`` terms.  Each batch of four chunks
    (or four columns) is loaded before it is stored, so ``outr`` may be
    ``xr`` (in place); the rest of a thread's columns is one masked batch."""

    @cuda.jit(device=True)
    def element4(x, t, p, params):
        o0, a0 = element(x[0], t[0], p, params)
        o1, a1 = element(x[1], t[1], p + 1, params)
        o2, a2 = element(x[2], t[2], p + 2, params)
        o3, a3 = element(x[3], t[3], p + 3, params)
        return (o0, o1, o2, o3), (a0 + a1) + (a2 + a3)

    @cuda.jit(device=True)
    def load4_t(tr, p, ok, fallback):
        if tr is None:
            return fallback
        return _load4_if(tr, p, ok, tr.dtype.type(0.0))

    @cuda.jit(device=True)
    def load1_t(tr, j, ok, fallback):
        if tr is None:
            return fallback
        return _load1_if(tr, j, ok, tr.dtype.type(0.0))

    @cuda.jit(device=True)
    def store4_if(outr, p, ok, values):
        if outr is not None and ok:
            store4(outr, p, values)

    @cuda.jit(device=True)
    def store1_if(outr, j, ok, value):
        if outr is not None and ok:
            store1(outr, j, value)

    @cuda.jit(device=True)
    def chunks4(xr, tr, outr, p, step4, ok1, ok2, ok3, params):
        """Four chunks at p, p + step4, ... (chunk k present when ok_k)."""
        fill = xr.dtype.type(0.0)
        p1 = p + step4
        p2 = p + 2 * step4
        p3 = p + 3 * step4
        x0 = load4(xr, p)
        x1 = _load4_if(xr, p1, ok1, fill)
        x2 = _load4_if(xr, p2, ok2, fill)
        x3 = _load4_if(xr, p3, ok3, fill)
        t0 = load4_t(tr, p, True, x0)
        t1 = load4_t(tr, p1, ok1, x1)
        t2 = load4_t(tr, p2, ok2, x2)
        t3 = load4_t(tr, p3, ok3, x3)
        # an absent chunk is computed at chunk 0's columns (never out of
        # bounds: element may read per-column arrays) and neither stored nor summed
        o0, a0 = element4(x0, t0, p, params)
        o1, a1 = element4(x1, t1, p1 if ok1 else p, params)
        o2, a2 = element4(x2, t2, p2 if ok2 else p, params)
        o3, a3 = element4(x3, t3, p3 if ok3 else p, params)
        store4_if(outr, p, True, o0)
        store4_if(outr, p1, ok1, o1)
        store4_if(outr, p2, ok2, o2)
        store4_if(outr, p3, ok3, o3)
        return (a0 + (a1 if ok1 else 0.0)) + ((a2 if ok2 else 0.0) + (a3 if ok3 else 0.0))

    @cuda.jit(device=True)
    def columns4(xr, tr, outr, j0, j1, j2, j3, ok0, ok1, ok2, ok3, params):
        """The columns j_k (those with ok_k; ok0 is always true)."""
        fill = xr.dtype.type(0.0)
        x0 = _load1_if(xr, j0, ok0, fill)
        x1 = _load1_if(xr, j1, ok1, fill)
        x2 = _load1_if(xr, j2, ok2, fill)
        x3 = _load1_if(xr, j3, ok3, fill)
        t0 = load1_t(tr, j0, ok0, x0)
        t1 = load1_t(tr, j1, ok1, x1)
        t2 = load1_t(tr, j2, ok2, x2)
        t3 = load1_t(tr, j3, ok3, x3)
        # an absent column is computed at column j0 (always present)
        o0, a0 = element(x0, t0, j0, params)
        o1, a1 = element(x1, t1, j1 if ok1 else j0, params)
        o2, a2 = element(x2, t2, j2 if ok2 else j0, params)
        o3, a3 = element(x3, t3, j3 if ok3 else j0, params)
        store1_if(outr, j0, ok0, o0)
        store1_if(outr, j1, ok1, o1)
        store1_if(outr, j2, ok2, o2)
        store1_if(outr, j3, ok3, o3)
        return (((a0 if ok0 else 0.0) + (a1 if ok1 else 0.0))
                + ((a2 if ok2 else 0.0) + (a3 if ok3 else 0.0)))

    @cuda.jit(device=True)
    def row_map(xr, tr, outr, lane, tpr, vector, head, chunks, params, acc):
        n = xr.shape[0]
        step = np.int64(tpr)
        if vector:
            c = np.int64(lane)
            while c + 3 * step < chunks:
                acc += chunks4(xr, tr, outr, head + 4 * c, 4 * step, True, True, True, params)
                c += 4 * step
            if c < chunks:
                acc += chunks4(xr, tr, outr, head + 4 * c, 4 * step, c + step < chunks,
                               c + 2 * step < chunks, c + 3 * step < chunks, params)
            body_end = head + 4 * chunks
            left = head + (n - body_end)
            q = np.int64(lane)
            if q < left:
                acc += columns4(xr, tr, outr, leftover_column(q, head, body_end),
                                leftover_column(q + step, head, body_end),
                                leftover_column(q + 2 * step, head, body_end),
                                leftover_column(q + 3 * step, head, body_end),
                                True, q + step < left, q + 2 * step < left, q + 3 * step < left,
                                params)
        else:
            j = np.int64(lane)
            while j + 3 * step < n:
                acc += columns4(xr, tr, outr, j, j + step, j + 2 * step, j + 3 * step,
                                True, True, True, True, params)
                j += 4 * step
            if j < n:
                acc += columns4(xr, tr, outr, j, j + step, j + 2 * step, j + 3 * step,
                                True, j + step < n, j + 2 * step < n, j + 3 * step < n, params)
        return acc

    return row_map


# ---------------------------------------------------------------- reductions
@cuda.jit(device=True)
def _warp_max(v, width):
    """Xor-shuffle max over aligned groups of ``width`` (<= 32) lanes."""
    offset = width // 2
    while offset > 0:
        v = fmax(v, cuda.shfl_xor_sync(FULL_MASK, v, offset))
        offset //= 2
    return v


@cuda.jit(device=True)
def _warp_sum(a, b, c, width):
    """Xor-shuffle sums of a, b and c over aligned groups of ``width`` (<= 32) lanes."""
    offset = width // 2
    while offset > 0:
        a += cuda.shfl_xor_sync(FULL_MASK, a, offset)
        b += cuda.shfl_xor_sync(FULL_MASK, b, offset)
        c += cuda.shfl_xor_sync(FULL_MASK, c, offset)
        offset //= 2
    return a, b, c


@cuda.jit(device=True)
def _across_warps(tpr):
    """(warps per group, this warp's group's first warp, lane in the warp)."""
    t = cuda.threadIdx.x
    warps = tpr // 32
    return warps, (t // tpr) * warps, t % 32


@cuda.jit(device=True)
def _shuffle_max(v, tpr, scratch):
    v = _warp_max(v, min(tpr, 32))
    if tpr <= 32:
        return v
    warps, first, lane = _across_warps(tpr)
    if lane == 0:
        scratch[0, 32 * SLOT_MAX + cuda.threadIdx.x // 32] = v
    cuda.syncthreads()
    return _warp_max(scratch[0, 32 * SLOT_MAX + first + lane % warps], warps)


@cuda.jit(device=True)
def _shuffle_sum(a, b, c, tpr, scratch, slot):
    a, b, c = _warp_sum(a, b, c, min(tpr, 32))
    if tpr <= 32:
        syncwarp()  # every lane's earlier reads done before any lane writes
        return a, b, c
    warps, first, lane = _across_warps(tpr)
    if lane == 0:
        warp = cuda.threadIdx.x // 32
        scratch[0, 32 * slot + warp] = a
        scratch[0, 32 * (slot + 1) + warp] = b
        scratch[0, 32 * (slot + 2) + warp] = c
    cuda.syncthreads()
    k = first + lane % warps
    return _warp_sum(scratch[0, 32 * slot + k], scratch[0, 32 * (slot + 1) + k],
                     scratch[0, 32 * (slot + 2) + k], warps)


@cuda.jit(device=True)
def _shared_max(v, tpr, scratch):
    """Tree max through shared memory over groups of ``tpr`` threads."""
    t = cuda.threadIdx.x
    lane = t % tpr
    scratch[0, t] = v
    cuda.syncthreads()
    step = tpr // 2
    while step > 0:
        if lane < step:
            v = fmax(v, scratch[0, t + step])
            scratch[0, t] = v
        cuda.syncthreads()
        step //= 2
    v = scratch[0, t - lane]
    cuda.syncthreads()  # the scratch may be reused right after
    return v


@cuda.jit(device=True)
def _shared_sum(a, b, c, tpr, scratch):
    """Tree sums through shared memory over groups of ``tpr`` threads."""
    t = cuda.threadIdx.x
    lane = t % tpr
    scratch[0, t] = a
    scratch[1, t] = b
    scratch[2, t] = c
    cuda.syncthreads()
    step = tpr // 2
    while step > 0:
        if lane < step:
            a += scratch[0, t + step]
            b += scratch[1, t + step]
            c += scratch[2, t + step]
            scratch[0, t] = a
            scratch[1, t] = b
            scratch[2, t] = c
        cuda.syncthreads()
        step //= 2
    first = t - lane
    a = scratch[0, first]
    b = scratch[1, first]
    c = scratch[2, first]
    cuda.syncthreads()  # the scratch may be reused right after
    return a, b, c


@cuda.jit(device=True)
def group_max(v, tpr, shuffle, scratch):
    """The float64 maximum (NaN-ignoring) of v over each group of ``tpr`` threads."""
    v = float64(v)
    tpr = np.int64(tpr)
    if shuffle:
        return _shuffle_max(v, tpr, scratch)
    return _shared_max(v, tpr, scratch)


@cuda.jit(device=True)
def group_sum3(a, b, c, tpr, shuffle, scratch, slot):
    """(sum of a, of b, of c) over each group of ``tpr`` threads (float64).
    Every thread of the block must call it (it may hold barriers);
    ``slot`` is the shuffle path's shared-memory slot (``SLOT_*``)."""
    a = float64(a)
    b = float64(b)
    c = float64(c)
    tpr = np.int64(tpr)
    if shuffle:
        return _shuffle_sum(a, b, c, tpr, scratch, slot)
    return _shared_sum(a, b, c, tpr, scratch)


@cuda.jit(device=True)
def group_sum(a, b, tpr, shuffle, scratch, slot):
    """(sum of a, sum of b) over each group of ``tpr`` threads (float64)."""
    sa, sb, _ = group_sum3(a, b, 0.0, tpr, shuffle, scratch, slot)
    return sa, sb


@cuda.jit(device=True)
def group_softmax(state, e, tpr, shuffle, scratch):
    """Merge the threads' online states (:func:`row_online`) over each group
    of ``tpr`` threads and sum e: returns (M, excess, D, E) in float64, D =
    sum exp(x - shift(M)) over the group's columns and excess = D - 1 kept
    without cancellation (log1p(excess) is the log of the sum).  One exp per
    thread (its own rescale)."""
    m, s, ones, small = state
    zero = s - s
    big = group_max(m, tpr, shuffle, scratch)
    shift = shift_of(cast_like(big, zero), zero)
    scale = exp_fast(fmin(s - shift, zero))
    at_max = float64(m) == big
    total_ones, total_small, total_e = group_sum3(
        ones if at_max else zero, (small + (zero if at_max else ones)) * scale, e,
        tpr, shuffle, scratch, SLOT_SUM)
    return big, (total_ones - 1.0) + total_small, total_ones + total_small, total_e


@cuda.jit(device=True)
def block_total(a, b, partials, status, ticket, shuffle, scratch, flag):
    """Sum a and b over every thread of the launch.

    Returns (last, total_a, total_b): ``last`` is true in the block that
    finished last, whose threads all get the totals (the other blocks get
    zeros).  ``partials`` holds 2 float64 per block; ``status[ticket]`` must
    be 0 at launch and is 0 again afterwards; ``flag`` is a shared int32[1].
    Every thread of every block must call it."""
    block = np.int64(cuda.blockDim.x)
    sa, sb = group_sum(a, b, block, shuffle, scratch, SLOT_TOTAL)
    t = cuda.threadIdx.x
    bid = cuda.blockIdx.x
    if t == 0:
        partials[2 * bid] = sa
        partials[2 * bid + 1] = sb
        cuda.threadfence()  # release: the partials before the ticket
        done = cuda.atomic.add(status, ticket, 1)
        flag[0] = 1 if done == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    last = flag[0] == 1
    ta = 0.0
    tb = 0.0
    if last:
        cuda.threadfence()  # acquire: every other block's partials after its ticket
        for k in range(t, cuda.gridDim.x, block):
            # atomic reads come from L2: other blocks' stores are visible
            ta += cuda.atomic.add(partials, 2 * k, 0.0)
            tb += cuda.atomic.add(partials, 2 * k + 1, 0.0)
        ta, tb = group_sum(ta, tb, block, shuffle, scratch, SLOT_FINAL)
        if t == 0:
            status[ticket] = 0  # ready for the next launch
    return last, ta, tb


# ----------------------------------------------------------------- geometry
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
