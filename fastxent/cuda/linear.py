"""CUDA kernels of the fused linear cross-entropy (``fastxent._linear``): a
tiled GEMM for the three products of a chunk, and the small kernels that
finish the chunk loop on the device.

The GEMM
--------
``out = op(a) @ op(b) (+ bias) (+ out)``, op(a) = a or aᵀ, op(b) = b or bᵀ,
for the three products of a chunk of rows (x: (rows, D), W: (C, D), G:
(rows, C), the chunk's logits gradient):

=====================  ===========  ===========  ====================
product                a, op(a)     b, op(b)     kernel
=====================  ===========  ===========  ====================
logits = x Wᵀ + bias   x            W, Wᵀ        ``GEMM[False, True]``
dx = G W               G            W            ``GEMM[False, False]``
dW += Gᵀ x             G, Gᵀ        x            ``GEMM[True, False]``
=====================  ===========  ===========  ====================

The transposes are layout parameters, compiled in (one source,
:func:`_gemm_kernel`, specialised per (transpose_a, transpose_b)): the
operands are read through their own strides, never copied.  Any strides
work; the tile loads are coalesced along the operand's contiguous axis when
it is row-major (C-contiguous) as stored, which all three products above
are.

Each block computes a TILE x TILE tile of ``out``: per step of TILE_K along
the inner dimension, its threads load op(a)'s TILE x TILE_K and op(b)'s
TILE_K x TILE panels into shared memory (both stored k-major, so the inner
loop reads rows of them), then every thread accumulates a THREAD x THREAD
register tile over the panel.  A thread's tile is strided (rows ty + m·TY,
columns tx + n·TX; TY = TX = TILE / THREAD threads per side), so a warp
reads consecutive shared-memory words (no bank conflicts) and writes
consecutive columns of ``out``; the panels are flat, so each of the inner
loop's shared loads is one base register plus a constant (sm_90, ptxas:
91 instructions per 64 FFMA in float32, no spills at 128 registers).  The
accumulation is in the operands' dtype
(float32 or float64), as BLAS does; ``bias`` (C,) and the ``accumulate``
term are added in the epilogue.  The tile sizes are in ``_config`` (small on
the simulator).

Split inner dimension: dx = G W has a small output (rows x D: 8 blocks at
512 x 256) and a long inner dimension (C), which would leave most of a GPU
idle.  When the output has fewer tiles than ``_config.GEMM_MIN_BLOCKS``, the
inner dimension is cut into slices (grid z), each block writes its slice's
partial product into a (slices, M, N) workspace, and :func:`sum_slices`
adds the slices in order (deterministic, no atomics) and applies the bias
and the accumulation.
"""

import numpy as np
from numba import float64, int32

from fastxent.cuda._config import (GEMM_MAX_REGISTERS, GEMM_THREAD, GEMM_TILE, GEMM_TILE_K,
                                   MAX_REGISTERS)
from fastxent.cuda._numba_cuda import cuda, kernel, load1, store1
from fastxent.cuda._rows import SCRATCH, TICKET_A, block_total, grid_start

#: Threads per side of a block of the GEMM (a block has GEMM_SIDE² threads).
GEMM_SIDE = GEMM_TILE // GEMM_THREAD
#: Threads per block of the GEMM.
GEMM_THREADS = GEMM_SIDE * GEMM_SIDE
#: Elements of a shared-memory panel.
GEMM_PANEL = GEMM_TILE_K * GEMM_TILE
#: Elements of each panel that one thread loads per step.
GEMM_LOADS = GEMM_TILE * GEMM_TILE_K // GEMM_THREADS
assert GEMM_LOADS * GEMM_THREADS == GEMM_TILE * GEMM_TILE_K
assert GEMM_THREADS % GEMM_TILE == 0 and GEMM_THREADS % GEMM_TILE_K == 0


