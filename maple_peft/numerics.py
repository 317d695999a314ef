"""Floating-point settings of the CPU: flushing subnormal floats to zero.

Arithmetic on subnormal floats (magnitudes below 1.2e-38 in float32) is many times slower than on normal ones on
most x86 CPUs. `torch.set_flush_denormal(True)` makes the CPU treat them as zero (the FTZ and DAZ flags of x86,
FZ on ARM64); results change only where such tiny values occur.

The flags belong to each thread: `torch.set_flush_denormal` sets those of the calling thread, and the intra-op threads
that torch starts afterwards (at its first parallel operation) copy them. A process that sets them before its first
parallel operation, as the example scripts do, flushes in every thread; set later, they apply to the calling thread
only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["flush_denormal", "is_flushing_denormal"]


def is_flushing_denormal() -> bool:
    """Whether subnormal floats are flushed to zero in the calling thread (on CPU).

    Example:
        ```python
        >>> from maple_peft.numerics import is_flushing_denormal
        >>> is_flushing_denormal()
        False
        ```
    """
    # the smallest positive float32 subnormal, made from its bits (no float arithmetic that could flush it already)
    tiny = torch.ones(1, dtype=torch.int32).view(torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[bool]:
    """Flushes subnormal floats to zero on CPU within the block, then restores the previous setting (also when the
    block raises).

    Args:
        enabled (`bool`, defaults to `True`): Flush (`True`) or compute subnormals exactly (`False`) in the block.

    Yields:
        Whether the CPU supports the setting (x86 with SSE3, ARM64); elsewhere nothing changes.

    Example:
        ```python
        >>> from maple_peft.numerics import flush_denormal
        >>> with flush_denormal():
        ...     logits = classifier(pixel_values)
        ```
    """
    previous = is_flushing_denormal()
    supported = torch.set_flush_denormal(enabled)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(previous)
