from graphs import initializer, model, tensor, weights
from onnx import helper

from nlpress.ir.dump import diff_text, dump_text

GOLDEN = """\
model opset=ai.onnx:17
input x: float32[batch,4]
const shape: int64[2] = [-1, 3]
const w: float32[4,3] #{digest}
node mm = MatMul(x, w) -> (h)
node flat = Reshape(h, shape) -> (y) {{allowzero=0}}
output y: float32[batch,3]
"""


def _model(seed: int = 0):
    return model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Reshape", ["h", "shape"], ["y"], name="flat", allowzero=0),
        ],
        [tensor("x", ["batch", 4])],
        [tensor("y", ["batch", 3])],
        [initializer("w", weights([4, 3], seed)), initializer("shape", [-1, 3])],
    )


def test_dump_is_golden_with_weights_elided_to_shape_and_hash():
    text = dump_text(_model())
    digest = text.split("#")[1].split()[0]
    assert len(digest) == 12
    assert text == GOLDEN.format(digest=digest)
    assert dump_text(_model()) == text


def test_diff_shows_only_what_changed():
    diff = diff_text(dump_text(_model(0)), dump_text(_model(1)))
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "---+++"]
    assert len(changed) == 2
    assert all(line[1:].startswith("const w:") for line in changed)
    assert diff_text(dump_text(_model()), dump_text(_model())) == ""
