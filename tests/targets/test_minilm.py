"""MiniLM-L6 end to end: fold, lower, load; outputs equal ONNX Runtime's on real-text feeds.

Static 1x128 and one symbolic-shape artifact run at several (batch, seq) pairs, on x86 here and
on arm under qemu-user. Slow: each compile takes seconds, and emulation minutes.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from nlpress.ir import Model, load_model
from nlpress.ir.verify import run
from nlpress.models import text, zoo
from nlpress.passes import parse, run_pipeline
from nlpress.targets import FeedError, build_artifact, emulation, get_target, load

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

TOLERANCE = 1e-4
STATIC = "fold{shape=input_ids:1x128,attention_mask:1x128,token_type_ids:1x128}"
PAIRS = [(1, 16), (2, 40), (3, 77)]


def _feeds(batch: int, seq: int, offset: int = 0) -> dict[str, np.ndarray]:
    tokenizer = text.load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    sentences = text.calibration_sentences()[offset : offset + batch]
    return text.encode(tokenizer, sentences, max_length=seq, padding="max_length")


def _worst(reference: Model, outputs: list[np.ndarray], feeds: dict[str, np.ndarray]) -> float:
    expected = list(run(reference, feeds).values())
    assert [e.shape for e in expected] == [o.shape for o in outputs]
    return max(float(np.max(np.abs(e - o))) for e, o in zip(expected, outputs, strict=True))


@pytest.fixture(scope="module")
def original(minilm_path: Path) -> Model:
    return load_model(minilm_path)


@pytest.fixture(scope="module")
def folded(original: Model) -> dict[str, Model]:
    return {
        "static": run_pipeline(original, parse(STATIC)).model,
        "symbolic": run_pipeline(original, parse("fold")).model,
    }


def _compile(model: Model, target: str, out: Path) -> Path:
    began = time.perf_counter()
    build_artifact(model, get_target(target), out, manifest={})
    log.warning("compiled minilm-l6 for %s in %.1f s", target, time.perf_counter() - began)
    return out


def test_x86_static(original: Model, folded: dict[str, Model], tmp_path: Path) -> None:
    out = _compile(folded["static"], "x86", tmp_path / "static")
    feeds = _feeds(1, 128)
    session = load(out)
    assert session.get_inputs()[0].shape == [1, 128]
    worst = _worst(original, session.run(None, feeds), feeds)
    log.warning("x86 static 1x128: max abs diff %.2e", worst)
    assert worst <= TOLERANCE


def test_x86_symbolic(original: Model, folded: dict[str, Model], tmp_path: Path) -> None:
    out = _compile(folded["symbolic"], "x86", tmp_path / "symbolic")
    session = load(out)
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    for index, (batch, seq) in enumerate(PAIRS):
        feeds = _feeds(batch, seq, offset=index * 4)
        worst = _worst(original, session.run(None, feeds), feeds)
        log.warning("x86 symbolic %dx%d: max abs diff %.2e", batch, seq, worst)
        assert worst <= TOLERANCE
    # The position table has 512 rows: 512 tokens run, 513 are refused before any kernel runs
    # (they crashed the process with SIGSEGV before the limit was recorded).
    assert session.manifest["dim_limits"]["sequence"]["max"] == 512
    longest = _feeds(1, 512)
    assert _worst(original, session.run(None, longest), longest) <= TOLERANCE
    too_long = {k: np.concatenate([v, v[:, -1:]], axis=1) for k, v in longest.items()}
    with pytest.raises(FeedError, match=r"dim 1 \(sequence\) is 513; the model computes at most"):
        session.run(None, too_long)


def test_x86_symbolic_four_output_export(tmp_path: Path) -> None:
    """paraphrase-MiniLM-L3-v2 as another exporter wrote it: pooling expands the mask."""
    import nlpress

    path = zoo.model_path("paraphrase-minilm-l3")
    session = load(nlpress.compile(str(path), "x86", tmp_path / "paraphrase"))
    assert [i.shape for i in session.get_inputs()] == [["batch_size", "sequence_length"]] * 2
    original = load_model(path)
    for index, (batch, seq) in enumerate([*PAIRS, (1, 512)]):
        feeds = _feeds(batch, seq, offset=index * 4)
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        worst = _worst(original, session.run(None, feeds), feeds)
        log.warning("paraphrase symbolic %dx%d: max abs diff %.2e", batch, seq, worst)
        assert worst <= TOLERANCE


def _arm_skip() -> str | None:
    reason = emulation.available()
    if reason is None and shutil.which("aarch64-linux-gnu-gcc") is None:
        reason = "aarch64-linux-gnu-gcc not found: run .ci/setup-arm.sh"
    return reason


@pytest.mark.skipif(_arm_skip() is not None, reason=str(_arm_skip()))
@pytest.mark.parametrize("kind", ["static", "symbolic"])
def test_arm_under_qemu(
    original: Model, folded: dict[str, Model], tmp_path: Path, kind: str
) -> None:
    from nlpress.targets.arm import run_emulated

    out = _compile(folded[kind], "arm", tmp_path / kind)
    pairs = [(1, 128)] if kind == "static" else PAIRS
    feeds = [_feeds(b, s, offset=i * 4) for i, (b, s) in enumerate(pairs)]
    results = run_emulated(out, feeds)
    for (batch, seq), one, outputs in zip(pairs, feeds, results, strict=True):
        worst = _worst(original, outputs, one)
        log.warning("arm %s %dx%d: max abs diff %.2e", kind, batch, seq, worst)
        assert worst <= TOLERANCE


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_builds_device_code(folded: dict[str, Model], tmp_path: Path, arch: str) -> None:
    from nlpress.targets.cuda import device_code, packed_modules

    out = tmp_path / arch
    began = time.perf_counter()
    build_artifact(folded["symbolic"], get_target("cuda", arch=arch), out, manifest={})
    log.warning("compiled minilm-l6 for cuda %s in %.1f s", arch, time.perf_counter() - began)
    assert ("cuda", "fatbin") in packed_modules(out / "model.so")
    cubins = [i for i in device_code(out / "model.so") if i.kind == "elf"]
    assert [i.arch for i in cubins] == [arch]
    log.warning("cuda %s: cubin %d bytes, %d kernels", arch, cubins[0].size, len(cubins[0].kernels))
    assert len(cubins[0].kernels) > 20
