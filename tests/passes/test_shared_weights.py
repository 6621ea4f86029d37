"""A weight that several layers read (ALBERT's shared layers) is compressed once or left alone."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import ffn, weights

from nlpress.ir.verify import run
from nlpress.passes import parse, run_pipeline
from nlpress.passes.calibration import pooled_cosine

HIDDEN, INNER = 16, 32


def _shared_ffns():
    """Two residual FFN blocks with equal weights, which fold makes one set of initializers."""
    block = tuple(
        weights(shape, seed) for seed, shape in enumerate([[16, 32], [32], [32, 16], [16]])
    )
    return run_pipeline(
        ffn(["batch", "sequence", HIDDEN], [block, block], residual=True), parse("fold")
    ).model


def _feeds(count=4):
    rng = np.random.default_rng(1)
    return tuple(
        {"x": rng.standard_normal((2, 6, HIDDEN)).astype(np.float32)} for _ in range(count)
    )


def _int8_weights(model):
    return [
        t
        for t in model.graph.tensors().values()
        if isinstance(t, gs.Constant)
        and np.asarray(t.values).dtype == np.int8
        and t.values.ndim == 2
    ]


def test_fold_shares_the_equal_weights():
    shared = [t for t in _shared_ffns().graph.tensors().values() if isinstance(t, gs.Constant)]
    readers = {t.name: len(t.outputs) for t in shared if np.asarray(t.values).ndim == 2}
    assert sorted(readers.values()) == [2, 2]


@pytest.mark.parametrize("smooth", ["", " smooth=0.8"])
def test_quantize_insert_stores_a_shared_weight_once(smooth):
    model, feeds = _shared_ffns(), _feeds()
    result = run_pipeline(
        model, parse(f"quantize-insert{{calibration=minmax{smooth}}}"), data=feeds
    )
    quantized = result.model
    assert sorted(np.asarray(t.values).shape for t in _int8_weights(quantized)) == [
        (16, 32),
        (32, 16),
    ]
    dequantized = [
        n
        for n in quantized.graph.nodes
        if n.op == "DequantizeLinear" and len(n.outputs[0].outputs) == 2
    ]
    assert len(dequantized) == 2, "each int8 weight is dequantized once, for both of its readers"
    if smooth:
        stats = result.records[0].stats
        assert stats["smoothed_groups"] == 2 and stats["smooth_folded"] + stats["smooth_mul"] == 4
    want = [run(model, f)["y"] for f in feeds]
    found = [run(quantized, f)["y"] for f in feeds]
    assert pooled_cosine(want, found, feeds) > 0.999


@pytest.mark.parametrize("pattern", ["neurons", "weights"])
def test_prune_sparsify_leaves_shared_weights_with_a_stat(pattern):
    pipeline = (
        "prune-sparsify{pattern=neurons sparsity=0.25}"
        if pattern == "neurons"
        else "prune-sparsify{sparsity=0.5}"
    )
    result = run_pipeline(_shared_ffns(), parse(pipeline), data=_feeds())
    record = result.records[0]
    assert record.stats["skipped_shared_weight"] == (2 if pattern == "neurons" else 4)
    assert record.stats["units"] == 0 and not record.changed
