"""Latency by kernel: one run of an artifact's virtual machine with a clock around every call.

TVM's virtual machine calls an instrument before and after each Call instruction; the time
between the two is that call's wall time (with the instrument's own small overhead). Calls are
summed by symbol; the VM's own builtins (`vm.builtin.*`: allocation, shapes) are summed apart
from the compiled kernels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

BUILTIN = "vm.builtin."


def kernel_times(vm: Any, args: Sequence[Any]) -> dict[str, Any]:
    """One instrumented run of `main`: seconds and calls per kernel, slowest first."""
    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    started: list[float] = []

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *rest: Any) -> int:
        if before:
            started.append(time.perf_counter())
            return 0
        name = str(symbol)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started.pop()
        calls[name] = calls.get(name, 0) + 1
        return 0

    vm.set_instrument(instrument)
    try:
        vm["main"](*args)
    finally:
        vm.set_instrument(None)
    kernels = {k: v for k, v in seconds.items() if not k.startswith(BUILTIN)}
    order = sorted(kernels, key=lambda k: -kernels[k])
    return {
        "kernels": [{"name": k, "calls": calls[k], "seconds": kernels[k]} for k in order],
        "builtin_seconds": sum(v for k, v in seconds.items() if k.startswith(BUILTIN)),
        "total_seconds": sum(seconds.values()),
    }
