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

#: Register limit of the kernels (compiled in: ptxas -maxrregcount), chosen
#: from the compile report (``python tests/cuda_compile.py --sass``; budgets
#: in tests/cuda_budgets.json).  Uncapped, ptxas takes 108 (softmax) to 168
#: (fused cross-entropy with weights) registers, which would leave one
#: 512-thread block per SM.  At 64 two such blocks fit (1024 threads, each
#: with four 16-byte loads = 64 bytes in flight: 64 KB per SM, about three
#: times what Little's law asks for at 4.8 TB/s), the element loops of the
#: hot paths have no local-memory traffic, and what ptxas spills (76-372
#: bytes) are row-level values, touched once per row.  Smaller limits move
#: spills into the loops (48 and below).
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


# ------------------------------------------------------------------ the GEMM
# Compiled into the linear cross-entropy's GEMM (``fastxent.cuda.linear``) on
# a GPU; the simulator runs small tiles, so that the tests' small shapes span
# several tiles and partial ones.

#: Each block of the GEMM computes a GEMM_TILE x GEMM_TILE tile of the output.
GEMM_TILE = 8 if SIMULATED else 128

#: The inner dimension is read GEMM_TILE_K at a time (two shared panels of
#: GEMM_TILE_K x GEMM_TILE: 8 KiB in float32 at 128 x 8).
GEMM_TILE_K = 4 if SIMULATED else 8

#: Each thread accumulates a GEMM_THREAD x GEMM_THREAD register tile
#: (64 FMAs per 16 shared-memory loads at 8); (GEMM_TILE / GEMM_THREAD)²
#: threads per block (256 on a GPU).
GEMM_THREAD = 2 if SIMULATED else 8

#: Register limits of the GEMM, by the operands' itemsize (ptxas -v, sm_90):
#: float32 fits 128 without spills (two blocks of 256 threads per SM);
#: float64's 8 x 8 tile of doubles takes 194-206 at 255 (no spills, one
#: block per SM), where 128 spilled about 500 bytes into the inner loop.
GEMM_MAX_REGISTERS = {4: 128, 8: 255}

#: A GEMM whose output has fewer tiles than this splits its inner dimension
#: into slices (one more grid dimension) to fill the GPU: two blocks on each
#: of an H100/H200's 132 SMs.
GEMM_MIN_BLOCKS = 4 if SIMULATED else 264

#: ... but no slice shorter than this along the inner dimension (the slices'
#: partial products are written out and summed: an output-sized store each).
GEMM_MIN_SLICE = 8 if SIMULATED else 512


def gemm_launch(n_rows: int, n_cols: int, depth: int) -> tuple[tuple[int, int, int], int, int]:
    """(grid (column tiles, row tiles, slices), threads per block, inner
    length per slice) of the GEMM for an (n_rows, n_cols) output over an
    inner dimension of ``depth``."""
    side = GEMM_TILE // GEMM_THREAD
    col_tiles, row_tiles = -(-n_cols // GEMM_TILE), -(-n_rows // GEMM_TILE)
    slices = 1
    if col_tiles * row_tiles < GEMM_MIN_BLOCKS:
        want = -(-GEMM_MIN_BLOCKS // (col_tiles * row_tiles))
        slices = max(1, min(want, depth // GEMM_MIN_SLICE))
    per_slice = -(-depth // slices) if depth else 0
    per_slice += -per_slice % GEMM_TILE_K  # whole panels
    slices = -(-depth // per_slice) if per_slice else 1
    if row_tiles > 65535:  # the grid's y extent (a row-tile loop would cost registers)
        raise ValueError(f"an output of {n_rows} rows exceeds the GEMM's grid "
                         f"({65535 * GEMM_TILE} rows)")
    return (col_tiles, row_tiles, slices), side * side, per_slice


#: The linear cross-entropy's products for torch tensors and CuPy arrays go
#: to their library's matmul (cuBLAS: tensor cores, tuned kernels) when True;
#: False sends every kind of array to the tiled GEMM of fastxent.cuda.linear
#: (Numba device arrays and unknown libraries always go there).
LIBRARY_GEMM = True

#: The linear cross-entropy's chunk of logits, in bytes (the rows per chunk
#: follow from the class count, as on the CPU, where the cache size sets it):
#: 520 rows at C = 32000 float32, 1/16 of the logits at N = 8192, large
#: enough that the logits and dW products fill the GPU.
LINEAR_CHUNK_BYTES = 64 << 20
