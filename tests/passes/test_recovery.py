import numpy as np
import pytest

from nlpress.passes.recovery import output_error, refit, selection


def _data(rows=400, k=12, n=5, seed=0):
    rng = np.random.default_rng(seed)
    # Correlated inputs, so that dropping channels is partly recoverable from the others.
    x = rng.standard_normal((rows, k)) @ rng.standard_normal((k, k)) + 0.5
    w, b = rng.standard_normal((k, n)), rng.standard_normal(n)
    xa = np.hstack([x, np.ones((rows, 1))])
    return x, w, b, xa.T @ xa


def test_identity_projection_recovers_the_layer_exactly():
    _, w, b, gram = _data()
    second, offset = refit(gram, np.eye(w.shape[0]), w, b, damping=0.0)
    np.testing.assert_allclose(second, w, atol=1e-8)
    np.testing.assert_allclose(offset, b, atol=1e-8)
    assert output_error(gram, np.eye(w.shape[0]), second, offset, w, b) < 1e-16


def test_refit_beats_plain_pruning_and_matches_least_squares():
    x, w, b, gram = _data()
    kept = np.array([0, 2, 3, 5, 7, 8, 11])
    p = selection(kept, w.shape[0])
    plain = output_error(gram, p, w[kept], b, w, b)
    second, offset = refit(gram, p, w, b, damping=0.0)
    refitted = output_error(gram, p, second, offset, w, b)
    assert refitted < plain / 2
    target = x @ w + b
    design = np.hstack([x[:, kept], np.ones((len(x), 1))])
    expected = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(np.vstack([second, offset]), expected, atol=1e-6)
    residual = design @ expected - target
    assert refitted == pytest.approx(np.sum(residual**2) / np.sum(target**2), rel=1e-6)


def test_damping_shrinks_toward_smaller_weights():
    _, w, b, gram = _data()
    p = selection(np.arange(6), w.shape[0])
    loose, _ = refit(gram, p, w, b, damping=0.0)
    tight, _ = refit(gram, p, w, b, damping=10.0)
    assert np.linalg.norm(tight) < np.linalg.norm(loose)
