import json

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import copied_ids_encoder, dense, initializer, model, tensor
from onnx import TensorProto, helper

from nlpress.ir import Feeds, Model
from nlpress.ir.verify import check, run
from nlpress.passes import PASSES, OptionError, PreconditionError, parse
from nlpress.passes.base import option_fields
from nlpress.passes.instruments import VerifyEach, run_pipeline
from nlpress.passes.quantize_insert import (
    FLOAT_KEY,
    QuantizeInsert,
    predicted_count,
    sensitivity_batches,
)
from nlpress.passes.quantize_ranges import Histogram, activation_range, entropy_threshold

K, N, SEQ = 16, 12, 8


def _weight(k=K, n=N, seed=0):
    return np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)


def _x(seed=1, batch=4, outlier=None):
    x = np.random.default_rng(seed).standard_normal((batch, SEQ, K)).astype(np.float32)
    if outlier is not None:
        x[..., 3] *= outlier  # one channel with a much larger range, as LayerNorm outputs have
    return x


def _feeds(outlier=None, batches=4):
    return tuple({"x": _x(seed, outlier=outlier)} for seed in range(batches))


def _dense(bias=True):
    """x[batch, 8, K] -> MatMul(W) (-> Add(b)) -> Relu -> MatMul(W2) -> y, which `_feeds` fit."""
    b = np.linspace(-1, 1, N).astype(np.float32) if bias else None
    return dense(["batch", SEQ, K], _weight(), b, then=_weight(N, 6, seed=2))


def _shared():
    """LayerNorm -> three MatMuls (as Q, K, V) and a residual Add, summed into y."""
    gamma = np.linspace(0.5, 1.5, K).astype(np.float32)
    beta = np.linspace(-0.2, 0.2, K).astype(np.float32)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("Mul", ["ln", "spread"], ["t"], name="spread"),
        helper.make_node("MatMul", ["t", "wq"], ["q"], name="query/MatMul"),
        helper.make_node("MatMul", ["t", "wk"], ["k"], name="key/MatMul"),
        helper.make_node("MatMul", ["t", "wv"], ["v"], name="value/MatMul"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="add1"),
        helper.make_node("Add", ["qk", "v"], ["qkv"], name="add2"),
        helper.make_node("MatMul", ["t", "wr"], ["res"], name="residual/MatMul"),
        helper.make_node("Add", ["qkv", "res"], ["s"], name="add3"),
        helper.make_node("Add", ["t", "t"], ["y2"], name="residual"),
        helper.make_node("Identity", ["s"], ["y"], name="out"),
    ]
    spread = np.ones(K, np.float32)
    spread[3] = 40.0  # an outlier channel
    inits = [
        initializer("gamma", gamma),
        initializer("beta", beta),
        initializer("spread", spread),
        *(initializer(n, _weight(seed=i)) for i, n in enumerate(("wq", "wk", "wv", "wr"))),
    ]
    return model(
        nodes,
        [tensor("x", ["batch", SEQ, K])],
        [tensor("y", ["batch", SEQ, N]), tensor("y2", ["batch", SEQ, K])],
        inits,
    )


def _relative(want, got):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _ops(m):
    return [n.op for n in m.graph.nodes]


def _node(m, name):
    return next(n for n in m.graph.nodes if n.name == name)


def test_every_option_is_documented_and_the_pass_is_registered():
    assert PASSES["quantize-insert"] is QuantizeInsert
    assert set(QuantizeInsert.option_help()) >= set(option_fields(QuantizeInsert))
    assert [p.name for p in parse("int8")] == ["fold", "quantize-insert", "cleanup"]


def test_pipeline_text_round_trips():
    p = parse("quantize-insert{mode=dynamic exclude=Gemm,pooler per-channel=false smooth=0.5}")
    only = p.passes[0]
    assert only.exclude == ("Gemm", "pooler") and only.smooth == 0.5 and not only.per_channel
    assert parse(str(p)) == p


