import sys

import numpy as np
import pytest
import torch
from graphs import copied_ids_encoder, initializer, model, tensor, weights
from onnx import helper

from nlpress.compiler import Calibration, calibration_batches, optimize
from nlpress.ir.verify import check, run
from nlpress.models import zoo
from nlpress.passes import distill as distill_module
from nlpress.passes import torch_graph
from nlpress.passes.base import PreconditionError
from nlpress.passes.distill import (
    DistillSettings,
    distill,
    hidden_states,
    rewritten_initializers,
    splice,
    with_weights,
)
from nlpress.passes.factorize_matmul import FactorizeMatmul
from nlpress.passes.prune_sparsify import PruneSparsify
from nlpress.passes.torch_graph import TorchGraph

STATIC = {"input_ids": (1, 24), "attention_mask": (1, 24), "token_type_ids": (1, 24)}


@pytest.fixture(scope="module")
def feeds():
    """bert-tiny-random's zoo calibration text as static 1x24 batches."""
    return calibration_batches(Calibration(), zoo.get("bert-tiny-random"), STATIC)


@pytest.fixture(scope="module")
def tiny_static():
    """bert-tiny-random folded at a static 1x24, which `feeds` calibrate."""
    return optimize("bert-tiny-random", "fold,cleanup", shapes=STATIC).model


def test_torch_graph_matches_onnx_runtime_on_the_raw_export(tiny_bert_path):
    raw = optimize(tiny_bert_path, "identity-elim").model
    net = TorchGraph(raw, ())
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, 100, (3, 11)),
        "attention_mask": np.array([[1] * 11, [1] * 7 + [0] * 4, [1] * 2 + [0] * 9]),
        "token_type_ids": np.zeros((3, 11), np.int64),
    }
    expected = run(raw, feeds)
    got = net({k: torch.from_numpy(v) for k, v in feeds.items()})
    for want, have in zip(expected.values(), got, strict=True):
        np.testing.assert_allclose(have.detach().numpy(), want, atol=1e-5)


def test_batched_maps_a_static_graph_over_calibration_batches(tiny_static, feeds):
    net = TorchGraph(tiny_static, ())
    stacked = net.batched(feeds[:5])[0].detach().numpy()
    assert stacked.shape[:3] == (5, 1, 24)
    for i, batch in enumerate(feeds[:5]):
        expected = run(tiny_static, batch)[net.output_names[0]]
        np.testing.assert_allclose(stacked[i], expected, atol=1e-5)


def test_gradients_reach_only_the_trainable_initializers():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Gelu", ["h"], ["g"]),
        helper.make_node("MatMul", ["g", "v"], ["y"]),
    ]
    inits = [initializer("w", weights([4, 6], 1)), initializer("v", weights([6, 3], 2))]
    m = model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 3])], inits, opset=20)
    net = TorchGraph(m, ["v"])
    assert list(net.parameters) == ["v"]
    (y,) = net({"x": torch.ones(2, 4)})
    y.sum().backward()
    assert net.parameters["v"].grad is not None
    assert float(net.parameters["v"].grad.abs().sum()) > 0


def test_an_op_pytorch_cannot_run_is_refused_by_name():
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"])]
    inits = [initializer("k", np.array([2], np.int64))]
    m = model(nodes, [tensor("x", [2, 4])], [tensor("v", [2, 2])], inits)
    with pytest.raises(PreconditionError, match="TopK"):
        TorchGraph(m, ())


def test_rewritten_initializers_are_the_changed_and_new_float_ones():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Add", ["y", "b"], ["z"]),
    ]
    base = [initializer("w", weights([4, 3], 1)), initializer("b", weights([3], 2))]
    teacher = model(nodes, [tensor("x", [2, 4])], [tensor("z", [2, 3])], base)
    changed = [initializer("w", weights([4, 3], 3)), initializer("b", weights([3], 2))]
    student = model(nodes, [tensor("x", [2, 4])], [tensor("z", [2, 3])], changed)
    assert rewritten_initializers(student, teacher) == ["w"]
    assert rewritten_initializers(teacher, teacher) == []


def test_hidden_states_are_the_layer_norm_outputs_both_models_have(tiny_static, feeds):
    pruned = PruneSparsify(pattern="neurons").run(tiny_static, feeds).model
    norms = [n.outputs[0].name for n in tiny_static.graph.nodes if n.op == "LayerNormalization"]
    assert len(norms) == 5  # embeddings, then two per block
    assert hidden_states(pruned, tiny_static) == norms


