"""The cost model: a unit's latency under a choice, from its kernels timed on the target.

A linear of shape (k, n) at a precision runs as the kernels nlpress compiles for a lone
MatMul + bias over [rows, k] inputs, written by the pass a plan uses for that precision. On a
target that runs on this machine each kernel is timed alone (`targets.bench.profile_kernels`)
and their sum cached by target, CPU, the lowering's source, precision and shape. Elsewhere it is
estimated as multiply-adds times a relative cost per precision. A table's gathers cost nothing
that a choice changes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nlpress.ir import Model
from nlpress.passes import parse, run_pipeline
from nlpress.planner import cache
from nlpress.planner.units import PRECISION_STEP, Choice, Unit
from nlpress.targets.target import Target, host_cpu

log = logging.getLogger(__name__)

# Relative cost of one multiply-add where nothing can be timed (int8 uses 4-wide dot products).
ESTIMATED_COST = {"float": 1.0, "int8": 0.35, "int4": 1.0}
ESTIMATED_NS_PER_MAC = 0.01
OPSET = 17
# The cache file of kernel costs (`cache.py`).
CACHE = "kernel-costs"


@dataclass
class Costs:
    """Latency of units under choices at `rows` rows per call, measured once per shape.

    Attributes:
        target: Where the artifact runs.
        rows: The rows each linear sees per call (batch x sequence of the workload).
        measured: Whether kernels are timed (a target this machine runs) or estimated.
    """

    target: Target
    rows: int
    measured: bool = field(init=False)
    _table: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.measured = self.target.runs_on_host
        if self.measured:
            self._table = {k: float(v) for k, v in cache.read(CACHE).items()}

    def unit_ms(self, unit: Unit, choice: Choice) -> float:
        """Milliseconds per call of the unit's linears under `choice`."""
        if unit.kind == "table":
            return 0.0
        return sum(self.linear_ms(choice.precision, k, n) for k, n in unit.shapes_at(choice.cut))

    def linear_ms(self, precision: str, k: int, n: int) -> float:
        """Milliseconds per call of one linear (k, n) at `precision` over `rows` rows."""
        if not self.measured:
            return ESTIMATED_COST[precision] * self.rows * k * n * ESTIMATED_NS_PER_MAC * 1e-3
        key = f"{self._context()}|{precision}|{self.rows}x{k}x{n}"
        if key not in self._table:
            self._table[key] = _timed(self.target, precision, self.rows, k, n)
            cache.write(CACHE, self._table)
        return self._table[key]

    def _context(self) -> str:
        target = json.dumps(dict(self.target.tvm_target), sort_keys=True)
        return f"{target}|{host_cpu()}|{cache.source_digest('nlpress.targets')}"


def _timed(target: Target, precision: str, rows: int, k: int, n: int) -> float:
    """The summed kernel milliseconds of one linear, compiled for `target` and timed here."""
    from nlpress.targets.bench import profile_kernels

    model = Model.from_onnx(_linear(rows, k, n))
    if precision != "float":
        name, options = PRECISION_STEP[precision]
        feeds = [{"x": _rng(1).standard_normal((1, rows, k)).astype(np.float32)}]
        model = run_pipeline(model, parse(f"{name}{{{options}}}"), (), feeds).model
    rows_ = profile_kernels(model.to_onnx(), target)
    ms = sum(float(row["total_ms"]) for row in rows_)
    log.debug("kernel cost %s %dx%dx%d: %.4f ms", precision, rows, k, n, ms)
    return ms


def _linear(rows: int, k: int, n: int) -> onnx.ModelProto:
    """A linear as exporters write one: x [1, rows, k] -> MatMul W [k, n] -> Add b."""
    rng = _rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"], name="linear"),
            helper.make_node("Add", ["y", "b"], ["z"], name="bias"),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, rows, n])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