def test_per_channel_weight_scales_on_hand_made_weights():
    w = np.array([[1.0, -0.5, 0.0], [-2.54, 0.25, 0.0], [0.127, 0.1, 0.0]], np.float32)
    m = dense([2, 3], w, activation=None)
    result = QuantizeInsert(mode="dynamic").run(m)
    dq = next(n for n in result.model.graph.nodes if n.inputs[0].name == "w_quantized")
    values, scale, zero = (np.asarray(t.values) for t in dq.inputs)
    assert dq.op == "DequantizeLinear" and dq.attrs["axis"] == 1
    np.testing.assert_allclose(scale, [2.54 / 127, 0.5 / 127, 1.0], rtol=1e-6)
    assert scale.dtype == np.float32 and values.dtype == np.int8 and zero.dtype == np.int8
    assert zero.shape == (3,) and not zero.any()
    np.testing.assert_array_equal(values[:, 0], [50, -127, 6])  # 1 / 0.02 = 50; 0.127 / 0.02
    np.testing.assert_array_equal(values[:, 1], [-127, 64, 25])  # 0.25 / (0.5/127) = 63.5 -> 64
    assert values.shape == (3, 3)
    tensor_wise = QuantizeInsert(mode="dynamic", per_channel=False).run(m).model
    dq = next(n for n in tensor_wise.graph.nodes if n.inputs[0].name == "w_quantized")
    assert np.asarray(dq.inputs[1].values).shape == ()
    assert float(dq.inputs[1].values) == pytest.approx(2.54 / 127)


def test_static_qdq_graph_checks_runs_in_ort_within_a_bound():
    m = _dense()
    result = QuantizeInsert(calibration="minmax").run(m, _feeds())
    assert result.changed
    check(result.model)
    q = _node(result.model, "x/QuantizeLinear")
    scale, zero = (np.asarray(t.values) for t in q.inputs[1:])
    assert scale.shape == () and scale.dtype == np.float32
    assert zero.shape == () and zero.dtype == np.uint8
    matmul = _node(result.model, "dense/MatMul")
    assert [t.inputs[0].op for t in matmul.inputs] == ["DequantizeLinear"] * 2
    assert _node(result.model, "dense/Add").inputs[1].name == "b", "the bias stays float"
    for feeds in _feeds():
        want, got = run(m, feeds)["y"], run(result.model, feeds)["y"]
        assert _relative(want, got) < 0.03  # int8 weights, uint8 activations, two layers
    assert result.stats["layers_quantized"] == 2
    # int8 values, float32 scales and int8 zero points of both layers, against float32 weights
    assert result.stats["weight_bytes_before"] == 4 * (K * N + N * 6)
    assert result.stats["weight_bytes_after"] == (K * N + N * 6) + 5 * (N + 6)


def test_dynamic_mode_needs_no_data_and_uses_dynamic_quantize_linear():
    m = _dense()
    options = QuantizeInsert(mode="dynamic")
    options.requires(m)
    result = options.run(m)
    dynamic = _node(result.model, "x/DynamicQuantizeLinear")
    dq = next(iter(dynamic.outputs[0].outputs))
    assert dq.op == "DequantizeLinear" and [t for t in dq.inputs] == list(dynamic.outputs)
    assert "QuantizeLinear" not in _ops(result.model)
    feeds = _feeds()[0]
    assert _relative(run(m, feeds)["y"], run(result.model, feeds)["y"]) < 0.03


def test_one_qdq_pair_is_shared_by_the_layers_reading_a_tensor():
    m = _shared()
    result = QuantizeInsert(calibration="minmax").run(m, _feeds())
    assert _ops(result.model).count("QuantizeLinear") == 1
    assert _ops(result.model).count("DequantizeLinear") == 5
    check(result.model)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_calibration_method_runs_within_a_bound(method):
    m = _dense()
    result = QuantizeInsert(calibration=method).run(m, _feeds())
    feeds = _feeds()[0]
    assert _relative(run(m, feeds)["y"], run(result.model, feeds)["y"]) < 0.05


def test_histogram_doubling_is_exact_and_bounded():
    rng = np.random.default_rng(0)
    first, second = rng.standard_normal(1000), 7 * rng.standard_normal(1000)
    h = Histogram(bins=64)
    h.add(first)
    h.add(second)
    assert h.counts.size == 64 and h.counts.sum() == 2000
    direct = np.histogram(np.concatenate([first, second]), 64, (-h.limit, h.limit))[0]
    np.testing.assert_array_equal(h.counts, direct)
    assert (h.low, h.high) == (min(first.min(), second.min()), max(first.max(), second.max()))


