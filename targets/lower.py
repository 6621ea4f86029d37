"""Lowering: ONNX -> Relax (from_onnx) -> the target's Relax pipeline -> relax.build -> library.

Symbolic input dims stay symbolic (one library serves every size); static dims stay static.
An op TVM cannot import is named with the node that holds it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx

from nlpress.ir import NlpressError
from nlpress.targets import blocked
from nlpress.targets.target import Target

log = logging.getLogger(__name__)


# nlpress's parallel launcher, linked into every CPU library (see the file).
PARALLEL_C = os.fspath(Path(__file__).with_name("parallel.c"))


class LoweringError(NlpressError):
    """A model that TVM cannot import or build for the target."""


class UnsupportedOpError(LoweringError):
    """An ONNX op that TVM's importer has no converter for."""


def import_onnx(proto: onnx.ModelProto) -> Any:
    """Convert an ONNX model to a Relax IRModule; weights become constants.

    Raises:
        UnsupportedOpError: Ops TVM cannot import, each named with its first node.
        LoweringError: A node TVM's converter failed on, named with its op.

    """
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    _check_ops(proto, frontend._get_convert_map())
    proto = blocked.widen_4bit(proto)
    importer = _NamingImporter(None, None, keep_params_in_input=False, sanitize=True)
    with _quiet():
        try:
            return importer.from_onnx(proto.graph, _opset(proto))
        except LoweringError:
            raise
        except Exception as exc:
            raise LoweringError(f"TVM could not import the model: {_first_line(exc)}") from exc


def _check_ops(proto: onnx.ModelProto, convert_map: dict[str, Any]) -> None:
    known = set(convert_map) | {"If", "Constant"}
    missing: dict[str, str] = {}
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in known or node.domain not in ("", "ai.onnx"):
            missing.setdefault(_op_name(node), node.name or f"#{index}")
    if missing:
        listed = "; ".join(f"{op} (node {node!r})" for op, node in missing.items())
        raise UnsupportedOpError(f"TVM's ONNX importer does not support: {listed}")


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _importer_base() -> type:
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    return ONNXGraphImporter  # type: ignore[no-any-return]


class _NamingImporter(_importer_base()):  # type: ignore[misc]
    """TVM's importer, with the failing node's name and op in the error it raises."""

    def _convert_operator(self, op_name: str, inputs: Any, attrs: Any, opset: int) -> Any:
        try:
            own = _CONVERTERS.get(op_name)
            if own is not None and (converted := own(self.bb, inputs, attrs)) is not None:
                return converted
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except Exception as exc:
            node = attrs.get("tvm_custom", {}).get("name", "?")
            raise LoweringError(
                f"TVM could not import node {node!r} ({op_name}): {_first_line(exc)}"
            ) from exc


def _symbolic_arange(builder: Any, inputs: Any, _attrs: Any) -> Any:
    """Range(const start, symbolic limit, const delta) as an arange of known symbolic length.

    TVM's converter gives every Range with a dynamic bound a fresh length variable, so
    `Range(0, Shape(x)[1], 1)` no longer has x's `sequence` length, and the attention masks
    built from it lose their shapes. With constant integer start and delta, the length is
    an expression of the limit, which Relax keeps.
    """
    import tvm
    from tvm import relax

    if len(inputs) != 3:
        return None
    start, limit, delta = inputs[0], inputs[1], inputs[2]
    if not tvm.ir.is_prim_expr(limit):
        return None
    if not str(getattr(limit, "dtype", None) or limit.ty).startswith("int"):
        return None
    bounds = [_int_scalar(start), _int_scalar(delta)]
    if None in bounds or bounds[1] == 0:
        return None
    dtype = str(start.ty.dtype)
    return builder.normalize(relax.op.arange(bounds[0], limit, bounds[1], dtype))


