import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
from graphs import dense, initializer, model, tensor
from onnx import helper

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import weighted_matmuls
from nlpress.ir.verify import check, run
from nlpress.passes import PASSES, OptionError, PreconditionError, parse
from nlpress.passes.base import Pass, PassResult, option_fields
from nlpress.passes.compress.grams import token_input_grams
from nlpress.passes.factorize_matmul import (
    MARK_U,
    MARK_V,
    FactorizeMatmul,
    randomized_svd,
    round_rank,
    useful_rank_limit,
)
from nlpress.passes.instruments import run_pipeline

K, N, ROWS = 24, 16, 256


def _weight(k=K, n=N, seed=0, rank=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n))
    if rank is not None:
        w = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n))
    return w.astype(np.float32)


def _bias(seed):
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def _inputs(seed=1):
    # Anisotropic, correlated, off-centre inputs: where activation-aware methods pay off.
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.05, K)
    mixing = np.linalg.qr(rng.standard_normal((K, K)))[0]
    x = (rng.standard_normal((ROWS, K)) * scales) @ mixing + 0.3
    return x.astype(np.float32)


def _dense(w, bias=None):
    """x[batch, 8, K] -> MatMul(W) (-> Add(b)) -> Relu -> y, which `_feeds` calibrate."""
    return dense(["batch", 8, K], w, bias)


def _feeds():
    x = _inputs()
    return [{"x": x[i : i + 64].reshape(8, 8, K)} for i in range(0, ROWS, 64)]


def _factors(result_model):
    """The first and second factor of the only factorized layer."""
    values = {
        m.node.name: np.asarray(m.weight.values) for m in weighted_matmuls(result_model.graph)
    }
    return values[f"dense/MatMul{MARK_U}"], values[f"dense/MatMul{MARK_V}"]


def _layer_outputs(w, b, first, second, offset):
    x = _inputs().astype(np.float64)
    want = x @ w + (0 if b is None else b)
    got = x @ first @ second + (0 if offset is None else offset)
    return want, got


def _relative(want, got):
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def test_every_option_is_documented_and_the_pass_is_registered():
    assert PASSES["factorize-matmul"] is FactorizeMatmul
    assert set(FactorizeMatmul.option_help()) >= set(option_fields(FactorizeMatmul))


def test_pipeline_text_round_trips_with_the_default_rank_option():
    p = parse("factorize-matmul{method=activation include=layer.0,intermediate recover=true}")
    only = p.passes[0]
    assert only.param_ratio == 0.5
    assert only.include == ("layer.0", "intermediate")
    assert parse(str(p)) == p


def test_exact_reconstruction_at_the_weights_full_rank():
    w = _weight(rank=3)
    result = FactorizeMatmul(rank_ratio=3 / N).run(_dense(w))
    assert result.changed
    assert result.stats["layer.dense/MatMul.r"] == 3
    first, second = _factors(result.model)
    np.testing.assert_allclose(first @ second, w, atol=1e-4)
    x = _feeds()[0]
    np.testing.assert_allclose(run(result.model, x)["y"], np.maximum(x["x"] @ w, 0), atol=1e-3)


def test_full_rank_factors_reproduce_any_weight():
    w = _weight().astype(np.float64)
    fit = FactorizeMatmul(rank_ratio=1.0).factorize(w, None, None)
    np.testing.assert_allclose(fit.first @ fit.second, w, atol=1e-10)


def test_svd_error_is_the_tail_of_the_singular_values():
    w = _weight()
    rank = 5
    result = FactorizeMatmul(rank_ratio=rank / N).run(_dense(w))
    first, second = _factors(result.model)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    error = np.linalg.norm(first.astype(np.float64) @ second - w) ** 2
    assert error == pytest.approx(np.sum(s[rank:] ** 2), rel=1e-4)
    assert result.stats["layer.dense/MatMul.weight_error"] == pytest.approx(
        np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)), rel=1e-4
    )


