from types import SimpleNamespace

import numpy as np
import pytest
from graphs import copied_ids_encoder, embedding

from nlpress.ir import NlpressError
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import (
    fidelity,
    recall_at_1,
    sentence_embeddings,
    sentence_fidelity,
    spearman,
)
from nlpress.models.text import load_tokenizer


def test_recall_at_1_counts_both_directions():
    a = np.eye(3)
    b = np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert recall_at_1(np.vstack([a, a]), 3) == 1.0
    assert recall_at_1(np.vstack([a, b]), 3) == pytest.approx(1 / 3)


def test_spearman_is_rank_correlation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 6))
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def _embedding_model(width: int, scale: float = 1.0, seed: int = 0):
    """input_ids -> Gather from a random table: token embeddings of a toy encoder."""
    table = np.random.default_rng(seed).standard_normal((30522, width)).astype(np.float32)
    return embedding(table * scale, ids_name="input_ids")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))


def test_identical_models_have_perfect_fidelity(tokenizer):
    reference = session(_embedding_model(8))
    result = fidelity(session(_embedding_model(8, scale=3.0)), reference, tokenizer)
    assert result.mean_cosine == pytest.approx(1.0, abs=1e-6)
    assert result.recall_at_1 == result.reference_recall_at_1
    assert result.spearman == pytest.approx(1.0)
    assert result.sentences >= 300


def test_a_different_model_has_lower_fidelity(tokenizer):
    result = fidelity(session(_embedding_model(8, seed=1)), session(_embedding_model(8)), tokenizer)
    assert result.min_cosine < result.mean_cosine < 0.9


class _Counted:
    """A session that counts the batches it runs; with `width=None` its output has no width."""

    def __init__(self, inner, width=0):
        self.inner, self.width, self.runs = inner, width, 0

    def get_inputs(self):
        return self.inner.get_inputs()

    def get_outputs(self):
        if self.width is not None:
            return self.inner.get_outputs()
        return [
            SimpleNamespace(name=o.name, type=o.type, shape=["batch", "sequence", "width"])
            for o in self.inner.get_outputs()
        ]

    def run(self, names, feeds):
        self.runs += 1
        return self.inner.run(names, feeds)


def test_widths_must_match(tokenizer):
    candidate, reference = (
        _Counted(session(_embedding_model(8))),
        _Counted(session(_embedding_model(16))),
    )
    with pytest.raises(NlpressError, match="width 8 and the reference's 16"):
        fidelity(candidate, reference, tokenizer)
    assert candidate.runs == reference.runs == 0, "declared widths: refused before any text ran"


def test_an_undeclared_width_is_found_on_one_text(tokenizer):
    candidate = _Counted(session(_embedding_model(8)), width=None)
    with pytest.raises(NlpressError, match="width 8 and the reference's 16"):
        fidelity(candidate, session(_embedding_model(16)), tokenizer)
    assert candidate.runs == 1, "one tiny batch, not the evaluation text"


def test_embeddings_keep_text_order_and_fill_static_shapes(tokenizer):
    texts = ["a much longer sentence about the weather in spring", "hi", "a middle one"]
    dynamic = sentence_embeddings(session(_embedding_model(8)), tokenizer, texts)
    one_by_one = np.vstack(
        [sentence_embeddings(session(_embedding_model(8)), tokenizer, [t]) for t in texts]
    )
    np.testing.assert_allclose(dynamic, one_by_one, atol=1e-6)
    assert dynamic.shape == (3, 8)


def _perturbed(m, scale=0.3):
    """`m` with seeded noise of `scale` times its spread added to the weight `w2`."""
    out = m.copy()
    w2 = out.graph.tensors()["w2"]
    noise = np.random.default_rng(5).standard_normal(w2.values.shape).astype(np.float32)
    w2.values = w2.values + scale * w2.values.std() * noise
    return out


def test_sentences_are_scored_on_the_float_output_after_an_integer_copy_of_the_ids(tokenizer):
    texts = ["a much longer sentence about the weather in spring", "hi", "a middle one"]
    m = copied_ids_encoder()
    same = sentence_fidelity(session(m), session(copied_ids_encoder()), tokenizer, texts)
    assert same.mean_cosine == pytest.approx(1.0, abs=1e-6)
    other = _perturbed(m)
    found = sentence_fidelity(session(other), session(m), tokenizer, texts)
    want = []
    for text in texts:  # one sentence at a time: the mean of its tokens under the mask
        encoded = tokenizer.encode(text)
        ids, real = np.array([encoded.ids]), np.array(encoded.attention_mask) == 1
        a, b = (
            session(x).run(["tokens"], {"input_ids": ids})[0][0][real].mean(0) for x in (m, other)
        )
        want.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert max(want) < 1
    np.testing.assert_allclose(found.per_sentence, want, atol=1e-5)