def _constant_expand(builder: Any, inputs: Any, _attrs: Any) -> Any:
    """Expand(x, constant shape) where x has symbolic dims, as ONNX's bidirectional broadcast.

    TVM's converter reads every dim of x as a number. An output dim is x's where the shape
    says 1, else the shape's (x's dim is then 1 or equal to it, as ONNX requires); shapes
    are right-aligned. None (TVM's converter) when every dim of x is a number.
    """
    import tvm
    from tvm import relax

    data, shape = inputs[0], inputs[1]
    if not isinstance(shape, tvm.ir.GenericConst) or not hasattr(data.ty, "shape"):
        return None
    dims = list(data.ty.shape)
    if all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    wanted = [int(v) for v in shape.value.numpy().reshape(-1)]
    rank = max(len(dims), len(wanted))
    dims = [tvm.tirx.IntImm("int64", 1)] * (rank - len(dims)) + dims
    wanted = [1] * (rank - len(wanted)) + wanted
    out = []
    for dim, size in zip(dims, wanted, strict=True):
        fixed = dim.value if isinstance(dim, tvm.tirx.IntImm) else None
        if size in (1, -1) or size == fixed:
            out.append(dim)
        elif fixed in (None, 1):
            out.append(tvm.tirx.IntImm("int64", size))
        else:
            raise ValueError(f"cannot expand a dim of {fixed} to {size}")
    return builder.normalize(relax.op.broadcast_to(data, relax.ShapeExpr(out)))


# Converters that replace TVM's for the inputs they take (None: TVM's converter runs).
_CONVERTERS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "Range": _symbolic_arange,
    "Expand": _constant_expand,
    "DequantizeLinear": blocked.convert_dequantize,
}


def _int_scalar(value: Any) -> int | None:
    import tvm

    if not isinstance(value, tvm.ir.GenericConst):
        return None
    array = value.value.numpy()
    if array.size != 1 or array.dtype.kind not in "iu":
        return None
    return int(array.reshape(()))


def relax_pipeline(target: Target, tvm_target: Any, records: Path | None = None) -> Any:
    """The Relax pipeline for the target.

    GPU: TVM's CUDA pipeline (schedules from s_tir.dlight). CPU: TVM's CPU passes with fast
    approximations of exp, erf and tanh, then the kernels' schedules: tuned ones from
    `records` (a MetaSchedule database folder) where it has them, nlpress's default rules
    for the rest. Kernels left with a plain loop nest are logged at warning level.
    """
    if target.device == "cuda":
        from nlpress.targets.schedules import int8_gpu

        return int8_gpu.cuda_pipeline(tvm_target)
    return _cpu_pipeline(tvm_target, records)


def _cpu_pipeline(tvm_target: Any, records: Path | None) -> Any:
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="NlpressCpuPipeline")  # type: ignore[untyped-decorator]
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with tvm_target:
            mod, unscheduled = cpu_kernels(mod, tvm_target, records)
            if unscheduled:
                log.warning("unscheduled kernels: %s", ", ".join(unscheduled))
            return tvm.transform.Sequential(
                [*cpu.dataflow_lower_passes(tvm_target), *cpu.finalize_passes(tvm_target)]
            )(mod)

    return _pipeline


def cpu_kernels(
    mod: Any, tvm_target: Any, records: Path | None = None, *, default_schedules: bool = True
) -> tuple[Any, list[str]]:
    """Legalize and fuse a Relax module into CPU kernels (PrimFuncs), then schedule them.

    Args:
        mod: The Relax module from `import_onnx`.
        tvm_target: The tvm.target.Target of a CPU.
        records: A MetaSchedule database folder; its schedules win over the default rules.
        default_schedules: Apply nlpress's default rules (off: TVM's plain loop nests).

    Returns:
        The module, and the names of the kernels left without a schedule.

    """
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from nlpress.targets import legalize, panels, quantized, schedules, softmax
    from nlpress.targets.schedules import common, int8, int8_intrinsics
    from nlpress.targets.schedules.panels import grouped_panel_tile, panel_tile

    kernel = int8_intrinsics.int8_kernel(tvm_target)
    tile = panel_tile(tvm_target) if default_schedules else None
    grouped_tile = grouped_panel_tile(tvm_target) if default_schedules else None
    with tvm_target:
        mod = tvm.transform.Sequential(
            [
                quantized.qdq_matmul_pass(
                    packed=True,
                    activation_offset=kernel.activation_offset,
                    block=kernel.block,
                    activation_dtype=kernel.activation_dtype,
                    rows=int8.TILES[kernel.family][0],
                ),
                # Where float matmuls keep their layout, group-wise ones are still packed.
                *([panels.panel_matmul_pass(grouped_tile, tile is None)] if grouped_tile else []),
                *cpu.library_dispatch_passes(tvm_target),
                softmax.symbolic_softmax_pass(common.vector_lanes(tvm_target, 32)),
                relax.transform.FastMathTransform(),
                *legalize.legalize_passes(tvm_target),
            ]
        )(mod)
        if records is not None:
            mod = relax.transform.MetaScheduleApplyDatabase(os.fspath(records))(mod)
        if default_schedules:
            return schedules.schedule_module(mod, tvm_target)
    names = [
        g.name_hint
        for g, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc) and not schedules.is_scheduled(f)
    ]
    return mod, sorted(names)