def test_activation_error_is_the_tail_of_the_whitened_spectrum_and_beats_svd():
    w, rank = _weight(), 5
    grams = _gram()
    fit = FactorizeMatmul(rank_ratio=rank / N, method="activation", damping=0.0).factorize(
        w.astype(np.float64), None, grams
    )
    want, got = _layer_outputs(w, None, fit.first, fit.second, None)
    x = _inputs().astype(np.float64)
    s = np.linalg.svd(np.linalg.cholesky(x.T @ x).T @ w, compute_uv=False)
    assert _relative(want, got) ** 2 == pytest.approx(
        np.sum(s[rank:] ** 2) / np.sum(s**2), rel=1e-4
    )
    plain = FactorizeMatmul(rank_ratio=rank / N).factorize(w.astype(np.float64), None, None)
    assert _relative(*_layer_outputs(w, None, plain.first, plain.second, None)) > 2 * _relative(
        want, got
    )


def _gram():
    x = _inputs().astype(np.float64)
    xa = np.hstack([x, np.ones((len(x), 1))])
    return xa.T @ xa


@pytest.mark.parametrize("method", ["svd", "activation"])
def test_recovery_reduces_output_error(method):
    w, b = _weight(), _bias(3)
    m, feeds = _dense(w, b), _feeds()
    plain = FactorizeMatmul(rank_ratio=0.25, method=method).run(m, feeds)
    recovered = FactorizeMatmul(rank_ratio=0.25, method=method, recover=True).run(m, feeds)
    before = plain.stats["layer.dense/MatMul.output_error"]
    after = recovered.stats["layer.dense/MatMul.output_error"]
    assert after < before
    # The stat is the real relative error of the layer on the calibration inputs.
    first, second = _factors(recovered.model)
    add = next(n for n in recovered.model.graph.nodes if n.op == "Add")
    offset = np.asarray(add.inputs[1].values)
    assert add.name == "dense/Add", "the bias stays where it was"
    assert _relative(*_layer_outputs(w, b, first, second, offset)) == pytest.approx(after, rel=1e-3)


def test_sequential_matches_one_shot_on_the_first_layer():
    # The first layer's inputs are the teacher's either way, so the fits agree.
    m, feeds = _dense(_weight(), _bias(3)), _feeds()
    options = FactorizeMatmul(rank_ratio=0.25, method="activation", recover=True)
    one_shot = options.run(m, feeds).stats["layer.dense/MatMul.output_error"]
    sequential = dataclasses.replace(options, sequential=True).run(m, feeds)
    assert sequential.changed
    assert sequential.stats["layer.dense/MatMul.output_error"] == pytest.approx(one_shot)


def test_rewritten_graph_checks_and_runs_in_ort_within_the_stated_error():
    w, b = _weight(), _bias(3)
    m = _dense(w, b)
    result = FactorizeMatmul(param_ratio=0.6, method="activation", recover=True).run(m, _feeds())
    check(result.model)
    assert [n.op for n in result.model.graph.nodes] == ["MatMul", "MatMul", "Add", "Relu"]
    for feeds in _feeds():
        want, got = run(m, feeds)["y"], run(result.model, feeds)["y"]
        assert _relative(want, got) < 0.3


def test_rank_selection_options():
    w = _weight()
    limit = useful_rank_limit(K, N)  # ceil(24 * 16 / 40) = 10
    assert limit == 10
    ranks = {
        "param": FactorizeMatmul(param_ratio=0.6).factorize(w, None, None).rank,
        "rank": FactorizeMatmul(rank_ratio=0.25).factorize(w, None, None).rank,
        "energy": FactorizeMatmul(energy=0.5).factorize(w, None, None).rank,
    }
    assert ranks["param"] == 5  # floor(0.6 * 9.6)
    assert ranks["rank"] == 4
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    assert share[ranks["energy"] - 1] >= 0.5 > share[ranks["energy"] - 2]


