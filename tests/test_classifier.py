"""Linear classifier of the probe: accuracy on easy/impossible data, early stopping, batching, scaler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audiorq.probe.classifier import (
    StandardScaler,
    batched_accuracy,
    carve_validation,
    linear_ce_gradients,
    train_linear_classifier,
)


@pytest.fixture(autouse=True)
def one_thread():
    # These problems are tiny: one thread avoids OpenMP hand-off costs on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n, n_classes=5, d=16, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, d, generator=torch.Generator().manual_seed(123)) * 4
    y = torch.randint(0, n_classes, (n,), generator=g)
    return centers[y] + spread * torch.randn(n, d, generator=g), y


def test_linearly_separable_reaches_99_percent():
    (xtr, ytr), (xva, yva), (xte, yte) = blobs(600, seed=1), blobs(200, seed=2), blobs(400, seed=3)
    runs = train_linear_classifier(xtr, ytr, xva, yva, xte, yte, 5, seeds=[42, 43])
    assert [r.test_acc >= 0.99 for r in runs] == [True, True]


def test_shuffled_labels_give_chance():
    x, y = blobs(3000, n_classes=4, seed=4)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    runs = train_linear_classifier(x[:1500], y[:1500], x[1500:1800], y[1500:1800], x[1800:], y[1800:], 4,
                                   seeds=[42, 43, 44], max_epochs=30)
    for r in runs:
        assert abs(r.test_acc - 0.25) < 0.05  # 1200 test items: chance +- ~3.5 sigma


def test_early_stopping_restores_best_epoch():
    # Overlapping classes (labels from a noisy projection): validation accuracy goes up and down.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(700, 20, generator=g)
    score = x[:, 0] + 1.5 * torch.randn(700, generator=g)
    y = (score > -0.5).long() + (score > 0.5).long()
    patience = 4
    runs = train_linear_classifier(x[:300], y[:300], x[300:400], y[300:400], x[400:], y[400:], 3,
                                   seeds=[7, 8, 9], lr=3e-2, patience=patience, max_epochs=200)
    for r in runs:
        hist = np.array(r.val_history)
        # ties count as improvement: the restored epoch is the LAST epoch reaching the maximum
        assert r.best_epoch == len(hist) - int(np.argmax(hist[::-1]))
        assert r.epochs == r.best_epoch + patience  # stopped after `patience` epochs without improvement
        assert r.val_acc == pytest.approx(hist.max())
        # the returned (restored) weights really are the best epoch's: recompute validation accuracy
        xva = r.scaler(x[300:400])
        acc = ((xva @ r.weight.T + r.bias).argmax(1) == y[300:400]).float().mean().item()
        assert acc == pytest.approx(hist[r.best_epoch - 1])
    assert any(r.val_history[-1] < max(r.val_history) for r in runs)  # the test exercised a restore


def test_batched_runs_equal_separate_runs():
    x, y = blobs(500, n_classes=4, d=24, spread=3.0, seed=6)
    args = (x[:300], y[:300], None, None, x[300:], y[300:], 4)
    together = train_linear_classifier(*args, seeds=[42, 43, 44], max_epochs=15)
    for run in together:
        alone = train_linear_classifier(*args, seeds=[run.seed], max_epochs=15)[0]
        assert (alone.best_epoch, alone.epochs, alone.n_valid) == (run.best_epoch, run.epochs, run.n_valid)
        torch.testing.assert_close(alone.weight, run.weight, rtol=1e-4, atol=1e-5)
        assert alone.test_acc == pytest.approx(run.test_acc)


def test_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, 5, generator=g), torch.randint(0, 4, (3, 8), generator=g)
    w = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    b = torch.randn(3, 1, 4, generator=g, requires_grad=True)
    for scale in (1.0, 0.25):
        logits = torch.baddbmm(b, x, w.transpose(1, 2))
        per_run = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(3, 8).mean(1)
        dw, db = torch.autograd.grad(scale * per_run.sum(), (w, b))
        mw, mb = linear_ce_gradients(x, y, w.detach(), b.detach(), scale)
        torch.testing.assert_close(mw, dw)
        torch.testing.assert_close(mb, db)


def test_ce_over_c_is_evar_loss():
    # EVAR's loss: -mean over batch x classes of onehot * log_softmax == CE / C.
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    evar = -(F.one_hot(y, 5) * logits.log_softmax(-1)).mean()
    assert evar.item() == pytest.approx(F.cross_entropy(logits, y).item() / 5)


def test_carved_validation_covers_classes():
    labels = np.array([0] * 90 + [1] * 6 + [2] * 3 + [3] * 1)
    for seed in range(20):
        fit, val = carve_validation(labels, 0.1, seed)
        assert len(val) == 10 and len(fit) == 90
        assert set(fit) | set(val) == set(range(100)) and not set(fit) & set(val)
        assert {0, 1, 2} <= set(labels[val].tolist())  # every class with >= 2 items
        assert 3 in labels[fit]  # a singleton class stays trainable


def test_standard_scaler_matches_sklearn():
    from sklearn.preprocessing import StandardScaler as SkScaler

    x = torch.randn(50, 6) * torch.tensor([1.0, 10, 0.1, 3, 5, 1]) + 7
    x[:, 3] = 2.0  # a constant feature: scale 1, like sklearn
    ours = StandardScaler.fit(x)(x)
    ref = torch.from_numpy(SkScaler().fit_transform(x.double().numpy())).float()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_batched_accuracy_chunks_like_direct():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(70, 5, generator=g), torch.randint(0, 3, (70,), generator=g)
    w, b = torch.randn(2, 3, 5, generator=g), torch.randn(2, 1, 3, generator=g)
    direct = ((x @ w.transpose(1, 2) + b).argmax(-1) == y).float().mean(1)
    torch.testing.assert_close(batched_accuracy(x, y, w, b), direct)


def test_bad_arguments_rejected():
    x, y = blobs(40, n_classes=3)
    with pytest.raises(ValueError, match="n_classes"):
        train_linear_classifier(x, y, None, None, x, y, 2)
    with pytest.raises(ValueError, match="loss"):
        train_linear_classifier(x, y, None, None, x, y, 3, loss="mse")
