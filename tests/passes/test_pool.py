import graphs
import numpy as np
import pytest
from onnx import helper

from nlpress.compiler import optimize
from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check, make_feeds, run
from nlpress.passes import OptionError, PreconditionError, VerifyEach, parse, run_pipeline
from nlpress.passes.pool import Pool


def _tokens_model(opset: int, mask: bool = True):
    """h[batch, sequence, 4] -> Relu -> tokens; optionally an attention_mask input."""
    mask_input = ", int64[batch, sequence] attention_mask" if mask else ""
    return graphs.text_model(
        f"""g (float[batch, sequence, 4] h{mask_input}) => (float[batch, sequence, 4] tokens) {{
            [relu] tokens = Relu(h)
        }}""",
        opset,
    )


def _mean_pool(tokens, mask):
    weights = mask[..., None].astype(np.float64)
    return (tokens * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)


def _feeds(model, seed=0):
    feeds = make_feeds(model, {"batch": 3, "sequence": 6}, seed=seed)
    if "attention_mask" in feeds:
        feeds["attention_mask"] = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [0] * 6], np.int64)
    return feeds


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_mean_pooling_over_the_mask_in_every_opset(opset):
    model = _tokens_model(opset)
    result = Pool().run(model)
    assert result.changed and result.stats["pooled"] == 1
    check(result.model)
    feeds = _feeds(result.model)
    out = run(result.model, feeds)
    assert list(out) == ["tokens", "sentence_embedding"]
    want = _mean_pool(out["tokens"].astype(np.float64), feeds["attention_mask"])
    np.testing.assert_allclose(out["sentence_embedding"], want, atol=1e-6)
    assert not np.any(out["sentence_embedding"][2])  # no real token: 0 / eps, not NaN


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_without_a_mask_every_token_counts(opset):
    model = _tokens_model(opset, mask=False)
    pooled = Pool(normalize=True).run(model).model
    out = run(pooled, _feeds(pooled))
    want = out["tokens"].mean(axis=1)
    want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(out["sentence_embedding"], want, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "pipeline", "mask"),
    [
        ("pool-mean", "pool{mode=mean}", True),
        ("pool-cls-normalized", "pool{mode=cls normalize=true}", False),
    ],
)
def test_the_graphs_it_adds_are_golden(name, pipeline, mask, golden):
    result = run_pipeline(_tokens_model(17, mask), parse(pipeline))
    golden(name, dump_text(result.model))


def test_bert_mean_normalized_and_cls_against_numpy():
    folded = optimize("bert-tiny-random", "fold,cleanup").model
    feeds = _feeds(folded, seed=3)
    mean = run(Pool(mode="mean", normalize=True).run(folded).model, feeds)
    tokens = mean["last_hidden_state"].astype(np.float64)
    want = _mean_pool(tokens, feeds["attention_mask"])
    norms = np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(
        mean["sentence_embedding"], want / np.maximum(norms, 1e-12), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.norm(mean["sentence_embedding"][:2], axis=1), 1, atol=1e-6)
    cls = run(Pool(mode="cls").run(folded).model, feeds)
    np.testing.assert_array_equal(cls["sentence_embedding"], cls["last_hidden_state"][:, 0])
    assert list(cls)[:2] == ["last_hidden_state", "pooler_output"]  # outputs kept, in order


def test_the_pipeline_text_and_a_second_run():
    pipeline = parse("fold,pool{normalize=true}")
    assert str(pipeline) == "fold{max-bytes=1048576},pool{mode=mean normalize=true}"
    verify = VerifyEach()
    result = optimize("bert-tiny-random", pipeline, instruments=[verify])
    assert verify.worst["pool"] == 0.0  # the outputs it kept are untouched
    again = Pool(mode="cls").run(result.model)
    assert not again.changed and again.model is result.model


def test_bad_options_and_models_are_refused():
    with pytest.raises(OptionError, match="expected one of mean, cls"):
        parse("pool{mode=max}")
    flat = graphs.model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [graphs.tensor("x", ["batch", 4])],
        [graphs.tensor("y", ["batch", 4])],
    )
    with pytest.raises(PreconditionError, match=r"token embeddings \[batch, sequence, hidden\]"):
        Pool().requires(flat)


def test_the_float_output_is_pooled_after_an_integer_copy_of_the_ids():
    m = graphs.copied_ids_encoder()
    out = Pool().run(m).model
    feeds = {"input_ids": np.arange(1, 13, dtype=np.int64).reshape(2, 6)}
    found = run(out, feeds)
    np.testing.assert_allclose(found["sentence_embedding"], found["tokens"].mean(1), atol=1e-6)
    ids_only = graphs.text_model(
        "g (int64[b, s] input_ids) => (int64[b, s] ids) { [copy] ids = Identity(input_ids) }"
    )
    with pytest.raises(PreconditionError, match=r"pool: no output of the model \(ids\) is one"):
        Pool().requires(ids_only)
