import numpy as np
from graphs import initializer, model, tensor, weights
from onnx import helper

from nlpress.ir.summary import format_summary, summarize


def _two_layers(first: np.ndarray, second: np.ndarray):
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Gemm", ["h", "w2"], ["y"], name="second", transB=1),
    ]
    inits = [initializer("w1", first), initializer("w2", second)]
    return model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 4])], inits)


def test_layers_report_sparsity_and_the_n_m_pattern_along_the_reduction_axis():
    two_four = weights([8, 8], 1)
    two_four[np.arange(8) % 4 >= 2] = 0.0  # 2 zeros in every 4 inputs of each output
    half = weights([4, 8], 2)  # Gemm transB: [n, k], reduction along axis 1
    half[:, :4] = 0.0  # the first 4 inputs of each output: 4:8, not any N:4
    summary = summarize(_two_layers(two_four, half))
    first, second = summary["layers"]
    assert (first["node"], first["shape"], first["sparsity"], first["n_m"]) == (
        "first",
        [8, 8],
        0.5,
        "2:4",
    )
    assert (second["sparsity"], second["n_m"]) == (0.5, "4:8")
    assert summary["weight_sparsity"] == 0.5
    text = format_summary(summary)
    assert "first 8x8: 50.00%, 2:4" in text
    assert "of MatMul/Gemm weights" in text


def test_dense_layers_have_no_pattern():
    summary = summarize(_two_layers(weights([8, 8], 1), weights([4, 8], 2)))
    assert [layer["n_m"] for layer in summary["layers"]] == [None, None]
    assert summary["weight_sparsity"] == 0.0
    assert "sparse weights" not in format_summary(summary)


def test_size_summary_counts_an_int8_layer_with_its_scales():
    from nlpress.ir.summary import size_summary

    w = np.arange(-16, 16, dtype=np.int8).reshape(8, 4)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"], name="dq", axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="layer"),
        helper.make_node("MatMul", ["y", "v"], ["z"], name="float_layer"),
    ]
    inits = [
        initializer("wq", w),
        initializer("scale", np.full(4, 0.1, np.float32)),
        initializer("zero", np.zeros(4, np.int8)),
        initializer("v", weights([4, 4])),
    ]
    sizes = size_summary(model(nodes, [tensor("x", [2, 8])], [tensor("z", [2, 4])], inits))
    assert sizes["layers"] == {
        "layer": {"dtype": "int8", "parameters": 32, "bytes": 32 + 16 + 4},
        "float_layer": {"dtype": "float32", "parameters": 16, "bytes": 64},
    }
    assert sizes["bytes"] == 32 + 16 + 4 + 64
    assert sizes["bytes_by_dtype"] == {"float32": 16 + 64, "int8": 32 + 4}
    assert type(sizes["parameters"]) is int


def test_quantized_matmuls_are_layers_with_their_stored_int8_weights():
    """MatMulInteger, QLinearMatMul and a MatMul of a DequantizeLinear of an int8 constant."""
    w = np.zeros((8, 8), np.int8)
    w[::2] = 3  # every second input row is zero: 2 of every 4 along the reduction axis
    scale, zero = np.float32(0.1), np.int8(0)
    uscale, uzero = np.float32(0.2), np.uint8(128)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["a"], name="integer"),
        helper.make_node("Cast", ["a"], ["af"], to=1),
        helper.make_node("QuantizeLinear", ["af", "us", "uz"], ["aq"]),
        helper.make_node(
            "QLinearMatMul", ["aq", "us", "uz", "w", "ws", "wz", "us", "uz"], ["bq"], name="qlinear"
        ),
        helper.make_node("DequantizeLinear", ["bq", "us", "uz"], ["b"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"]),
        helper.make_node("MatMul", ["b", "wf"], ["y"], name="qdq"),
    ]
    inits = [
        initializer("w", w),
        initializer("ws", scale),
        initializer("wz", zero),
        initializer("us", uscale),
        initializer("uz", uzero),
    ]
    summary = summarize(model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 8])], inits))
    facts = {
        (layer["node"], layer["weight"], layer["dtype"], layer["n_m"])
        for layer in summary["layers"]
    }
    assert facts == {(name, "w", "int8", "2:4") for name in ("integer", "qlinear", "qdq")}
    assert summary["weight_sparsity"] == 0.5


def test_4_bit_constants_count_half_a_byte_each():
    import ml_dtypes
    from onnx import TensorProto

    from nlpress.ir.summary import size_summary, stored_bytes

    codes = np.arange(9 * 6).reshape(9, 6) % 16
    nodes = [
        helper.make_node("DequantizeLinear", ["tq", "scale", "zero"], ["t"], name="dq", axis=0),
        helper.make_node("Gather", ["t", "ids"], ["y"], name="embed"),
    ]
    inits = [
        initializer("tq", codes.astype(ml_dtypes.uint4)),
        initializer("scale", np.full(9, 0.1, np.float32)),
        initializer("zero", np.full(9, 3, ml_dtypes.uint4)),
    ]
    ids = tensor("ids", [2], TensorProto.INT64)
    sizes = size_summary(model(nodes, [ids], [tensor("y", [2, 6])], inits, opset=21))
    assert sizes["bytes_by_dtype"] == {"float32": 36, "uint4": 27 + 5}
    assert sizes["layers"]["embed"] == {"dtype": "uint4", "parameters": 54, "bytes": 27 + 36 + 5}
    assert stored_bytes(np.zeros(3, ml_dtypes.int4)) == 2
    assert stored_bytes(np.zeros(3, np.int8)) == 3
