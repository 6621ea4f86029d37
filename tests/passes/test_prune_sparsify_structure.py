import numpy as np
import onnx_graphsurgeon as gs
from graphs import initializer, model, tensor, weights
from onnx import helper

from nlpress.ir.blocks import attention_blocks, ffn_pairs
from nlpress.ir.linear import linears
from nlpress.ir.verify import check, run
from nlpress.passes.prune_sparsify import PruneSparsify


def _gated(extra_reader: bool = False):
    """SwiGLU-style: (x Wg) * sigmoid(x Wg) * (x Wu) -> down, and eight batches for it."""
    nodes = [
        helper.make_node("MatMul", ["x", "wg"], ["g"], name="gate"),
        helper.make_node("MatMul", ["x", "wu"], ["u"], name="up"),
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("Mul", ["g", "sg"], ["silu"]),
        helper.make_node("Mul", ["silu", "u"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["hs"]),  # a per-channel constant
        helper.make_node("MatMul", ["hs", "wd"], ["y"], name="down"),
    ]
    outputs = [tensor("y", [2, 8])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["silu"], ["leak"]))
        outputs.append(tensor("leak", [2, 12]))
    inits = [
        initializer("wg", weights([8, 12], 1)),
        initializer("wu", weights([8, 12], 2)),
        initializer("wd", weights([12, 8], 3)),
        initializer("scale", weights([12], 4)),
    ]
    m = model(nodes, [tensor("x", [2, 8])], outputs, inits)
    rng = np.random.default_rng(0)
    feeds = tuple({"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(8))
    return m, feeds


def test_gated_ffn_is_found_and_pruned_in_every_projection():
    m, feeds = _gated()
    (pair,) = ffn_pairs(m.graph, linears(m.graph))
    assert sorted(up.name for up in pair.ups) == ["gate", "up"]
    assert len(pair.channel_constants) == 1
    result = PruneSparsify(pattern="neurons", sparsity=0.25).run(m, feeds)
    check(result.model)
    shapes = {
        n.name: n.inputs[1].values.shape for n in result.model.graph.nodes if n.op == "MatMul"
    }
    assert shapes == {"gate": (8, 9), "up": (8, 9), "down": (9, 8)}
    assert run(result.model, feeds[0])["y"].shape == (2, 8)


def test_ffn_whose_intermediate_leaks_out_is_not_a_pair():
    m, _ = _gated(extra_reader=True)
    assert ffn_pairs(m.graph, linears(m.graph)) == []


def test_query_scale_between_projection_and_split_is_followed():
    from test_prune_sparsify import _attention_calibrated

    m, feeds = _attention_calibrated()
    graph = m.graph
    q_bias = next(n for n in graph.nodes if n.name == "q_bias")
    split = next(n for n in graph.nodes if n.name == "q_split")
    scale = next(t for t in graph.tensors().values() if t.name == "scale")
    mul = gs.Node("Mul", "q_scale", inputs=[q_bias.outputs[0], scale], outputs=[gs.Variable("qs")])
    graph.nodes.append(mul)
    split.inputs[0] = mul.outputs[0]
    graph.toposort()
    (block,) = attention_blocks(graph, linears(graph))
    assert [len(s.between) for s in block.splits] == [1, 0, 0]
    result = PruneSparsify(pattern="heads", sparsity=0.5).run(m, feeds)
    check(result.model)
    assert run(result.model, feeds[0])["y"].shape == (1, 6, 16)
