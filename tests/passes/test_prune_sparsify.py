import json

import numpy as np
import pytest
from graphs import ffn, initializer, model, tensor, weights
from onnx import helper

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import constant_value
from nlpress.ir.verify import check, run
from nlpress.passes import PreconditionError, parse
from nlpress.passes.base import PassResult
from nlpress.passes.prune_patterns import satisfies_n_m
from nlpress.passes.prune_sparsify import WIDTHS_KEY, PruneSparsify

HIDDEN, INNER, HEADS, HEAD_DIM, SEQ = 8, 16, 4, 4, 6


def _calibrated(m: Model, batches: int = 8, seed: int = 1) -> tuple[Model, tuple[Feeds, ...]]:
    """`m` and seeded batches for its input, with uneven channel norms."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 3.0, HIDDEN).astype(np.float32)  # uneven channel norms
    shape = [d.dim_value for d in m.to_onnx().graph.input[0].type.tensor_type.shape.dim]
    feeds = tuple(
        {"x": (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(batches)
    )
    return m, feeds


def _ffn(gemm: bool = False) -> Model:
    """x -> up (+b) -> erf GELU -> down (+b) -> y; with Gemm (transB) on 2-D inputs if asked."""
    block = (
        weights([HIDDEN, INNER], 1),
        weights([INNER], 3),
        weights([INNER, HIDDEN], 2),
        weights([HIDDEN], 4),
    )
    shape = [2 * SEQ, HIDDEN] if gemm else [2, SEQ, HIDDEN]
    return ffn(shape, [block], "erf-gelu", gemm=gemm)


def _attention(mask_heads: int = 1, mixed: bool = False) -> Model:
    """Q/K/V -> [1, S, H, D] -> scores, mask, softmax -> context -> [1, S, H*D] -> output.

    With `mixed`, the probabilities get the mean over heads added: heads no longer separate.
    """
    hidden = HEADS * HEAD_DIM
    nodes, inits = [], []
    for i, p in enumerate("qkv"):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"], name=f"{p}_proj"),
            helper.make_node("Add", [f"{p}0", f"b{p}"], [f"{p}1"], name=f"{p}_bias"),
            helper.make_node("Reshape", [f"{p}1", "split"], [f"{p}2"], name=f"{p}_split"),
        ]
        inits += [
            initializer(f"w{p}", weights([hidden, hidden], 10 + i)),
            initializer(f"b{p}", weights([hidden], 20 + i)),
        ]
    nodes += [
        helper.make_node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q3", "k3"], ["s0"], name="scores"),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Add", ["s1", "mask"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p0"], axis=-1),
        *(
            [
                helper.make_node("ReduceMean", ["p0"], ["pm"], axes=[1], keepdims=1),
                helper.make_node("Add", ["p0", "pm"], ["p"]),
            ]
            if mixed
            else [helper.make_node("Identity", ["p0"], ["p"])]
        ),
        helper.make_node("MatMul", ["p", "v3"], ["c0"], name="context"),
        helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["c1", "merge"], ["c2"], name="merge"),
        helper.make_node("MatMul", ["c2", "wo"], ["o0"], name="out_proj"),
        helper.make_node("Add", ["o0", "bo"], ["y"], name="out_bias"),
    ]
    inits += [
        initializer("split", np.array([1, SEQ, HEADS, HEAD_DIM], np.int64)),
        initializer("merge", np.array([1, SEQ, hidden], np.int64)),
        initializer("scale", np.array(0.5, np.float32)),
        initializer("mask", weights([1, mask_heads, 1, SEQ], 30)),
        initializer("wo", weights([hidden, hidden], 40)),
        initializer("bo", weights([hidden], 41)),
    ]
    shape = [1, SEQ, hidden]
    return model(nodes, [tensor("x", shape)], [tensor("y", shape)], inits)


def _attention_calibrated(mask_heads: int = 1) -> tuple[Model, tuple[Feeds, ...]]:
    """`_attention` and sixteen seeded batches for it."""
    rng = np.random.default_rng(3)
    feeds = tuple(
        {"x": rng.standard_normal((1, SEQ, HEADS * HEAD_DIM)).astype(np.float32)} for _ in range(16)
    )
    return _attention(mask_heads), feeds


def _weight(m: Model, node_name: str) -> np.ndarray:
    node = next(n for n in m.graph.nodes if n.name == node_name)
    value = next(constant_value(t) for t in node.inputs[1:2])
    assert value is not None
    return value


def _run(p: PruneSparsify, m: Model, feeds: tuple[Feeds, ...] = ()) -> PassResult:
    p.requires(m)
    result = p.run(m, feeds)
    p.ensures(result.model)
    return result


def _outputs(m: Model, feeds) -> np.ndarray:
    return np.concatenate([run(m, f)["y"].reshape(-1) for f in feeds])


def _relative_error(a: Model, b: Model, feeds: tuple[Feeds, ...]) -> float:
    want, got = _outputs(a, feeds), _outputs(b, feeds)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# --- masks -----------------------------------------------------------------------------------


def test_unstructured_mask_is_exactly_the_requested_sparsity_per_output():
    m, feeds = _calibrated(_ffn())
    p = PruneSparsify(pattern="unstructured", sparsity=0.5, criterion="magnitude", recover=False)
    result = _run(p, m, feeds)
    assert result.changed
    for name, original in (("up", _weight(m, "up")), ("down", _weight(m, "down"))):
        pruned = _weight(result.model, name)
        kept = pruned != 0
        assert np.all(kept.sum(axis=0) == original.shape[0] // 2)
        np.testing.assert_array_equal(pruned[kept], original[kept])
        # the kept weights of each output are its largest in magnitude
        for j in range(original.shape[1]):
            assert np.abs(original[kept[:, j], j]).min() >= np.abs(original[~kept[:, j], j]).max()
        assert result.stats[f"sparsity:{name}"] == pytest.approx(0.5)


def test_global_scope_prunes_the_requested_share_of_all_weights():
    m, feeds = _calibrated(_ffn())
    p = PruneSparsify(sparsity=0.3, scope="global", criterion="magnitude", recover=False)
    pruned = _run(p, m, feeds).model
    total = sum(_weight(pruned, n).size for n in ("up", "down"))
    zeros = sum(np.count_nonzero(_weight(pruned, n) == 0) for n in ("up", "down"))
    assert zeros == round(0.3 * total)


@pytest.mark.parametrize("criterion", ["magnitude", "activation"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_keeps_exactly_n_in_every_m(pattern, criterion):
    n, m_ = map(int, pattern.split(":"))
    m, feeds = _calibrated(_ffn())
    result = _run(PruneSparsify(pattern=pattern, criterion=criterion), m, feeds)
    for name in ("up", "down"):
        w = _weight(result.model, name)
        assert satisfies_n_m(w, n, m_)
        groups = np.count_nonzero(w.reshape(w.shape[0] // m_, m_, -1), axis=1)
        assert np.all(groups == n)


def test_activation_criterion_scales_magnitudes_by_channel_norms():
    m, feeds = _calibrated(_ffn())
    magnitude = _run(PruneSparsify(sparsity=0.5, criterion="magnitude", recover=False), m, feeds)
    activation = _run(PruneSparsify(sparsity=0.5, criterion="activation", recover=False), m, feeds)
    up = _weight(m, "up")
    norms = np.sqrt(sum(np.sum(f["x"].reshape(-1, HIDDEN) ** 2, axis=0) for f in feeds))
    expected = np.argsort(np.abs(up) * norms[:, None], axis=0, kind="stable")[HIDDEN // 2 :]
    kept = _weight(activation.model, "up") != 0
    for j in range(up.shape[1]):
        assert set(np.flatnonzero(kept[:, j])) == set(expected[:, j])
    assert not np.array_equal(kept, _weight(magnitude.model, "up") != 0)


def test_exclude_skips_matching_layers():
    m, feeds = _calibrated(_ffn())
    result = _run(PruneSparsify(sparsity=0.5, criterion="magnitude", exclude=("dow*",)), m, feeds)
    np.testing.assert_array_equal(_weight(result.model, "down"), _weight(m, "down"))
    assert np.count_nonzero(_weight(result.model, "up") == 0) == HIDDEN * INNER // 2
    assert result.stats["units_excluded"] == 1


def test_unstructured_recovery_keeps_the_mask_and_lowers_the_error():
    m, feeds = _calibrated(_ffn())
    plain = _run(PruneSparsify(pattern="2:4", recover=False), m, feeds)
    refit = _run(PruneSparsify(pattern="2:4", recover=True), m, feeds)
    assert satisfies_n_m(_weight(refit.model, "down"), 2, 4)
    assert refit.stats["recovery_error_after"] < refit.stats["recovery_error_before"]
    assert _relative_error(m, refit.model, feeds) < _relative_error(m, plain.model, feeds)


# --- structured removal ----------------------------------------------------------------------


def _kept_columns(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    return [
        next(i for i in range(original.shape[1]) if np.array_equal(original[:, i], pruned[:, j]))
        for j in range(pruned.shape[1])
    ]


def _with_weight(m: Model, name: str, value: np.ndarray) -> Model:
    proto = m.to_onnx()
    for init in proto.graph.initializer:
        if init.name == name:
            init.CopyFrom(initializer(name, value))
    return Model.from_onnx(proto)


@pytest.mark.parametrize("gemm", [False, True])
def test_neurons_are_removed_and_match_the_dense_model_with_them_zeroed(gemm):
    m, feeds = _calibrated(_ffn(gemm))
    result = _run(PruneSparsify(pattern="neurons", sparsity=0.25, recover=False), m, feeds)
    check(result.model)
    up, down = (_weight(m, n) for n in ("up", "down"))
    new_up = _weight(result.model, "up")
    if gemm:
        up, down, new_up = up.T, down.T, new_up.T
    assert new_up.shape == (HIDDEN, 12)
    kept = _kept_columns(up, new_up)
    zeroed = down.copy()
    zeroed[[i for i in range(INNER) if i not in kept]] = 0
    reference = _with_weight(m, "down_w", zeroed.T.copy() if gemm else zeroed)
    np.testing.assert_allclose(_outputs(result.model, feeds), _outputs(reference, feeds), atol=1e-5)
    assert result.stats["params_after"] < result.stats["params_before"]
    assert result.stats["matmul_flops_per_token_after"] == 2 * 2 * HIDDEN * 12


def test_neuron_recovery_reduces_the_layer_error():
    m, feeds = _calibrated(_ffn())
    plain = _run(PruneSparsify(pattern="neurons", sparsity=0.5, recover=False), m, feeds)
    refit = _run(PruneSparsify(pattern="neurons", sparsity=0.5, recover=True), m, feeds)
    stats = refit.stats
    assert stats["recovery_error_after:down"] < stats["recovery_error_before:down"]
    assert _relative_error(m, refit.model, feeds) < _relative_error(m, plain.model, feeds)


def test_obs_criterion_is_no_worse_than_activation_after_recovery():
    m, feeds = _calibrated(_ffn())
    act = _run(PruneSparsify(pattern="neurons", sparsity=0.5), m, feeds)
    obs = _run(PruneSparsify(pattern="neurons", sparsity=0.5, criterion="obs"), m, feeds)
    assert obs.stats["recovery_error_after"] <= act.stats["recovery_error_after"] + 1e-12


@pytest.mark.parametrize("mask_heads", [1, HEADS])  # one mask for all heads, or one per head
def test_heads_are_removed_with_reshapes_and_match_the_dense_model_with_them_zeroed(mask_heads):
    m, feeds = _attention_calibrated(mask_heads)
    result = _run(PruneSparsify(pattern="heads", sparsity=0.25, recover=False), m, feeds)
    check(result.model)
    assert result.stats["attention_blocks_found"] == 1
    gathers = [n for n in result.model.graph.nodes if n.op == "Gather"]
    assert len(gathers) == (mask_heads == HEADS)  # the kept heads' slices of a per-head mask
    graph = result.model.graph
    for node in graph.nodes:
        if node.op == "Reshape":
            target = list(constant_value(node.inputs[1]))
            assert target in ([1, SEQ, 3, HEAD_DIM], [1, SEQ, 3 * HEAD_DIM])
    wv, new_wv = _weight(m, "v_proj"), _weight(result.model, "v_proj")
    kept_heads = sorted({c // HEAD_DIM for c in _kept_columns(wv, new_wv)})
    assert len(kept_heads) == 3
    wo = _weight(m, "out_proj").copy()
    for h in set(range(HEADS)) - set(kept_heads):
        wo[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
    reference = _with_weight(m, "wo", wo)  # with its mask's slices where they were
    np.testing.assert_allclose(_outputs(result.model, feeds), _outputs(reference, feeds), atol=1e-5)


def test_head_recovery_reduces_the_error():
    m, feeds = _attention_calibrated()
    plain = _run(PruneSparsify(pattern="heads", sparsity=0.5, recover=False), m, feeds)
    refit = _run(PruneSparsify(pattern="heads", sparsity=0.5), m, feeds)
    assert refit.stats["recovery_error_after"] < refit.stats["recovery_error_before"]
    assert _relative_error(m, refit.model, feeds) < _relative_error(m, plain.model, feeds)


# --- changed, both ways ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "options"),
    [
        (_ffn, {"pattern": "unstructured", "sparsity": 0.5}),
        (_ffn, {"pattern": "2:4", "recover": True}),
        (_ffn, {"pattern": "neurons", "sparsity": 0.25}),
        (_attention, {"pattern": "heads", "sparsity": 0.5}),
    ],
)
def test_second_run_at_the_same_sparsity_reports_unchanged(make, options):
    m, feeds = _attention_calibrated() if make is _attention else _calibrated(make())
    p = PruneSparsify(**options)
    first = _run(p, m, feeds)
    assert first.changed
    again = _run(p, first.model, feeds)
    assert not again.changed
    assert again.stats.get("units_pruned", 0) == 0


def test_structured_widths_are_recorded_and_more_sparsity_prunes_further():
    m, feeds = _calibrated(_ffn())
    first = _run(PruneSparsify(pattern="neurons", sparsity=0.25), m, feeds).model
    assert json.loads(first.metadata[WIDTHS_KEY]) == {"down": INNER}
    more = _run(PruneSparsify(pattern="neurons", sparsity=0.5), first, feeds)
    assert more.changed
    assert _weight(more.model, "up").shape == (HIDDEN, INNER // 2)


def test_zero_sparsity_changes_nothing():
    m, feeds = _calibrated(_ffn())
    assert not _run(PruneSparsify(pattern="neurons", sparsity=0.0), m, feeds).changed
    assert not _run(PruneSparsify(sparsity=0.0), m, feeds).changed


# --- budget ----------------------------------------------------------------------------------


def test_budget_cosine_relaxes_layers_until_met():
    m, feeds = _calibrated(_ffn())
    loose = _run(PruneSparsify(sparsity=0.9, recover=False), m, feeds)
    strict = _run(PruneSparsify(sparsity=0.9, recover=False, budget_cosine=0.995), m, feeds)
    assert strict.stats["budget_cosine"] >= 0.995
    assert strict.stats["budget_met"] == 1.0
    assert strict.stats["budget_steps"] >= 1
    assert _relative_error(m, strict.model, feeds) < _relative_error(m, loose.model, feeds)


# --- preconditions and options ---------------------------------------------------------------


def test_heads_without_attention_says_so():
    with pytest.raises(PreconditionError, match="no attention it recognizes"):
        PruneSparsify(pattern="heads").requires(_ffn())


def test_neurons_without_ffn_says_so():
    with pytest.raises(PreconditionError, match="no FFN it recognizes"):
        PruneSparsify(pattern="neurons").requires(_attention())


def test_heads_mixed_by_the_region_are_not_recognized():
    with pytest.raises(PreconditionError, match="no attention"):
        PruneSparsify(pattern="heads").requires(_attention(mixed=True))


def test_calibration_is_required_only_when_data_is_read():
    bare = _ffn()
    with pytest.raises(PreconditionError, match="needs calibration data"):
        PruneSparsify(criterion="activation").run(bare)
    assert _run(PruneSparsify(criterion="magnitude", recover=False), bare).changed


def test_must_run_before_quantization():
    class Quantize:
        name = "quantize-insert"

    with pytest.raises(PreconditionError, match="before quantize-insert"):
        PruneSparsify().check_order([Quantize()])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pattern": "blocks"}, "expected unstructured"),
        ({"pattern": "4:2"}, "0 < N < M"),
        ({"pattern": "2:4", "sparsity": 0.5}, "fixes the sparsity"),
        ({"sparsity": 1.0}, "0 <= sparsity < 1"),
        ({"pattern": "neurons", "scope": "global"}, "unstructured only"),
        ({"budget_cosine": 0.0}, "budget"),
        ({"damping": -1.0}, "damping"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        PruneSparsify(**options)


def test_pipeline_text_round_trips():
    pipeline = parse("prune-sparsify{pattern=2:4 criterion=magnitude exclude=a*,b}")
    (p,) = pipeline.passes
    assert p == PruneSparsify(pattern="2:4", criterion="magnitude", exclude=("a*", "b"))
    assert parse(str(pipeline)) == pipeline


@pytest.mark.slow
def test_minilm_neurons_with_recovery(minilm_path):
    from nlpress.compiler import optimize
    from nlpress.ir.verify import session
    from nlpress.models import zoo
    from nlpress.models.metrics import fidelity
    from nlpress.models.text import load_tokenizer

    shapes = {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)}
    pruned = optimize(
        "minilm-l6", "fold,prune-sparsify{pattern=neurons sparsity=0.25},cleanup", shapes=shapes
    )
    reference = optimize("minilm-l6", "fold,cleanup", shapes=shapes).model
    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    result = fidelity(session(pruned.model), session(reference), tokenizer)
    assert result.mean_cosine > 0.95
    assert result.recall_at_1 >= result.reference_recall_at_1 - 0.02
