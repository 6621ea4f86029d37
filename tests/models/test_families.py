"""Every encoder family, as a user's Hugging Face folder, through fold, x86, int8 and the lossy
passes: exact where nothing is lost, valid where something is, refused in one line otherwise."""

import json

import numpy as np
import pytest

import nlpress
from nlpress.ir import load_model
from nlpress.ir.verify import run
from nlpress.models import zoo
from nlpress.models.families import FAMILIES, PRUNE_HEADS, PRUNE_NEURONS, write_folder
from nlpress.models.text import encode, load_tokenizer
from nlpress.passes.base import PreconditionError

pytestmark = pytest.mark.slow

# What the structure finders do not recognize yet, and the reason they give.
NO_FFN = "pattern=neurons found no FFN it recognizes"
NO_ATTENTION = "pattern=heads found no attention it recognizes"
REFUSED = {
    ("deberta-v2", PRUNE_HEADS): NO_ATTENTION,
    ("modernbert", PRUNE_NEURONS): NO_FFN,
    ("modernbert", PRUNE_HEADS): NO_ATTENTION,
    ("gpt2", PRUNE_HEADS): NO_ATTENTION,
}
SHARED = {"albert"}  # one layer's weights serve every layer: structured pruning leaves them
SENTENCES = ["def parse(x): return int(x)", "The driver panics on unload.", "u coming tonight?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("families")
    return {name: write_folder(name, root) for name in FAMILIES}


def _fidelity(artifact):
    return json.loads((artifact / "manifest.json").read_text())["fidelity"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fold_and_the_x86_artifact_are_exact_and_int8_is_valid(folders, name, tmp_path):
    folder = folders[name]
    fp32 = nlpress.compile(str(folder), "x86", tmp_path / "fp32")
    assert _fidelity(fp32)["tvm_vs_onnxruntime"]["worst"] <= 1e-4
    folded = load_model(fp32 / "model.onnx")
    texts = encode(load_tokenizer(str(folder / "tokenizer.json")), SENTENCES, 128)
    feeds = {t.name: texts[t.name] for t in folded.graph.inputs}
    exported = run(load_model(zoo.cached_export(zoo.folder_entry(folder))), feeds)
    for output, value in run(folded, feeds).items():
        np.testing.assert_allclose(value, exported[output], atol=1e-5)
    int8 = nlpress.compile(str(folder), "x86", tmp_path / "int8", "int8")
    assert _fidelity(int8)["heldout"]["mean_cosine"] >= 0.999
    assert _fidelity(int8)["tvm_vs_onnxruntime"]["worst"] <= 1e-3
    assert (int8 / "model.so").stat().st_size < 0.45 * (fp32 / "model.so").stat().st_size


@pytest.mark.parametrize("pipeline", [PRUNE_NEURONS, PRUNE_HEADS, "fold,factorize-matmul,cleanup"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_lossy_passes_are_valid_skip_shared_weights_or_refuse_in_one_line(
    folders, name, pipeline
):
    folder = str(folders[name])
    if (name, pipeline) in REFUSED:
        with pytest.raises(PreconditionError, match=REFUSED[name, pipeline]) as raised:
            nlpress.optimize(folder, pipeline)
        assert "\n" not in str(raised.value)
        return
    result = nlpress.optimize(folder, pipeline)
    stats = result.records[1].stats
    if name in SHARED and "prune" in pipeline:
        assert stats["skipped_shared_weight"] > 0 and not result.records[1].changed
        return
    assert result.records[1].changed and result.heldout is not None
    assert 0.5 < result.heldout.mean_cosine <= 1.0 + 1e-9
