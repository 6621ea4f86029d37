import numpy as np
import pytest
from graphs import dense, weights

from nlpress.compiler import Calibration, calibration_batches, optimize
from nlpress.ir import NlpressError, UsageError, load_model
from nlpress.models import zoo
from nlpress.passes import parse, run_pipeline
from nlpress.passes.base import PreconditionError
from nlpress.passes.calibration import activations, require_feeds
from nlpress.passes.compress.grams import channel_norms, second_moments
from nlpress.passes.prune_sparsify import PruneSparsify

PRUNE = "prune-sparsify{sparsity=0.5 criterion=activation}"


def _two_layer():
    return dense(["batch", "seq", 4], weights([4, 3], 1), then=weights([3, 2], 2))


def _batches(n=3):
    rng = np.random.default_rng(0)
    return tuple({"x": rng.standard_normal((2, 5, 4)).astype(np.float32)} for _ in range(n))


def test_activations_are_the_intermediate_values():
    m = _two_layer()
    relu = next(n for n in m.graph.nodes if n.op == "Relu")
    feeds = _batches()
    for batch, (r, x) in zip(
        feeds, activations(m, [relu.outputs[0], relu.inputs[0]], feeds), strict=True
    ):
        expected = batch["x"] @ weights([4, 3], 1)
        np.testing.assert_allclose(x, expected, rtol=1e-5)
        np.testing.assert_allclose(r, np.maximum(expected, 0), rtol=1e-5)


def test_second_moments_and_channel_norms_cover_every_position():
    m = _two_layer()
    x = m.graph.inputs[0]
    feeds = _batches()
    rows = np.concatenate([b["x"].reshape(-1, 4) for b in feeds]).astype(np.float64)
    (gram,) = second_moments(m, [x], feeds)
    np.testing.assert_allclose(gram, rows.T @ rows, rtol=1e-6)
    (norms,) = channel_norms(m, [x], feeds)
    np.testing.assert_allclose(norms, np.linalg.norm(rows, axis=0), rtol=1e-6)


def test_passes_that_need_data_say_how_to_give_it():
    with pytest.raises(PreconditionError, match="--calibration-text FILE with --tokenizer"):
        require_feeds((), "some-pass")
    feeds = _batches(1)
    assert require_feeds(feeds, "p") == feeds
    with pytest.raises(PreconditionError, match="--calibration-text FILE with --tokenizer"):
        PruneSparsify(sparsity=0.5, criterion="activation").run(_two_layer())


def _matmul_weights(m):
    return [np.asarray(n.inputs[1].values) for n in m.graph.nodes if n.op == "MatMul"]


def test_run_pipeline_hands_the_batches_to_its_passes_and_not_to_the_model():
    m, feeds = _two_layer(), _batches(2)
    pipeline = parse(f"identity-elim,{PRUNE},cleanup")
    result = run_pipeline(m, pipeline, data=feeds)
    assert result.records[1].changed
    direct = PruneSparsify(sparsity=0.5, criterion="activation").run(m, feeds).model
    for got, want in zip(_matmul_weights(result.model), _matmul_weights(direct), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not hasattr(result.model, "calibration")
    with pytest.raises(PreconditionError, match="prune-sparsify needs calibration data"):
        run_pipeline(m, pipeline)


def test_zoo_models_bring_their_calibration_text():
    entry = zoo.get("minilm-l6")
    batches = calibration_batches(Calibration(), entry, {})
    assert sum(len(b["input_ids"]) for b in batches) >= 200
    static = calibration_batches(Calibration(), entry, {"input_ids": (4, 64)})
    assert {b["input_ids"].shape for b in static} == {(4, 64)}
    assert calibration_batches(Calibration(), None, {}) == ()


def test_batches_given_from_python_reach_the_pass():
    calibration = Calibration(batches=_batches(2))
    result = optimize(_two_layer(), PRUNE, calibration=calibration)
    assert result.records[0].changed
    with pytest.raises(PreconditionError, match="needs calibration data"):
        optimize(_two_layer(), PRUNE)


def test_static_quantization_calibrates_on_batches_without_a_text(tiny_bert_path):
    model = load_model(tiny_bert_path)  # an IR model: no zoo calibration text of its own
    ids = np.random.default_rng(0).integers(0, 30522, (4, 8, 12))
    feeds = tuple(
        {"input_ids": i, "attention_mask": np.ones_like(i), "token_type_ids": 0 * i} for i in ids
    )
    pipeline = "fold,quantize-insert{mode=static},cleanup"
    with pytest.raises(PreconditionError, match="quantize-insert needs calibration data"):
        optimize(model, pipeline)
    result = optimize(model, pipeline, calibration=Calibration(batches=feeds))
    stats = result.records[1].stats
    assert result.records[1].changed and stats["layers_quantized"] > 0
    assert "QuantizeLinear" in {n.op for n in result.model.graph.nodes}
    assert result.heldout is None
    assert result.heldout_note == "no held-out fidelity: the calibration batches are feeds, no text"
    missing = Calibration(batches=({"input_ids": ids[0]},))
    with pytest.raises(UsageError, match=r"calibration batches: holds input_ids \(missing atten"):
        optimize(model, pipeline, calibration=missing)


def test_calibration_from_a_text_file_needs_a_tokenizer(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("the first sentence\nand a second, longer one\n")
    with pytest.raises(UsageError, match="needs --tokenizer"):
        calibration_batches(Calibration(text=str(text)), None, {})
    (batch,) = calibration_batches(Calibration(str(text), "minilm-l6"), None, {})
    assert batch["input_ids"].shape[0] == 2


def test_calibration_from_npz(tmp_path):
    path = tmp_path / "feeds.npz"
    np.savez(path, input_ids=np.ones((40, 8), np.int64), attention_mask=np.ones((40, 8), np.int64))
    batches = calibration_batches(Calibration(feeds=str(path)), None, {})
    assert [len(b["input_ids"]) for b in batches] == [16, 16, 8]
    static = calibration_batches(Calibration(feeds=str(path)), None, {"input_ids": (4, 8)})
    assert [len(b["input_ids"]) for b in static] == [4] * 10
    with pytest.raises(UsageError, match="40 rows do not fill batches of 3"):
        calibration_batches(Calibration(feeds=str(path)), None, {"input_ids": (3, 8)})
    np.savez(path, a=np.ones((4, 8)), b=np.ones((5, 8)))
    with pytest.raises(NlpressError, match="sharing their first"):
        calibration_batches(Calibration(feeds=str(path)), None, {})
    path.write_bytes(b"not a zip")
    with pytest.raises(NlpressError, match=r"not an \.npz archive"):
        calibration_batches(Calibration(feeds=str(path)), None, {})
