"""quantize-weights: group-wise 4- and 8-bit weights, and their kernels on x86.

The pass's graph is checked against numpy with the dequantized weights (ONNX Runtime, no
graph optimizations, runs it); the x86 artifact against the same reference, over odd shapes
(k not a multiple of the group, n not a multiple of the panel) and symbolic or static rows.
"""

from __future__ import annotations

from typing import Any

import graphs
import numpy as np
import onnx
import pytest
import tvm
from tvm import relax

from nlpress.ir import Model
from nlpress.ir.qdq import quantize_groups
from nlpress.ir.verify import run
from nlpress.passes.quantize_weights import QuantizeWeights
from nlpress.targets import get_target, lower, panels

AVX2 = get_target("x86", mcpu="haswell")


def _dense(shape: list[Any], k: int = 70, n: int = 37, m: int = 19) -> Model:
    rng = np.random.default_rng(k + n)
    w, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((k, n), (n, m)))
    b = rng.standard_normal(n).astype(np.float32)
    return graphs.dense(shape, w, b, "Relu", then=w2)


def _dequantized(model: Model) -> dict[str, np.ndarray]:
    """Each DequantizeLinear output of `model`, computed by ONNX Runtime."""
    outputs = [n.outputs[0].name for n in model.graph.nodes if n.op == "DequantizeLinear"]
    proto = model.to_onnx()
    for name in outputs:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    feeds = {"x": np.zeros([1 if isinstance(d, str) else d for d in model.graph.inputs[0].shape],
                           np.float32)}  # fmt: skip
    return {k: v for k, v in run(Model.from_onnx(proto), feeds).items() if k in outputs}


@pytest.mark.parametrize(("bits", "symmetric"), [(4, False), (4, True), (8, False)])
def test_groups_dequantize_as_onnx_reads_them(bits: int, symmetric: bool) -> None:
    model = _dense(["rows", 70])
    result = QuantizeWeights(bits=bits, group=32, symmetric=symmetric).run(model)
    assert result.changed and result.stats["layers_quantized"] == 2
    nodes = [n for n in result.model.graph.nodes if n.op == "DequantizeLinear"]
    assert [n.attrs["block_size"] for n in nodes] == [32, 32]
    codes = np.asarray(nodes[0].inputs[0].values)
    assert (
        codes.dtype.name
        == {(4, False): "uint4", (4, True): "int4", (8, False): "uint8"}[bits, symmetric]
    )
    weights = {"w": np.asarray(model.graph.tensors()["w"].values)}
    expected = quantize_groups(weights["w"], bits, 32, 0, symmetric, clip=True).dequantized()
    got = _dequantized(result.model)[nodes[0].outputs[0].name]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    relative = np.linalg.norm(got - weights["w"]) / np.linalg.norm(weights["w"])
    assert relative < (0.12 if bits == 4 else 0.01)
    assert result.stats["weight_bytes_after"] < result.stats["weight_bytes_before"] / (
        5 if bits == 4 else 3
    )


def test_the_file_holds_4_bit_integers_at_opset_21(tmp_path: Any) -> None:
    result = QuantizeWeights().run(_dense(["rows", 70]))
    proto = result.model.to_onnx()
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}
    kinds = {i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.UINT4 in kinds and onnx.TensorProto.FLOAT in kinds
    onnx.checker.check_model(proto, full_check=True)


def test_a_second_run_changes_nothing_and_tables_are_grouped_along_rows() -> None:
    table = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    once = QuantizeWeights(group=16).run(graphs.embedding(table))
    assert once.stats["tables_quantized"] == 1
    [node] = [n for n in once.model.graph.nodes if n.op == "DequantizeLinear"]
    assert node.attrs == {"axis": 1, "block_size": 16}
    assert not QuantizeWeights(group=16).run(once.model).changed


@pytest.mark.parametrize("shape", [["rows", 70], [5, 70], [2, "sequence", 70]])
@pytest.mark.parametrize("target", [AVX2, get_target("x86")], ids=["avx2", "host"])
@pytest.mark.parametrize("bits", [4, 8])
def test_grouped_panel_kernel_matches_numpy(shape: list[Any], target: Any, bits: int) -> None:
    """The x86 build unpacks the codes in its panel kernel and computes the dequantized sum."""
    quantized = QuantizeWeights(bits=bits, group=32).run(_dense(shape)).model
    proto = quantized.to_onnx()
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(proto), lower.tvm_target(target))
    kernels = [f for g, f in mod.functions_items() if panels.KERNEL_NAME in g.name_hint]
    assert unscheduled == [] and len(kernels) == 2
    assert all("uint8" in {str(p.dtype) for p in f.params} for f in kernels)
    assert not [g for g, _ in mod.functions_items() if "blocked_dequantize" in g.name_hint]
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(proto), target), tvm.cpu())
    for rows in [1, 3, 17] if isinstance(shape[-2 if len(shape) == 3 else 0], str) else [0]:
        dims = [rows if isinstance(d, str) else d for d in shape]
        x = np.random.default_rng(rows).standard_normal(dims).astype(np.float32)
        expected = run(quantized, {"x": x})["y"]
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        bound = 1e-5 * float(np.abs(expected).max()) + 1e-5
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


def test_a_grouped_table_compiles_exactly() -> None:
    table = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    quantized = QuantizeWeights(group=16).run(graphs.embedding(table)).model
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(quantized.to_onnx()), AVX2), tvm.cpu())
    ids = np.array([[0, 49, 7, 7, 23]], dtype=np.int64)
    expected = run(quantized, {"ids": ids})["rows"]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(ids)).numpy(), expected, atol=1e-6)