def _text_batch(lengths, length=10, start=1):
    ids = np.zeros((len(lengths), length), np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = np.arange(start, start + n) + 100 * row
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_splice_joins_a_head_and_a_donor_tail_under_a_prefix_mask():
    rng = np.random.default_rng(0)
    own, donor = _text_batch([6, 4]), _text_batch([8, 9], start=50)
    for _ in range(20):
        out = splice(own, [donor], rng)
        for key in own:
            assert out[key].shape == own[key].shape
        for row in range(2):
            n = int(out["attention_mask"][row].sum())
            assert np.array_equal(out["attention_mask"][row], np.arange(10) < n)
            ids = out["input_ids"][row, :n]
            assert ids[0] == own["input_ids"][row, 0]  # the first token is the row's own
            assert ids[-1] in donor["input_ids"][[0, 1], [7, 8]]  # the last is a donor's last
            assert np.all(out["input_ids"][row, n:] == 0)
    assert own["input_ids"][0, 5] == 6  # the input batch is left as it was


def test_splice_leaves_batches_without_a_prefix_mask_alone():
    rng = np.random.default_rng(0)
    left_padded = _text_batch([4])
    left_padded["attention_mask"] = left_padded["attention_mask"][:, ::-1].copy()
    assert splice(left_padded, [_text_batch([5])], rng) is left_padded
    plain = {"x": np.ones((2, 3), np.float32)}
    assert splice(plain, [plain], rng) is plain


def test_distillation_lowers_the_held_out_loss_of_a_damaged_student(tiny_static, feeds):
    rng = np.random.default_rng(0)
    damaged = {
        name: value + value.std() * rng.standard_normal(value.shape).astype(np.float32)
        for name, value in _weights(tiny_static).items()
        if value.ndim == 2 and value.shape[0] == 64  # the encoder's weights, hidden 64
    }
    student = with_weights(tiny_static, damaged)
    result = distill(student, tiny_static, feeds[:48], DistillSettings(2, learning_rate=1e-3))
    assert result.loss_after < 0.5 * result.loss_before
    check(result.model)
    assert set(rewritten_initializers(result.model, student)) <= set(damaged)


def test_distillation_keeps_pruned_weights_at_zero(tiny_static, feeds):
    pruned = PruneSparsify(pattern="2:4").run(tiny_static, feeds).model
    result = distill(pruned, tiny_static, feeds[:32], DistillSettings(epochs=1))
    before = _weights(pruned)
    for name, value in _weights(result.model).items():
        assert np.array_equal(value == 0, before[name] == 0) or not np.any(before[name] == 0)


def test_distillation_returns_the_student_when_nothing_beats_it(tiny_static, feeds):
    pruned = PruneSparsify(pattern="neurons", sparsity=0.5).run(tiny_static, feeds).model
    tiny = DistillSettings(epochs=1, learning_rate=10.0)  # a step this large only does harm
    result = distill(pruned, tiny_static, feeds[:32], tiny)
    assert result.model is pruned
    assert result.loss_after == result.loss_before


@pytest.mark.parametrize(
    "pipeline",
    [
        "prune-sparsify{pattern=neurons sparsity=0.5 distill-epochs=1}",
        "factorize-matmul{param-ratio=0.5 method=activation distill-epochs=1}",
    ],
)
def test_passes_report_what_distillation_bought(tiny_static, feeds, pipeline):
    few = Calibration(batches=feeds[:32])
    stats = optimize(tiny_static, pipeline, calibration=few).records[0].stats
    assert stats["distill_loss_after"] <= stats["distill_loss_before"]
    assert stats["distill_seconds"] > 0


@pytest.mark.parametrize("cls", [PruneSparsify, FactorizeMatmul])
def test_distill_options_are_validated(cls):
    with pytest.raises(ValueError, match="distill-epochs"):
        cls(distill_epochs=-1)
    with pytest.raises(ValueError, match="distill-lr"):
        cls(distill_lr=0.0)


def test_without_pytorch_the_pass_says_how_to_install_it(tiny_static, monkeypatch):
    monkeypatch.setattr(torch_graph, "torch", None)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(PreconditionError, match="PyTorch"):
        PruneSparsify(pattern="neurons", distill_epochs=1).requires(tiny_static)


def test_a_single_calibration_batch_cannot_be_split(tiny_static, feeds):
    pruned = PruneSparsify(pattern="neurons").run(tiny_static, feeds).model
    with pytest.raises(ValueError, match="two calibration batches"):
        distill_module.distill(pruned, tiny_static, feeds[:1], DistillSettings(1))


def _weights(m):
    return {
        t.name: np.asarray(t.values)
        for t in m.graph.tensors().values()
        if hasattr(t, "values") and np.asarray(t.values).dtype == np.float32
    }


def test_distillation_follows_the_float_output_after_an_integer_copy_of_the_ids():
    teacher = copied_ids_encoder()
    w2 = np.asarray(teacher.graph.tensors()["w2"].values)
    noise = np.random.default_rng(3).standard_normal(w2.shape).astype(np.float32)
    student = with_weights(teacher, {"w2": w2 + 0.5 * w2.std() * noise})
    rng = np.random.default_rng(4)
    feeds = [{"input_ids": rng.integers(1, 50, (4, 8)).astype(np.int64)} for _ in range(20)]
    result = distill(student, teacher, feeds, DistillSettings(3, learning_rate=1e-2))
    assert result.loss_before > 1e-3, "the pooled loss compares the float tokens, not the ids"
    assert result.loss_after < result.loss_before