def test_clipping_methods_cut_rare_outliers_and_minmax_keeps_them():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(200_000), np.full(10, 60.0)])
    h = Histogram()
    h.add(values)
    assert activation_range(h, "minmax") == (h.low, 60.0)
    for method in ("percentile", "entropy"):
        lo, hi = activation_range(h, method)
        assert 2.5 < hi < 10 and -10 < lo < -2.5, method
    lo, hi = activation_range(h, "percentile", 99.0)
    assert hi == pytest.approx(np.percentile(values, 99), abs=0.1)
    assert lo <= 0 <= hi


def _quantization_mse(values, lo, hi):
    scale = (hi - lo) / 255
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, 255)
    return float(np.mean(((q - zero) * scale - values) ** 2))


def test_mse_clips_a_heavy_tail_where_that_lowers_the_error():
    values = np.random.default_rng(0).laplace(size=200_000)
    h = Histogram()
    h.add(values)
    lo, hi = activation_range(h, "mse")
    assert h.low < lo < 0 < hi < h.high
    clipped = _quantization_mse(values, lo, hi)
    assert clipped < 0.8 * _quantization_mse(values, h.low, h.high)


def test_entropy_threshold_keeps_a_uniform_distribution_whole():
    assert entropy_threshold(np.ones(2048), 1.0) == pytest.approx(1.0)


def test_gemm_becomes_matmul_and_add():
    w, c = _weight(), np.linspace(-1, 1, N).astype(np.float32)
    node = helper.make_node(
        "Gemm", ["x", "w", "c"], ["y"], name="pool", transB=1, alpha=0.5, beta=2.0
    )
    m = model(
        [node],
        [tensor("x", ["batch", K])],
        [tensor("y", ["batch", N])],
        [initializer("w", w.T.copy()), initializer("c", c)],
    )
    feeds = tuple({"x": _x(s).reshape(-1, K)} for s in range(3))
    result = QuantizeInsert(calibration="minmax").run(m, feeds)
    check(result.model)
    assert "Gemm" not in _ops(result.model)
    assert _node(result.model, "pool").op == "MatMul"
    assert _node(result.model, "pool/bias").op == "Add"
    assert _relative(run(m, feeds[0])["y"], run(result.model, feeds[0])["y"]) < 0.02
    assert not QuantizeInsert(exclude=("Gemm",)).run(m, feeds).changed


ROWS = 40


def _table(seed=3):
    table = np.random.default_rng(seed).standard_normal((ROWS, K)).astype(np.float32)
    table[5] *= 30.0  # a row with a much larger range than the others
    return table


