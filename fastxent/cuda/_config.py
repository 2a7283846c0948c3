"""Launch parameters of the CUDA kernels, in one place.

Plain module attributes, read at every launch (not compiled into the
kernels): tests and the benchmark may change them.

Row kernels give each row a *group* of ``threads_per_row`` threads (a power of
two): the whole block (up to ``MAX_THREADS_PER_ROW``) for long rows, a few
threads for short ones, so that a block holds ``block // threads_per_row``
rows and C = 10 is not one row per block.
"""

from fastxent.cuda._numba_cuda import SIMULATED

#: Threads per block of the row kernels when rows are short (several rows
#: per block).  The simulator runs one Python thread per CUDA thread: keep
#: its blocks small.
BLOCK = 32 if SIMULATED else 256

#: Largest group of threads on one row (one row per block at this size).
MAX_THREADS_PER_ROW = 32 if SIMULATED else 512

#: Register limit of the row kernels (compiled in: ptxas -maxrregcount).
#: 64 lets a block of MAX_BLOCK = 1024 threads launch.
MAX_REGISTERS = 64

#: A row gets about C / ELEMENTS_PER_THREAD threads (rounded up to a power of
#: two, within [1, MAX_THREADS_PER_ROW]).
ELEMENTS_PER_THREAD = 4 if SIMULATED else 8

#: Threads per block of the elementwise kernels (BCE, casts, gathers).
ELEMENTWISE_BLOCK = 32 if SIMULATED else 256

#: At most this many blocks per launch; kernels loop over the rest (grid-stride).
MAX_BLOCKS = 8 if SIMULATED else 65536

#: Reduce within warps with shuffles (real GPUs).  The simulator has no warp
#: shuffles: there, and whenever this is False, reductions go through shared
#: memory.  Passed to the kernels as an argument, so it can be changed at run
#: time (tests force it off).
USE_SHUFFLE = not SIMULATED

#: Shared-memory reduction arrays are sized for this many threads per block;
#: no launch uses more.
MAX_BLOCK = 1024


def threads_per_row(n_classes: int) -> int:
    """Threads working on one row of ``n_classes`` elements (a power of two)."""
    want = -(-max(n_classes, 1) // ELEMENTS_PER_THREAD)
    tpr = 1
    while tpr < want and tpr < MAX_THREADS_PER_ROW:
        tpr *= 2
    return tpr


def row_launch(n_rows: int, n_classes: int) -> tuple[int, int, int]:
    """(blocks, threads per block, threads per row) for a row kernel."""
    tpr = threads_per_row(n_classes)
    block = max(BLOCK, tpr)
    if block > MAX_BLOCK:
        raise ValueError(f"block of {block} threads exceeds MAX_BLOCK={MAX_BLOCK}")
    rows_per_block = block // tpr
    blocks = max(1, min(-(-n_rows // rows_per_block), MAX_BLOCKS))
    return blocks, block, tpr


def elementwise_launch(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for an elementwise kernel over n items."""
    return max(1, min(-(-n // ELEMENTWISE_BLOCK), MAX_BLOCKS)), ELEMENTWISE_BLOCK