def test_ranks_are_rounded_to_the_rank_multiple():
    assert [round_rank(r, 16, up=False) for r in (5, 16, 26, 115, 184)] == [5, 16, 16, 112, 176]
    assert [round_rank(r, 16, up=True) for r in (5, 16, 17, 115)] == [5, 16, 32, 128]
    assert round_rank(115, 1, up=False) == 115
    w = _weight(96, 80, seed=2).astype(np.float64)  # param-ratio 0.6: floor(26.2) = 26
    assert FactorizeMatmul(param_ratio=0.6, rank_multiple=1).factorize(w, None, None).rank == 26
    assert FactorizeMatmul(param_ratio=0.6).factorize(w, None, None).rank == 16  # down
    energy = FactorizeMatmul(energy=0.5).factorize(w, None, None).rank
    exact = FactorizeMatmul(energy=0.5, rank_multiple=1).factorize(w, None, None).rank
    assert energy % 16 == 0 and exact <= energy < exact + 16  # up: the share is still kept
    with pytest.raises(ValueError, match="rank-multiple"):
        FactorizeMatmul(rank_multiple=0)


def test_grams_leave_out_padding_positions():
    x = _inputs().reshape(32, 8, K)
    mask = np.ones((32, 8), np.int64)
    mask[:, 5:] = 0
    x[:, 5:] = 1e3  # padding rows that would swamp the Gram if they were counted
    m = _dense(_weight())
    layer = next(iter(weighted_matmuls(m.graph)))
    (gram,) = token_input_grams(m, [layer.activation], [{"x": x, "attention_mask": mask}])
    rows = np.hstack([x[:, :5].reshape(-1, K), np.ones((160, 1))]).astype(np.float64)
    np.testing.assert_allclose(gram, rows.T @ rows, rtol=1e-5)


def test_layer_cosine_picks_the_smallest_rank_that_meets_it():
    w, b = _weight(), _bias(3)
    grams = _gram()
    options = FactorizeMatmul(layer_cosine=0.95, method="activation")
    fit = options.factorize(w.astype(np.float64), b.astype(np.float64), grams)

    def cosine(f):
        want, got = _layer_outputs(w, b, f.first, f.second, f.bias)
        return np.sum(want * got) / np.linalg.norm(want) / np.linalg.norm(got)

    assert cosine(fit) >= 0.95
    smaller = dataclasses.replace(options, layer_cosine=None, rank_ratio=(fit.rank - 1) / N)
    assert cosine(smaller.factorize(w.astype(np.float64), b.astype(np.float64), grams)) < 0.95


def test_layers_without_gain_are_skipped_and_say_so():
    result = FactorizeMatmul(rank_ratio=0.75).run(_dense(_weight()))
    assert not result.changed
    assert result.stats["skipped_no_gain"] == 1
    assert result.stats["layer.dense/MatMul.skipped_no_gain"] == 1
    assert result.stats["layer.dense/MatMul.r"] == 12


def test_changed_is_exact_and_a_second_run_changes_nothing():
    m, feeds = _dense(_weight(), _bias(3)), _feeds()
    once = FactorizeMatmul(param_ratio=0.6, recover=True).run(m, feeds)
    assert once.changed
    again = FactorizeMatmul(param_ratio=0.6, recover=True).run(once.model, feeds)
    assert not again.changed
    assert again.stats["factorized"] == 0
    assert len(m.graph.nodes) == 3, "the input model is left as it was"


def test_include_and_exclude_select_by_node_name():
    m = _dense(_weight())
    assert not FactorizeMatmul(include=("attention",)).run(m).changed
    assert not FactorizeMatmul(exclude=("dense",)).run(m).changed
    assert FactorizeMatmul(include=("den.e",)).run(m).changed


def _gemm(trans_b, alpha=1.0, beta=1.0) -> tuple[Model, tuple[Feeds, ...]]:
    """x[batch, K] -> Gemm(W, c) -> y, and four batches of `_inputs` to calibrate it."""
    w = _weight()
    stored = w.T.copy() if trans_b else w
    c = _bias(4)
    node = helper.make_node(
        "Gemm", ["x", "w", "c"], ["y"], name="pool/Gemm", transB=trans_b, alpha=alpha, beta=beta
    )
    m = model(
        [node],
        [tensor("x", ["batch", K])],
        [tensor("y", ["batch", N])],
        [initializer("w", stored), initializer("c", c)],
    )
    feeds = tuple({"x": _inputs()[i : i + 64]} for i in range(0, ROWS, 64))
    return m, feeds