def tvm_target(target: Target) -> Any:
    """The tvm.target.Target object of a descriptor."""
    import tvm

    if target.tvm_host is not None:
        return tvm.target.Target(dict(target.tvm_target), host=dict(target.tvm_host))
    return tvm.target.Target(dict(target.tvm_target))


def build(mod: Any, target: Target, records: str | os.PathLike[str] | None = None) -> Any:
    """relax.build the module for the target; returns the VM executable.

    Args:
        mod: The Relax module from `import_onnx`.
        target: The target descriptor.
        records: A MetaSchedule tuning-records folder whose schedules the CPU build reuses
            (None: the default schedules only).

    """
    from tvm import relax

    from nlpress.targets import stack_tiles, tuning

    folder = Path(records) if records is not None else None
    if folder is not None and not tuning.has_records(folder):
        log.warning("no tuning records in %s: building with the default schedules", folder)
        folder = None
    compiled_for = tvm_target(target)
    pipeline = relax_pipeline(target, compiled_for, folder)
    kernels = stack_tiles.pipeline_for(compiled_for)
    with _quiet():
        try:
            return relax.build(
                mod, target=compiled_for, relax_pipeline=pipeline, tir_pipeline=kernels
            )
        except Exception as exc:
            raise LoweringError(f"TVM build for {target.name} failed: {_first_line(exc)}") from exc


def export(executable: Any, target: Target, path: Path, workspace: Path) -> dict[str, Any]:
    """Write the library; returns facts about its device code (empty for CPU targets)."""
    from tvm.support import cc

    workspace.mkdir(parents=True, exist_ok=True)
    if target.device == "cuda":
        from nlpress.targets import cuda

        return cuda.export(executable, target, path, workspace)
    compiler = target.cross_compiler or cc.create_shared
    fcompile = cc.cross_compiler(compiler, options=["-O2", "-pthread"], add_files=[PARALLEL_C])
    try:
        executable.export_library(os.fspath(path), fcompile=fcompile, workspace_dir=workspace)
    except Exception as exc:
        raise LoweringError(
            f"linking the {target.name} library failed: {_first_line(exc)}"
        ) from exc
    return {}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep TVM's prints and warnings out of the user's terminal; log them at debug level."""
    stream = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(stream), native_log():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            if stream.getvalue().strip():
                log.debug("tvm: %s", stream.getvalue().strip())


# A line of TVM's C++ log, e.g. "[16:41:08] /project/include/tvm/topi/transform.h:1261: Warning:".
_NATIVE_LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


@contextlib.contextmanager
def native_log() -> Iterator[None]:
    """Catch what TVM's C++ code writes to stderr (its LOG(WARNING) lines) while the block runs.

    TVM's lines go to the debug log (shown with --verbose, which skips the capture); anything
    else written meanwhile, nlpress's own warnings included, is written out after the block.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            native = [line for line in text.splitlines() if _NATIVE_LOG_LINE.match(line)]
            rest = [line for line in text.splitlines() if not _NATIVE_LOG_LINE.match(line)]
            if native:
                log.debug("tvm: %s", "\n".join(native))
            if rest:
                sys.stderr.write("\n".join(rest) + "\n")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in reversed(lines):  # TVM puts the message after its traceback
        if not line.startswith(("File ", "Traceback", "  ")):
            return line[:500]
    return type(exc).__name__