def _embedded() -> tuple[Model, tuple[Feeds, ...]]:
    """ids[batch, 8] -> Gather(T) + Gather(P, positions) -> MatMul(W) -> y, and three batches."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="word/Gather"),
        helper.make_node("Gather", ["positions", "pos"], ["p"], name="position/Gather"),
        helper.make_node("Add", ["e", "p"], ["x"], name="sum"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="dense/MatMul"),
    ]
    inits = [
        initializer("table", _table()),
        initializer("positions", _table(seed=4)[:SEQ]),
        initializer("w", _weight()),
    ]
    inputs = [
        tensor("ids", ["batch", SEQ], TensorProto.INT64),
        tensor("pos", [SEQ], TensorProto.INT64),
    ]
    m = model(nodes, inputs, [tensor("y", ["batch", SEQ, N])], inits)
    rng = np.random.default_rng(7)
    feeds = tuple({"ids": rng.integers(0, ROWS, (4, SEQ)), "pos": np.arange(SEQ)} for _ in range(3))
    return m, feeds


def test_embedding_tables_become_int8_with_one_scale_per_row():
    m, feeds = _embedded()
    result = QuantizeInsert().run(m, feeds)
    check(result.model)
    dq = next(n for n in result.model.graph.nodes if n.inputs[0].name == "table_quantized")
    values, scale, zero = (np.asarray(t.values) for t in dq.inputs)
    assert dq.attrs["axis"] == 0 and _node(result.model, "word/Gather").inputs[0] is dq.outputs[0]
    assert values.dtype == np.int8 and values.shape == (ROWS, K)
    assert scale.dtype == np.float32 and scale.shape == (ROWS,)
    assert zero.dtype == np.int8 and zero.shape == (ROWS,) and not zero.any()
    table = _table()
    np.testing.assert_allclose(scale, np.abs(table).max(axis=1) / 127, rtol=1e-6)
    assert np.abs(values).max(axis=1).tolist() == [127] * ROWS
    dequantized = values * scale[:, None]
    assert np.all(np.abs(dequantized - table) <= scale[:, None] / 2 * (1 + 1e-5))
    assert result.stats["tables_quantized"] == 2
    assert result.stats["table_bytes_before"] == 4 * (ROWS + SEQ) * K
    assert result.stats["table_bytes_after"] == (ROWS + SEQ) * K + 5 * (ROWS + SEQ)
    for batch in feeds:
        want, got = run(m, batch)["y"], run(result.model, batch)["y"]
        assert _relative(want, got) < 0.03
    again = QuantizeInsert().run(result.model, feeds)
    assert not again.changed


def test_embeddings_can_be_left_float_or_quantized_alone():
    m, feeds = _embedded()
    kept = QuantizeInsert(embeddings=False).run(m, feeds).model
    assert _node(kept, "word/Gather").inputs[0].name == "table"
    excluded = QuantizeInsert(exclude=("position/Gather",)).run(m, feeds).model
    assert _node(excluded, "position/Gather").inputs[0].name == "positions"
    assert _node(excluded, "word/Gather").inputs[0].name != "table"
    only = QuantizeInsert(exclude=("MatMul",)).run(m, feeds)
    assert only.changed and only.stats["layers_quantized"] == 0
    assert only.stats["tables_quantized"] == 2


def test_a_table_with_other_readers_stays_float():
    m, feeds = _embedded()
    table = m.graph.tensors()["table"]
    out = gs.Variable("t2", dtype=np.float32, shape=[ROWS, K])
    m.graph.nodes.append(gs.Node("Identity", "reader", inputs=[table], outputs=[out]))
    m.graph.outputs.append(out)
    result = QuantizeInsert().run(m, feeds)
    assert _node(result.model, "word/Gather").inputs[0].name == "table"
    assert result.stats["tables_quantized"] == 1


def test_changed_is_exact_and_a_second_run_changes_nothing():
    m, feeds = _dense(), _feeds()
    once = QuantizeInsert().run(m, feeds)
    assert once.changed
    again = QuantizeInsert().run(once.model, feeds)
    assert not again.changed and again.stats["layers_quantized"] == 0
    assert _ops(m) == ["MatMul", "Add", "Relu", "MatMul"], "the input model is left as it was"


def test_exclude_by_name_regex_or_op_type():
    m, feeds = _dense(), _feeds()
    assert QuantizeInsert(exclude=("dense/MatMul",)).run(m, feeds).stats["layers_quantized"] == 1
    assert QuantizeInsert(exclude=("^out/",)).run(m, feeds).stats["layer.out/MatMul.excluded"] == 1
    result = QuantizeInsert(exclude=("MatMul",)).run(m, feeds)
    assert not result.changed and result.stats["layers_excluded"] == 2


def test_smooth_folds_into_layernorm_and_mul_producers_and_helps():
    feeds = _feeds()
    m = _shared()
    plain = QuantizeInsert(calibration="minmax").run(m, feeds)
    smooth = QuantizeInsert(calibration="minmax", smooth=0.5).run(m, feeds)
    check(smooth.model)
    assert smooth.stats["smooth_folded"] == 1 and smooth.stats["smooth_mul"] == 0
    spread = _node(smooth.model, "spread")
    assert spread.inputs[1].name != "spread", "the division went into the constant"
    residual = _node(smooth.model, "residual")
    assert {t.inputs[0].op for t in residual.inputs} == {"Mul"}, "other readers are compensated"
    errors = {}
    for name, result in (("plain", plain), ("smooth", smooth)):
        errors[name] = max(_relative(run(m, f)["y"], run(result.model, f)["y"]) for f in feeds)
        y2 = [run(m, f)["y2"] - run(result.model, f)["y2"] for f in feeds]
        assert max(np.abs(d).max() for d in y2) < 1e-4
    assert errors["smooth"] < 0.7 * errors["plain"]


def test_smooth_without_a_foldable_producer_inserts_a_mul():
    feeds = _feeds(outlier=30.0)
    m = _dense()
    result = QuantizeInsert(calibration="minmax", smooth=0.5).run(m, feeds)
    assert result.stats["smooth_mul"] == 2  # x is a graph input, r a Relu output
    quantizers = [n for n in result.model.graph.nodes if n.op == "QuantizeLinear"]
    assert [q.inputs[0].inputs[0].op for q in quantizers] == ["Mul", "Mul"]
    plain = QuantizeInsert(calibration="minmax").run(m, feeds)
    error = {
        name: _relative(run(m, feeds[0])["y"], run(r.model, feeds[0])["y"])
        for name, r in (("plain", plain), ("smooth", result))
    }
    assert error["smooth"] < error["plain"]


def test_budget_keeps_the_most_sensitive_layer_float_and_a_rerun_keeps_it():
    feeds = _feeds(outlier=100.0)
    m = _dense()
    result = QuantizeInsert(calibration="minmax", budget_cosine=0.9999).run(m, feeds)
    stats = result.stats
    assert stats["budget_cosine_first"] < 0.9999 <= stats["budget_cosine"]
    assert stats["budget_met"] == 1 and stats["layers_float"] == 1
    assert stats["layer.dense/MatMul.float_budget"] == 1
    assert stats["layer.dense/MatMul.sensitivity"] > stats["layer.out/MatMul.sensitivity"]
    assert json.loads(result.model.metadata[FLOAT_KEY]) == ["dense/MatMul"]
    assert _node(result.model, "dense/MatMul").inputs[1].name == "w"
    again = QuantizeInsert(calibration="minmax", budget_cosine=0.9999).run(result.model, feeds)
    assert not again.changed and again.stats["layers_float_recorded"] == 1


def test_sensitivity_batches_hold_about_64_sequences_spread_over_the_set():
    def batches(count, size):
        return [{"input_ids": np.zeros((size, 4), np.int64)}] * count

    assert sensitivity_batches(batches(17, 16)) == [0, 5, 11, 16]
    ones = sensitivity_batches(batches(265, 1))
    assert len(ones) == 64 and ones[0] == 0 and ones[-1] == 264
    assert sensitivity_batches(batches(2, 16)) == [0, 1]
    assert sensitivity_batches([]) == []


def test_predicted_float_count_sums_the_gains_of_the_most_sensitive():
    assert predicted_count(0.990, [0.004, 0.002, 0.001, 0.0005], 0.997) == 3
    assert predicted_count(0.990, [0.001, -0.001], 0.997) == 2
    assert predicted_count(0.990, [0.01], 0.997) == 1


def test_attention_matmuls_quantize_both_inputs():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["y"], name="scores"),
    ]
    m = model(
        nodes,
        [tensor("x", ["batch", SEQ, K])],
        [tensor("y", ["batch", SEQ, SEQ])],
        [initializer("w", _weight())],
    )
    feeds = _feeds()
    assert QuantizeInsert(calibration="minmax").run(m, feeds).stats["attention_quantized"] == 0
    result = QuantizeInsert(calibration="minmax", attention=True).run(m, feeds)
    check(result.model)
    assert result.stats["attention_quantized"] == 1
    scores = _node(result.model, "scores")
    quantizers = [t.inputs[0].inputs[0].inputs[0] for t in scores.inputs]
    assert [np.asarray(q.inputs[2].values).dtype for q in quantizers] == [np.uint8, np.int8]
    f = feeds[0]
    assert _relative(run(m, f)["y"], run(result.model, f)["y"]) < 0.03
    dynamic = QuantizeInsert(mode="dynamic", attention=True).run(m).model
    assert _ops(dynamic).count("DynamicQuantizeLinear") == 3


def test_verify_each_and_the_named_pipeline_run():
    feeds = _feeds()
    verify = [VerifyEach(feeds=list(feeds))]
    result = run_pipeline(_dense(), parse("quantize-insert"), verify, data=feeds)
    assert result.changed


def test_options_are_validated():
    with pytest.raises(ValueError, match="smooth"):
        QuantizeInsert(smooth=1.5)
    with pytest.raises(ValueError, match="budget-cosine"):
        QuantizeInsert(budget_cosine=1.5)
    with pytest.raises(ValueError, match="percentile"):
        QuantizeInsert(percentile=20.0)
    with pytest.raises(ValueError, match="not a valid regex"):
        QuantizeInsert(exclude=("(",))
    with pytest.raises(OptionError, match="expected one of minmax, percentile, entropy, mse"):
        parse("quantize-insert{calibration=kl}")
    with pytest.raises(OptionError, match="unknown option"):
        parse("quantize-insert{bits=4}")


def test_static_mode_needs_calibration_data():
    m = _dense()
    with pytest.raises(PreconditionError, match="needs calibration data"):
        QuantizeInsert().run(m)
    with pytest.raises(PreconditionError, match="needs calibration data"):
        QuantizeInsert(mode="dynamic", smooth=0.5).run(m)


def test_old_opsets_and_graphs_without_layers_are_refused():
    old = dense([2, K], _weight(), activation=None, opset=11)
    with pytest.raises(PreconditionError, match="opset >= 13"):
        QuantizeInsert(mode="dynamic").requires(old)
    relu = model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [tensor("x", [2, K])],
        [tensor("y", [2, K])],
    )
    with pytest.raises(PreconditionError, match="no MatMul/Gemm"):
        QuantizeInsert(mode="dynamic").requires(relu)


@pytest.mark.slow
def test_minilm_int8_keeps_sentence_embeddings(minilm_path):
    import nlpress
    from nlpress.ir.verify import session
    from nlpress.models import zoo
    from nlpress.models.metrics import fidelity
    from nlpress.models.text import load_tokenizer

    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    reference = session(nlpress.ir.load_model(minilm_path), optimize=True)
    result = nlpress.optimize("minilm-l6", "int8")
    check(result.model)
    quality = fidelity(session(result.model), reference, tokenizer)
    assert quality.mean_cosine >= 0.995
    assert quality.recall_at_1 >= quality.reference_recall_at_1 - 0.01
    stats = result.records[1].stats
    assert stats["tables_quantized"] == 3  # word, position and token-type embeddings
    assert stats["model_bytes_after"] <= 0.3 * stats["model_bytes_before"]


@pytest.mark.slow
def test_a_second_exporter_s_four_output_model_keeps_its_embeddings():
    """paraphrase-MiniLM-L3-v2 as its package exported it: two int64 outputs come first."""
    import nlpress
    from nlpress.ir.verify import session
    from nlpress.models import zoo
    from nlpress.models.metrics import fidelity
    from nlpress.models.text import load_tokenizer

    entry = zoo.get("paraphrase-minilm-l3")
    tokenizer = load_tokenizer(str(entry.tokenizer()))
    reference = session(nlpress.ir.load_model(zoo.model_path(entry.name)), optimize=True)
    result = nlpress.optimize(entry.name, "int8")
    check(result.model)
    quality = fidelity(session(result.model), reference, tokenizer)
    assert quality.mean_cosine >= 0.995
    assert quality.recall_at_1 >= quality.reference_recall_at_1 - 0.01
    stats = result.records[1].stats
    assert stats["model_bytes_after"] <= 0.3 * stats["model_bytes_before"]


def _text_feeds(batches=4, batch=4, seq=SEQ, vocab=30522):
    """Seeded token ids with a padded tail in every other row, and their attention mask."""
    rng = np.random.default_rng(7)
    feeds = []
    for _ in range(batches):
        mask = np.ones((batch, seq), np.int64)
        mask[::2, seq // 2 :] = 0
        ids = rng.integers(1, vocab, (batch, seq)).astype(np.int64) * mask
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return tuple(feeds)


def _pooled_cosine_of_tokens(a, b, feeds):
    """The mean cosine of the `tokens` outputs of two models, mean-pooled over the mask."""
    cosines = []
    for batch in feeds:
        weights = batch["attention_mask"][..., None].astype(np.float64)
        x, y = (run(m, {"input_ids": batch["input_ids"]})["tokens"] for m in (a, b))
        x, y = ((v * weights).sum(1) / weights.sum(1) for v in (x, y))
        cosines.extend((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    return float(np.mean(cosines))


def test_the_budget_measures_the_float_output_not_an_integer_copy_before_it():
    m, feeds = copied_ids_encoder(), _text_feeds()
    result = QuantizeInsert(calibration="minmax", budget_cosine=0.5).run(m, feeds)
    cosine = result.stats["budget_cosine"]
    assert result.stats["budget_met"] == 1 and cosine < 1
    assert cosine == pytest.approx(_pooled_cosine_of_tokens(m, result.model, feeds), abs=1e-6)