@pytest.mark.parametrize(("trans_b", "alpha", "beta"), [(0, 1.0, 1.0), (1, 0.5, 2.0)])
def test_gemm_keeps_its_bias_and_attributes(trans_b, alpha, beta):
    m, batches = _gemm(trans_b, alpha, beta)
    result = FactorizeMatmul(param_ratio=0.9, recover=True).run(m, batches)
    gemm = next(n for n in result.model.graph.nodes if n.op == "Gemm")
    assert gemm.attrs["transB"] == trans_b and gemm.attrs["alpha"] == alpha
    assert len(gemm.inputs) == 3
    check(result.model)
    feeds = batches[0]
    want, got = run(m, feeds)["y"], run(result.model, feeds)["y"]
    assert _relative(want, got) == pytest.approx(
        result.stats["layer.pool/Gemm.output_error"], rel=0.5
    )
    assert _relative(want, got) < 0.3


def _two_branches(quiet_scale):
    """y = x W1 + x W2, W2 with the same spectrum shape as W1 but scaled by `quiet_scale`.

    `_feeds` calibrate it.
    """
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="loud/MatMul"),
        helper.make_node("MatMul", ["x", "w2"], ["h2"], name="quiet/MatMul"),
        helper.make_node("Add", ["h1", "h2"], ["y"], name="sum"),
    ]
    inits = [initializer("w1", _weight(seed=5)), initializer("w2", _weight(seed=6) * quiet_scale)]
    m = model(nodes, [tensor("x", ["batch", 8, K])], [tensor("y", ["batch", 8, N])], inits)
    return m


def test_sensitivity_allocation_gives_rank_to_what_the_output_sees():
    m = _two_branches(quiet_scale=0.05)
    options = {"param_ratio": 0.5, "method": "activation", "rank_multiple": 1}
    measured = FactorizeMatmul(**options, allocation="sensitivity").run(m, _feeds())
    relative = FactorizeMatmul(**options, allocation="global").run(m, _feeds())
    stats = measured.stats
    assert stats["layer.loud/MatMul.r"] > stats["layer.quiet/MatMul.r"]
    assert stats["layer.loud/MatMul.sensitivity"] > 10 * stats["layer.quiet/MatMul.sensitivity"]
    assert stats["params_after"] <= 0.5 * stats["params_before"]
    feeds = _feeds()[0]
    want = run(m, feeds)["y"]
    assert _relative(want, run(measured.model, feeds)["y"]) < _relative(
        want, run(relative.model, feeds)["y"]
    )


def test_randomized_svd_matches_the_exact_truncation():
    w = _weight(64, 48, rank=None).astype(np.float64)
    _, s, _ = randomized_svd(w, 8, seed=0)
    exact = np.linalg.svd(w, compute_uv=False)[:8]
    np.testing.assert_allclose(s, exact, rtol=0.05)
    fit = FactorizeMatmul(rank_ratio=8 / 48, method="randomized").factorize(w, None, None)
    assert fit.rank == 8


def test_options_are_validated():
    with pytest.raises(ValueError, match="at most one of"):
        FactorizeMatmul(rank_ratio=0.3, energy=0.9)
    with pytest.raises(ValueError, match="param-ratio must be in"):
        FactorizeMatmul(param_ratio=1.0)
    with pytest.raises(ValueError, match="bad regex"):
        FactorizeMatmul(include=("(",))
    for allocation in ("global", "sensitivity"):
        with pytest.raises(ValueError, match=f"allocation={allocation} spends"):
            FactorizeMatmul(energy=0.9, allocation=allocation)
        with pytest.raises(ValueError, match="not with sequential"):
            FactorizeMatmul(allocation=allocation, sequential=True)
    with pytest.raises(OptionError, match="method"):
        parse("factorize-matmul{method=qr}")


