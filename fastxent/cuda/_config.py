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

#: Register limit of the row kernels (compiled in: ptxas -maxrregcount),
#: chosen from the compile report (``tests/cuda_compile.py --ptxas``, see
#: tests/cuda_budgets.json): every row kernel fits in it without spilling,
#: and at 40 registers an SM holds 3 blocks of 512 threads (1536 threads,
#: 75% occupancy; each thread keeps 4 16-byte loads in flight, far more than
#: the ~22 KB per SM that Little's law asks for at 4.8 TB/s).  No launch uses
#: more than 512 threads per block with a row kernel (and 40 x 1024 still
#: fits the 64K registers of an SM, so MAX_BLOCK launches too).
MAX_REGISTERS = 64

#: A row gets about C / ELEMENTS_PER_THREAD threads (rounded up to a power of
#: two, within [1, MAX_THREADS_PER_ROW]).  16 = one iteration of the vector
#: loop (four 4-element chunks) per thread.
ELEMENTS_PER_THREAD = 4 if SIMULATED else 16

#: Row passes read and write 16-byte vectors where the rows are suitably
#: aligned (``_rows.vector_layout``).  Compiled into the kernels on a GPU
#: (changing it afterwards has no effect there); read at run time on the
#: simulator, where tests switch it off to cover the scalar path.
VECTOR_ACCESS = True

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


def check_block(block: int, tpr: "int | None") -> None:
    """Raise ValueError for a launch geometry the kernels cannot run: more
    threads than the shared scratch holds, groups that are not a power of
    two dividing the block, and, with warp shuffles (full-mask
    ``shfl_xor_sync``: every lane of every warp must take part), blocks that
    are not whole warps or groups larger than a warp that are not whole warps."""
    if block > MAX_BLOCK:
        raise ValueError(f"block of {block} threads exceeds MAX_BLOCK={MAX_BLOCK}")
    if tpr is None:  # an elementwise kernel: its reductions span the block
        tpr = block
    elif tpr < 1 or tpr & (tpr - 1) or block % tpr:
        raise ValueError(f"{tpr} threads per row must be a power of two dividing the block of {block}")
    if USE_SHUFFLE and (block % 32 or (tpr > 32 and tpr % 32)):
        raise ValueError(f"warp-shuffle reductions need whole warps: block of {block} threads, "
                         f"{tpr} per row (set USE_SHUFFLE = False for other geometries)")


def row_launch(n_rows: int, n_classes: int) -> tuple[int, int, int]:
    """(blocks, threads per block, threads per row) for a row kernel."""
    tpr = threads_per_row(n_classes)
    block = max(BLOCK, tpr)
    check_block(block, tpr)
    rows_per_block = block // tpr
    blocks = max(1, min(-(-n_rows // rows_per_block), MAX_BLOCKS))
    return blocks, block, tpr


def elementwise_launch(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for an elementwise kernel over n items."""
    check_block(ELEMENTWISE_BLOCK, None)
    return max(1, min(-(-n // ELEMENTWISE_BLOCK), MAX_BLOCKS)), ELEMENTWISE_BLOCK