@cuda.jit(device=True)
def _load_share(t, along_k):
    """(outer, inner, step) of thread t's share of a panel load: its first
    element at (outer, inner) of the operand's tile as stored, further ones
    ``step`` further along outer; consecutive threads take consecutive
    elements of the stored rows (coalesced).  ``along_k``: the operand is
    stored (rows or columns of the output, depth), its rows run along k."""
    if along_k:
        return t // GEMM_TILE_K, t % GEMM_TILE_K, GEMM_THREADS // GEMM_TILE_K
    return t // GEMM_TILE, t % GEMM_TILE, GEMM_THREADS // GEMM_TILE


@cuda.jit(device=True)
def _load_panel(src, along_k, panel, outer, inner, first, length, k0, k_end, zero):
    """One element of a panel: panel[kk * GEMM_TILE + mm] = op[first + mm,
    k0 + kk] (zero outside [0, length) x [k0, k_end)), with op = src if
    ``along_k`` else srcᵀ and (outer, inner) its position in the stored tile
    (a compile-time ``along_k``: the branches fold after inlining)."""
    if along_k:
        mm, kk = outer, inner
    else:
        kk, mm = outer, inner
    m, k = first + mm, k0 + kk
    v = zero
    if m < length and k < k_end:
        v = src[m, k] if along_k else src[k, m]
    store1(panel, kk * GEMM_TILE + mm, v)


def _gemm_kernel(transpose_a: bool, transpose_b: bool, max_registers: int):
    """The GEMM kernel for one layout: ``out[z, i, j] = sum_k A[i, k] B[k, j]
    (+ bias[j]) (+ out[z, i, j] if accumulate)`` over the z-th slice of the
    inner dimension, k in [z * depth_per_slice, (z + 1) * depth_per_slice),
    with A = aᵀ if transpose_a else a, B = bᵀ if transpose_b else b.
    ``bias`` may be None (pruned at compile time).  Launch: grid (column
    tiles, row tiles, slices) as ``_config.gemm_launch`` gives it,
    GEMM_THREADS threads."""

    @kernel(max_registers)
    def gemm(a, b, bias, out, accumulate, depth_per_slice):
        # [k][i] and [k][j], flat: the inner loop's loads are then one base
        # register plus a constant offset each (load1: no index wraparound)
        panel_a = cuda.shared.array(GEMM_PANEL, a.dtype)
        panel_b = cuda.shared.array(GEMM_PANEL, a.dtype)
        acc = cuda.local.array((GEMM_THREAD, GEMM_THREAD), a.dtype)
        ra = cuda.local.array(GEMM_THREAD, a.dtype)
        rb = cuda.local.array(GEMM_THREAD, a.dtype)
        n_rows, n_cols = out.shape[1], out.shape[2]
        depth = a.shape[0] if transpose_a else a.shape[1]
        z = cuda.blockIdx.z
        k_begin = np.int64(z) * depth_per_slice
        k_end = min(depth, k_begin + depth_per_slice)
        t = cuda.threadIdx.x
        tx = t % GEMM_SIDE
        ty = t // GEMM_SIDE
        row0 = np.int64(cuda.blockIdx.y) * GEMM_TILE
        col0 = np.int64(cuda.blockIdx.x) * GEMM_TILE
        zero = a.dtype.type(0.0)
        # This thread's share of the panel loads (see _load_share)
        a_outer, a_inner, a_step = _load_share(t, not transpose_a)
        b_outer, b_inner, b_step = _load_share(t, transpose_b)
        for m in range(GEMM_THREAD):
            for n in range(GEMM_THREAD):
                acc[m, n] = zero
        for k0 in range(k_begin, k_end, GEMM_TILE_K):
            for it in range(GEMM_LOADS):
                _load_panel(a, not transpose_a, panel_a, a_outer + it * a_step, a_inner, row0,
                            n_rows, k0, k_end, zero)
                _load_panel(b, transpose_b, panel_b, b_outer + it * b_step, b_inner, col0,
                            n_cols, k0, k_end, zero)
            cuda.syncthreads()
            for kk in range(GEMM_TILE_K):
                row_a, row_b = kk * GEMM_TILE + ty, kk * GEMM_TILE + tx
                for m in range(GEMM_THREAD):
                    ra[m] = load1(panel_a, row_a + m * GEMM_SIDE)
                for n in range(GEMM_THREAD):
                    rb[n] = load1(panel_b, row_b + n * GEMM_SIDE)
                for m in range(GEMM_THREAD):
                    for n in range(GEMM_THREAD):
                        acc[m, n] += ra[m] * rb[n]
            cuda.syncthreads()  # the panels are overwritten next step
        for m in range(GEMM_THREAD):
            i = row0 + ty + m * GEMM_SIDE
            if i < n_rows:
                for n in range(GEMM_THREAD):
                    j = col0 + tx + n * GEMM_SIDE
                    if j < n_cols:
                        v = acc[m, n]
                        if bias is not None:
                            v += bias[j]
                        if accumulate:
                            v += out[z, i, j]
                        out[z, i, j] = v

    return gemm


