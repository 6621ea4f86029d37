"""Golden dumps of what the lossy passes write for one layer, through the public pass API.

Only what must not change is pinned: the QDQ pattern quantize-insert writes around one MatMul
(with the int8 weights and scales of dynamic mode, which calibration does not touch), the pair
of MatMuls factorize-matmul writes at a fixed rank, and the shapes prune-sparsify leaves in one
FFN. Values that calibration or a fit decides are left out of the comparison (`pattern`).
Regenerate with `--update-golden` (see tests/conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
from graphs import dense, ffn, weights

from nlpress.ir import Feeds, Model
from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check
from nlpress.passes import parse, run_pipeline

_CONSTANT_DATA = re.compile(r"^(const \S+: \S+) (?:= \[.*\]|#[0-9a-f]+)$", re.MULTILINE)


def pattern(dump: str) -> str:
    """A dump without the constants' data: names, dtypes, shapes and nodes only."""
    return _CONSTANT_DATA.sub(r"\1", dump)


def one_matmul() -> tuple[Model, tuple[Feeds, ...]]:
    """x[N, 8] -> MatMul(W[8, 6]) -> y, and four seeded batches to calibrate it on."""
    return dense(["N", 8], weights([8, 6]), activation=None), _feeds(8)


def one_ffn() -> tuple[Model, tuple[Feeds, ...]]:
    """x[N, 4] -> up (8 neurons, bias) -> Relu -> down (bias) -> y, and its batches."""
    block = (weights([4, 8], 1), weights([8], 2), weights([8, 4], 3), weights([4], 4))
    return ffn(["N", 4], [block]), _feeds(4)


def _feeds(width: int) -> tuple[Feeds, ...]:
    rng = np.random.default_rng(5)
    return tuple({"x": rng.standard_normal((16, width)).astype(np.float32)} for _ in range(4))


CASES = {
    "quantize-insert-dynamic": (one_matmul, "quantize-insert{mode=dynamic}", False),
    "quantize-insert-static": (one_matmul, "quantize-insert", True),
    "factorize-matmul-rank-3": (
        one_matmul,
        "factorize-matmul{rank-ratio=0.5 rank-multiple=1}",
        True,
    ),
    "prune-sparsify-neurons": (one_ffn, "prune-sparsify{pattern=neurons sparsity=0.5}", True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lossy_rewrite_matches_its_golden_dump(
    name: str, golden: Callable[[str, str], None]
) -> None:
    builder, pipeline, pattern_only = CASES[name]
    model, feeds = builder()
    result = run_pipeline(model, parse(pipeline), data=feeds)
    assert result.records[0].changed
    check(result.model)
    dump = dump_text(result.model)
    golden(name, pattern(dump) if pattern_only else dump)
