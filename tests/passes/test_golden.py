"""Golden dumps of the exact passes' rewrites on small graphs written in ONNX's text syntax.

Each case runs one pipeline on one graph and compares the result's text dump
(`nlpress.ir.dump.dump_text`) with `golden/NAME.txt`; the rewritten graph must also compute the
same outputs as the original in ONNX Runtime, and a second run of the pipeline changes nothing.
Regenerate the dumps after a deliberate change with `--update-golden` (see tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from graphs import text_model

from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check, compare, make_feeds
from nlpress.passes import parse, run_pipeline


@dataclass(frozen=True)
class Case:
    """One graph (ONNX text) through one pipeline."""

    pipeline: str
    graph: str
    opset: int = 17
    checked: bool = True


FOLD = {
    # constants_to_initializers: a Constant node becomes an initializer.
    "fold-constant-node": Case(
        "fold",
        """g (float[N, 2] x) => (float[N, 2] y) {
            [c] c = Constant<value = float[2] {1.5, -2.0}>()
            [add] y = Add(x, c)
        }""",
    ),
    # shape_folded: a Shape of a static tensor and its arithmetic become one constant.
    "fold-static-shape": Case(
        "fold",
        """g (float[2, 3] x, float[6] z) => (float[2, 3] y) <int64 one = {1}> {
            [shape] s = Shape(x)
            [plus] t = Add(s, one)
            [minus] u = Sub(t, one)
            [reshape] y = Reshape(z, u)
        }""",
    ),
    # targets_folded: a Reshape target made of the input's own symbolic dims becomes (0, 0, 2, 4).
    "fold-symbolic-reshape-target": Case(
        "fold",
        """g (float[batch, sequence, 8] x) => (float[batch, sequence, 2, 4] y)
            <int64 zero = {0}, int64 one = {1}, int64[1] axes = {0}, int64[2] heads = {2, 4}> {
            [shape] s = Shape(x)
            [batch] b = Gather<axis = 0>(s, zero)
            [sequence] n = Gather<axis = 0>(s, one)
            [batch_1d] b1 = Unsqueeze(b, axes)
            [sequence_1d] n1 = Unsqueeze(n, axes)
            [target] target = Concat<axis = 0>(b1, n1, heads)
            [split] y = Reshape(x, target)
        }""",
    ),
    # folded: a subgraph of constants is evaluated into one initializer.
    "fold-constant-subgraph": Case(
        "fold",
        """g (float[N, 3] x) => (float[N, 2] y)
            <float[2, 3] w = {1, 2, 3, 4, 5, 6}, float two = {2}> {
            [transpose] wt = Transpose<perm = [1, 0]>(w)
            [double] w2 = Mul(wt, two)
            [mm] y = MatMul(x, w2)
        }""",
    ),
    # noops_removed: every kind of no-op fold knows, between two real ops.
    "fold-noops": Case(
        "fold",
        """g (float[N, 4] x) => (float[N, 4] y)
            <float zero = {0}, float one = {1}, int64[2] same = {0, 4}, bool yes = {1}> {
            [relu] r = Relu(x)
            [identity] a = Identity(r)
            [dropout] d = Dropout(a)
            [cast] c = Cast<to = 1>(d)
            [reshape] s = Reshape(c, same)
            [transpose] t = Transpose<perm = [0, 1]>(s)
            [concat] k = Concat<axis = 1>(t)
            [plus_zero] p = Add(k, zero)
            [times_one] m = Mul(p, one)
            [where] w = Where(yes, m, x)
            [neg] y = Neg(w)
        }""",
    ),
    # operands_reordered: a commutative op takes its constant second.
    "fold-constant-operand-second": Case(
        "fold",
        """g (float[N, 2] x) => (float[N, 2] y) <float[2] b = {1, 2}, float[2] s = {3, 4}> {
            [add] a = Add(b, x)
            [mul] y = Mul(s, a)
        }""",
    ),
    # fused: a decomposed layer norm becomes LayerNormalization (opset 17+).
    "fold-layer-norm": Case(
        "fold",
        """g (float[N, 4] x) => (float[N, 4] y)
            <float two = {2}, float eps = {1e-5},
             float[4] gamma = {1, 2, 3, 4}, float[4] beta = {0.5, 0, -0.5, 1}> {
            [mean] mean = ReduceMean<axes = [-1]>(x)
            [centre] d = Sub(x, mean)
            [square] sq = Pow(d, two)
            [variance] var = ReduceMean<axes = [-1]>(sq)
            [plus_eps] ve = Add(var, eps)
            [std] std = Sqrt(ve)
            [normalize] n = Div(d, std)
            [scale] g = Mul(n, gamma)
            [shift] y = Add(g, beta)
        }""",
    ),
    # fused: an erf GELU becomes Gelu where the opset has it (20+).
    "fold-gelu": Case(
        "fold",
        """g (float[N, 4] x) => (float[N, 4] y)
            <float sqrt2 = {1.4142135}, float one = {1}, float half = {0.5}> {
            [div] s = Div(x, sqrt2)
            [erf] e = Erf(s)
            [add] a = Add(e, one)
            [mul] m = Mul(x, a)
            [half] y = Mul(m, half)
        }""",
        opset=20,
    ),
    # deduplicated: identical initializers merge, then identical nodes on them.
    "fold-duplicates": Case(
        "fold",
        """g (float[N, 2] x) => (float[N, 2] y)
            <float[2] b1 = {1, 2}, float[2] b2 = {1, 2}> {
            [first] a1 = Add(x, b1)
            [second] a2 = Add(x, b2)
            [sum] y = Mul(a1, a2)
        }""",
    ),
}

OTHERS = {
    "identity-elim": Case(
        "identity-elim",
        """g (float[2, 6] x) => (float[3, 4] y)
            <int64[2] same = {0, -1}, int64[2] other = {3, 4}> {
            [id_in] a = Identity(x)
            [relu] r = Relu(a)
            [drop] d = Dropout(r)
            [cast] c = Cast<to = 1>(d)
            [reshape] s = Reshape(c, same)
            [real_reshape] t = Reshape(s, other)
            [id_out] y = Identity(t)
        }""",
    ),
    "cleanup": Case(
        "cleanup",
        """g (float[2, 4] x) => (float[2, 4] y)
            <float[4] b = {1, 2, 3, 4}, float[5] orphan = {0, 0, 0, 0, 0}> {
            [neg] y = Neg(h)
            [add] h = Add(x, b)
            [dead_relu] dead = Relu(x)
            [dead_add] dead2 = Add(dead, b)
        }""",
        checked=False,
    ),
    "pool-mean": Case(
        "pool{mode=mean}",
        """g (float[batch, sequence, 4] h, int64[batch, sequence] attention_mask)
            => (float[batch, sequence, 4] tokens) {
            [relu] tokens = Relu(h)
        }""",
    ),
    "pool-cls-normalized": Case(
        "pool{mode=cls normalize=true}",
        """g (float[batch, sequence, 4] h) => (float[batch, sequence, 4] tokens) {
            [relu] tokens = Relu(h)
        }""",
    ),
    "O1": Case(
        "fold,identity-elim,cleanup",
        """g (float[N, 3] x) => (float[N, 2] y)
            <float[2, 3] w = {1, 2, 3, 4, 5, 6}, float[2] b = {0.5, -0.5}> {
            [id] a = Identity(x)
            [transpose] wt = Transpose<perm = [1, 0]>(w)
            [mm] h = MatMul(a, wt)
            [bias] z = Add(b, h)
            [dead] unused = Relu(z)
            [out] y = Identity(z)
        }""",
    ),
}

CASES = {**FOLD, **OTHERS}
DIMS = {"N": 3, "batch": 2, "sequence": 5}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rewrite_matches_its_golden_dump(name: str, golden: Callable[[str, str], None]) -> None:
    case = CASES[name]
    before = text_model(case.graph, case.opset, case.checked)
    pipeline = parse(case.pipeline)
    result = run_pipeline(before, pipeline)
    assert any(record.changed for record in result.records)
    check(result.model)
    golden(name, dump_text(result.model))
    feeds = [make_feeds(before, DIMS, seed=seed) for seed in (0, 1)]
    assert compare(before, result.model, feeds, added_outputs=True).worst <= 1e-6
    again = run_pipeline(result.model, pipeline)
    assert not any(record.changed for record in again.records)
