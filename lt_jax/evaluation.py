"""Evaluation: every test example once, the many / medium / few summary, feature statistics.

:func:`evaluate` runs a jitted eval step over an input's ``infer`` batches; the rest is
NumPy on the host (``lt_jax.metrics`` does the accuracy, calibration and shot groups).
"""

from __future__ import annotations

import numpy as np

from lt_jax import metrics


def evaluate(eval_step, params, batch_stats, batches):
    """Logits [N, C] and features [N, D] of every example, each counted once ([K, N, C]
    and [K, N, D] from a step vmapped over K seeds).

    ``batches`` yields ``(batch, mask)``: a batch of global arrays and the host-side
    global mask of its real (not padding) rows.
    """
    logits, feats, pending = [], [], None

    def fetch(outputs, mask):
        logits.append(np.compress(mask, np.asarray(outputs[0]), axis=-2))
        feats.append(np.compress(mask, np.asarray(outputs[1]), axis=-2))

    for batch, mask in batches:
        # Dispatch batch i before waiting for batch i-1, so the device never idles on the host.
        outputs = eval_step(params, batch_stats, batch)
        if pending is not None:
            fetch(*pending)
        pending = (outputs, mask)
    if pending is not None:
        fetch(*pending)
    return np.concatenate(logits, axis=-2), np.concatenate(feats, axis=-2)


def predicted(method, logits, feats):
    """(prediction scores, features) of an evaluation pass under ``method.predict``."""
    return np.asarray(method.predict(logits)), feats


def summarize(
    scores, data, *, shot_convention: str, prob_scale: float = 1.0, sigmoid: bool = False
) -> dict:
    """Top-1, many / medium / few, per-class accuracy and ECE of test ``scores``.

    ``softmax(prob_scale * scores)`` are the probabilities calibration is measured on
    (cosine heads train ``softmax(s * cos)``); with ``sigmoid``, ``sigmoid(prob_scale *
    scores)`` (a loss with one sigmoid per class: the confidence is the predicted class's).
    """
    z = prob_scale * np.asarray(scores, np.float64)
    if sigmoid:
        probs = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, without overflow
    else:
        z -= z.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return metrics.summarize(
        scores, data.test_labels, data.class_counts, convention=shot_convention, probs=probs
    )


def feature_summary(feats, labels, num_classes) -> dict:
    """Per-class mean L2 norm of the test features (the statistic that motivates FBL)."""
    norms = np.linalg.norm(np.asarray(feats, np.float64), axis=1)
    total = np.bincount(labels, weights=norms, minlength=num_classes)
    count = np.bincount(labels, minlength=num_classes)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return {"feature_norm_per_class": [None if np.isnan(v) else float(v) for v in mean]}


def save_embedding(path, feats, labels, seed, max_points: int = 2000) -> None:
    """A 2-D PCA projection of (up to ``max_points``) test features, for the report."""
    feats = np.asarray(feats, np.float64)
    pick = np.random.default_rng(seed).permutation(len(feats))[:max_points]
    x = feats[pick] - feats[pick].mean(axis=0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    np.savez(
        path,
        coords=(x @ vt[:2].T).astype(np.float32),
        labels=np.asarray(labels)[pick],
        explained_variance_ratio=(sv[:2] ** 2 / max((sv**2).sum(), 1e-30)).astype(np.float32),
    )


AGGREGATED = ("top1", "many", "medium", "few", "ece")


def seed_results(seeds, finals, bests, diverged=()) -> dict:
    """A stage's results over its seeds: the first seed's ``final`` / ``best_epoch`` (what
    a single run writes), ``per_seed`` (``seed``, ``final``, ``best_epoch``, ``diverged``)
    and their ``aggregate``."""
    per_seed = [
        {"seed": int(s), "final": f, "best_epoch": b, "diverged": s in diverged}
        for s, f, b in zip(seeds, finals, bests, strict=True)
    ]
    return {
        "final": finals[0],
        "best_epoch": bests[0],
        "per_seed": per_seed,
        "aggregate": aggregate(per_seed),
    }


def aggregate(per_seed) -> dict:
    """Mean and sample standard deviation (n - 1; None below two seeds) of the final and
    best-epoch metrics over the seeds that did not diverge."""
    kept = [r for r in per_seed if not r["diverged"]]
    out = {"seeds": [r["seed"] for r in kept], "diverged": [r["seed"] for r in per_seed
           if r["diverged"]]}  # fmt: skip
    for part in ("final", "best_epoch"):
        out[part] = {}
        for key in AGGREGATED:
            values = [r[part][key] for r in kept if r[part].get(key) is not None]
            mean = float(np.mean(values)) if values else None
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            out[part][key] = {"mean": mean, "std": std}
    return out
