"""Long-tailed evaluation metrics, computed on the host from predictions.

Group accuracy is the mean of the per-class accuracies of the classes in the
group (spec section 1); a group with no class is reported as absent (``None``),
never 0 or NaN.
"""

from __future__ import annotations

import numpy as np

from lt_jax.data import longtail


def per_class_accuracy(preds, labels, num_classes: int) -> np.ndarray:
    """Accuracy of every class; NaN for a class absent from the evaluation set."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def expected_calibration_error(confidences, correct, *, num_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |B_b|/N |acc(B_b) - conf(B_b)|."""
    confidences = np.asarray(confidences, np.float64)
    correct = np.asarray(correct, np.float64)
    if confidences.size == 0:
        raise ValueError("ECE of an empty evaluation set is undefined")
    if not np.isfinite(confidences).all():  # a diverged model's NaN scores
        return float("nan")
    bins = np.minimum((confidences * num_bins).astype(np.int64), num_bins - 1)
    ece = 0.0
    for b in range(num_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidences[sel].mean())
    return float(ece)


def confusion_matrix(preds, labels, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def summarize(
    scores: np.ndarray,
    labels: np.ndarray,
    train_class_counts,
    *,
    convention: str = "paper",
    probs: np.ndarray | None = None,
) -> dict:
    """Top-1 overall / many / medium / few, per-class accuracy, ECE and the confusion matrix.

    Args:
      scores: [N, C] prediction scores (argmax is the prediction).
      labels: [N] true labels.
      train_class_counts: [C] training counts (define the shot groups).
      convention: shot-group convention, ``paper`` or ``oltr`` (named in the output).
      probs: [N, C] probabilities for ECE; defaults to softmax(scores).
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    num_classes = scores.shape[1]
    preds = scores.argmax(axis=1)
    if probs is None:
        z = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    acc = per_class_accuracy(preds, labels, num_classes)
    groups = longtail.shot_groups(train_class_counts, convention=convention)
    out = {
        "top1": float(np.mean(preds == labels)),
        "shot_convention": convention,
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in acc],
        "ece": expected_calibration_error(np.max(probs, axis=1), preds == labels),
        "confusion_matrix": confusion_matrix(preds, labels, num_classes).tolist(),
    }
    for g in longtail.GROUPS:
        sel = (groups == g) & ~np.isnan(acc)
        out[g] = float(acc[sel].mean()) if sel.any() else None
    return out


def format_table(results: dict[str, dict]) -> str:
    """Rows of ``name: summary`` as a fixed-width many/medium/few table (percent)."""
    fmt = lambda v: "   -  " if v is None else f"{100 * v:6.2f}"  # noqa: E731
    w = max([22, *(len(name) + 1 for name in results)])
    lines = [f"{'':<{w}}{'top1':>7}{'many':>7}{'medium':>7}{'few':>7}{'ECE':>7}"]
    for name, r in results.items():
        lines.append(
            f"{name:<{w}}{fmt(r['top1']):>7}{fmt(r['many']):>7}{fmt(r['medium']):>7}"
            f"{fmt(r['few']):>7}{fmt(r['ece']):>7}"
        )
    conv = next(iter(results.values()))["shot_convention"] if results else "paper"
    rule = "many >100, medium 20-100, few <20" if conv == "paper" else "many >=100, few <=20"
    lines.append(f"(shot groups: {conv} convention, {rule} training images)")
    return "\n".join(lines)