#: The GEMM kernels, by (transpose_a, transpose_b, itemsize of the operands):
#: one dispatcher per register limit (``_config.GEMM_MAX_REGISTERS``).
GEMM = {(ta, tb, size): _gemm_kernel(ta, tb, limit) for ta in (False, True)
        for tb in (False, True) for size, limit in GEMM_MAX_REGISTERS.items()}


@kernel(MAX_REGISTERS)
def sum_slices(slices, bias, out, accumulate):
    """out[i, j] = sum_z slices[z, i, j] (in slice order: deterministic)
    (+ bias[j]) (+ out[i, j] if accumulate): the end of a split GEMM."""
    start, step = grid_start()
    n_slices, n_cols = slices.shape[0], out.shape[1]
    for k in range(start, out.shape[0] * n_cols, step):
        i, j = k // n_cols, k % n_cols
        v = slices[0, i, j]
        for z in range(1, n_slices):
            v += slices[z, i, j]
        if bias is not None:
            v += bias[j]
        if accumulate:
            v += out[i, j]
        out[i, j] = v


# ------------------------------------------------------ the chunk loop's rest
@kernel(MAX_REGISTERS)
def scale_into(out, a, factor):
    """out = factor * a, for 2-D arrays of one shape (any strides)."""
    start, step = grid_start()
    n_cols = out.shape[1]
    for k in range(start, out.shape[0] * n_cols, step):
        i, j = k // n_cols, k % n_cols
        out[i, j] = a[i, j] * factor


@kernel(MAX_REGISTERS)
def add_column_sums(acc, g):
    """acc[j] += sum_i g[i, j] (acc float64; one thread per column, so the
    rows are read coalesced and each column is summed in row order)."""
    start, step = grid_start()
    for j in range(start, g.shape[1], step):
        total = 0.0
        for i in range(g.shape[0]):
            total += float64(g[i, j])
        acc[j] += total


@cuda.jit
def add_loss(total, value):
    """total[0] += value[0] (one thread: a chunk's reduced loss into the
    call's float64 total, in chunk order, as the host loop adds them)."""
    if cuda.threadIdx.x == 0 and cuda.blockIdx.x == 0:
        total[0] += float64(value[0])


@kernel(MAX_REGISTERS)
def finish_loss(total, mean, denominator, half_l2, w, partials, status, result, shuffle):
    """result[0] = total[0] (divided by ``denominator`` when ``mean``: NaN for
    0, as ``fastxent._checks.mean_of``) + half_l2 * sum(w**2) (summed in
    float64 over the launch; ``w`` may be None: no penalty)."""
    scratch = cuda.shared.array(SCRATCH, float64)
    flag = cuda.shared.array(1, int32)
    squares = 0.0
    if w is not None:
        start, step = grid_start()
        n_cols = w.shape[1]
        for k in range(start, w.shape[0] * n_cols, step):
            v = float64(w[k // n_cols, k % n_cols])
            squares += v * v
    last, sum_squares, _ = block_total(squares, 0.0, partials, status, TICKET_A, shuffle, scratch,
                                       flag)
    if last and cuda.threadIdx.x == 0:
        value = total[0]
        if mean:
            value = value / denominator if denominator != 0.0 else np.nan
        if w is not None:
            value += half_l2 * sum_squares
        result[0] = value