def test_data_hungry_options_need_calibration():
    m = _dense(_weight())
    FactorizeMatmul().requires(m)
    assert FactorizeMatmul().run(m).changed  # plain SVD needs no data
    data_hungry = (
        {"method": "activation"},
        {"recover": True},
        {"layer_cosine": 0.9},
        {"allocation": "sensitivity"},
    )
    for options in data_hungry:
        FactorizeMatmul(**options).requires(m)  # the data is checked when the pass runs
        with pytest.raises(PreconditionError, match="needs calibration data"):
            FactorizeMatmul(**options).run(m)


@dataclasses.dataclass(frozen=True)
class _QuantizeInsert(Pass):
    """Stands for quantize-insert, which does not exist yet."""

    name = "quantize-insert"

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        return PassResult(model, False, {})


@dataclasses.dataclass(frozen=True)
class _PruneSparsify(_QuantizeInsert):
    """Stands for prune-sparsify."""

    name = "prune-sparsify"


def test_order_after_quantize_insert_is_refused_before_any_pass_runs():
    from nlpress.passes.pipeline import Pipeline

    m = _dense(_weight())
    bad = Pipeline((_QuantizeInsert(), FactorizeMatmul()))
    with pytest.raises(PreconditionError, match=r"cannot run after quantize-insert.*before"):
        run_pipeline(m, bad)
    good = Pipeline((_PruneSparsify(), FactorizeMatmul(), _QuantizeInsert()))
    assert run_pipeline(m, good).changed


def test_quantized_weights_are_refused():
    w = _weight()
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    m = model(
        nodes,
        [tensor("x", [2, K])],
        [tensor("y", [2, N])],
        [
            initializer("wq", np.round(w * 10).astype(np.int8)),
            initializer("scale", np.float32(0.1)),
        ],
    )
    with pytest.raises(PreconditionError, match=r"already quantized.*'mm'.*before quantize-insert"):
        FactorizeMatmul().requires(m)


def test_sparse_weights_are_left_sparse():
    w = _weight()
    w[:, ::2] = 0
    result = FactorizeMatmul(rank_ratio=0.25).run(_dense(w))
    assert not result.changed
    assert result.stats["skipped_sparse"] == 1


def test_compiles_with_tvm(tmp_path):
    targets = pytest.importorskip("nlpress.targets")
    if not hasattr(targets, "build_artifact"):
        pytest.skip("nlpress.targets has no build_artifact yet")
    fixed = dense([2, 8, K], _weight(), _bias(3), activation=None)
    result = FactorizeMatmul(param_ratio=0.6).run(fixed)
    target = targets.get_target("x86")
    out = targets.build_artifact(result.model, target, tmp_path / "art", manifest={})
    feeds = {"x": _inputs()[:16].reshape(2, 8, K)}
    got = targets.load(out).run(None, feeds)[0]
    np.testing.assert_allclose(got, run(result.model, feeds)["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_minilm_activation_recovery_beats_svd(minilm_path):
    import nlpress
    from nlpress.ir.verify import session
    from nlpress.models import zoo
    from nlpress.models.metrics import fidelity
    from nlpress.models.text import load_tokenizer

    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    reference = session(nlpress.ir.load_model(minilm_path), optimize=True)
    cosines = {}
    for method, recover in (("svd", "false"), ("activation", "true")):
        options = f"param-ratio=0.6 method={method} recover={recover} include=encoder"
        text = f"fold,factorize-matmul{{{options}}},cleanup"
        result = nlpress.optimize("minilm-l6", text)
        cosines[method] = fidelity(
            session(result.model, optimize=True), reference, tokenizer
        ).mean_cosine
    assert cosines["activation"] > cosines["svd"] + 0.1


def test_budget_cosine_is_the_deprecated_spelling_of_layer_cosine(caplog):
    with caplog.at_level("WARNING"):
        options = parse("factorize-matmul{budget-cosine=0.9}").passes[0]
    assert "deprecated" in caplog.text and "layer-cosine" in caplog.text
    assert options == FactorizeMatmul(layer_cosine=0.9)
    assert "layer-cosine=0.9" in str(options)
