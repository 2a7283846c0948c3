"""Tensors in and out of fastxent's public functions.

CPU tensors are handed to the kernels as zero-copy NumPy views
(``tensor.numpy()``) and results come back with ``torch.from_numpy`` (zero
copy again).  CUDA tensors are passed as they are: fastxent's CUDA path takes
``__cuda_array_interface__`` objects, launches on the tensor's current stream
and returns torch tensors.

dtypes: float32 and float64 are computed natively and float16 in float32 (by
the kernels themselves).  bfloat16, which neither NumPy nor numba-cuda can
read, is computed in a float32 work copy on both devices and the results are
cast back to bfloat16.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch


def kernel_array(t: torch.Tensor) -> Any:
    """``t`` as an array fastxent's public functions take, without a copy
    where the dtype allows (bfloat16: a float32 copy)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    if t.is_cuda:
        return t
    return t.numpy()


def optional_kernel_array(t: Optional[torch.Tensor]) -> Any:
    """:func:`kernel_array`, passing None through."""
    return None if t is None else kernel_array(t)


def result_tensor(value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fastxent result (NumPy array or scalar, or a torch tensor from the
    CUDA path) as a tensor of ``dtype`` on ``device``."""
    if isinstance(value, torch.Tensor):
        out = value
    else:
        array = np.asarray(value)
        if not array.flags.writeable:  # torch.from_numpy warns on read-only memory
            array = array.copy()
        out = torch.from_numpy(array)
    return out.to(device=device, dtype=dtype)


def empty_placeholder(like: torch.Tensor) -> torch.Tensor:
    """The zero-size tensor an op returns in place of a gradient it did not compute."""
    return like.new_empty((0,))
