"""fold on the real all-MiniLM-L6-v2: exact, and every shape chain gone where shapes are static."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nlpress.ir import Model, load_model
from nlpress.ir.verify import compare
from nlpress.passes.fold import Fold

pytestmark = pytest.mark.slow

STATIC = {name: (1, 128) for name in ("input_ids", "attention_mask", "token_type_ids")}
TEXT = "nlpress folds the shape arithmetic that exporters leave behind."


def text_feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    from nlpress.models import zoo

    tok = Tokenizer.from_file(str(zoo.get("minilm-l6").tokenizer()))
    tok.enable_padding(length=seq)
    tok.enable_truncation(max_length=seq)
    enc = tok.encode_batch([TEXT[: 20 + 9 * i] for i in range(batch)])
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.fixture(scope="module")
def minilm(minilm_path: Path) -> Model:
    return load_model(minilm_path)


def test_static_minilm_folds_every_shape_chain(minilm: Model) -> None:
    result = Fold(shape=STATIC).run(minilm)
    ops = [n.op for n in result.model.graph.nodes]
    assert not {"Shape", "ConstantOfShape", "Range", "Expand", "Constant"} & set(ops)
    assert len(ops) <= 240
    assert compare(minilm, result.model, text_feeds(1, 128)).worst <= 1e-5
    assert not Fold(shape=STATIC).run(result.model).changed

    from tvm.relax.frontend.onnx import from_onnx

    from_onnx(result.model.to_onnx())


def test_dynamic_minilm_keeps_batch_and_sequence_symbolic(minilm: Model) -> None:
    result = Fold().run(minilm)
    assert result.stats["nodes_after"] < 300
    for tensor in result.model.graph.inputs:
        assert tensor.shape == ["batch", "sequence"]
    feeds = [text_feeds(b, s) for b, s in ((1, 9), (2, 16), (3, 40))]
    assert compare(minilm, result.model, feeds).worst <= 1e-5
    assert not Fold().run(result.model).changed
