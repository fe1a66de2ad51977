"""Independent NumPy (float64) implementations of the spec's formulas.

Written from ../shared/spec/methods.md, not from lt_jax's code, so the tests
compare two implementations of the same text.
"""

import numpy as np

LN50 = np.log(50.0)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ce(z, y, w=None):
    loss = -log_softmax(z)[np.arange(len(y)), y]
    return loss if w is None else loss * w[y]


def onehot(y, c):
    return np.eye(c)[y]


def focal(z, y, gamma, w=None):
    logp = log_softmax(z)[np.arange(len(y)), y]
    loss = -((1 - np.exp(logp)) ** gamma) * logp
    return loss if w is None else loss * w[y]


def sigmoid_focal(z, y, gamma, w=None):
    """Cui et al.'s sigmoid focal loss in probability space: per class p_t = sigmoid(z) for
    the label, 1 - sigmoid(z) otherwise; -(1 - p_t)^gamma log p_t summed over classes."""
    p = 1 / (1 + np.exp(-z))
    target = np.arange(z.shape[1])[None, :] == np.asarray(y)[:, None]
    p_t = np.where(target, p, 1 - p)
    loss = np.sum(-((1 - p_t) ** gamma) * np.log(p_t), axis=1)
    return loss if w is None else loss * w[y]


def cb_weights(n, beta):
    n = np.asarray(n, np.float64)
    w = (1 - beta) / (1 - beta**n)
    return w / w.sum() * len(n)


def ldam_margins(n, max_m):
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(n, np.float64)))
    return m * max_m / m.max()


def ldam(cos, y, n, max_m=0.5, s=30.0, w=None):
    m = ldam_margins(n, max_m)
    return ce(s * (cos - m[y][:, None] * onehot(y, cos.shape[1])), y, w)


def balanced_softmax(z, y, n):
    return ce(z + np.log(np.asarray(n, np.float64)), y)


def logit_adjusted(z, y, n, tau):
    n = np.asarray(n, np.float64)
    return ce(z + tau * np.log(n / n.sum()), y)


def kps_scale(n):
    n = np.asarray(n, np.float64)
    return np.log(50 * n / n.min()) / LN50


def kps_margins_closed(n, max_m):
    n = np.asarray(n, np.float64)
    return max_m * (LN50 + np.log(n.max() / n)) / (LN50 + np.log(n.max() / n.min()))


def kps_margins_mirror(n, max_m):
    s = kps_scale(n)
    return max_m * s[::-1] / s.max()


def kps_ga_scale_mirror(n, s, cap):
    return np.clip(s * kps_scale(n)[::-1], s, cap)


def kps_ga_scale_closed(n, s, cap):
    n = np.asarray(n, np.float64)
    return np.clip(s * (1 + np.log(n.max() / n) / LN50), s, cap)


def kps(cos, y, n, s=15.0, max_m=0.2, ga=False, cap=50.0):
    m = kps_margins_closed(n, max_m)
    u = kps_scale(n)[None, :] * cos - m[y][:, None] * onehot(y, cos.shape[1])
    scale = kps_ga_scale_closed(n, s, cap)[y][:, None] if ga else s
    return ce(scale * u, y)


def log_gap(n):
    n = np.asarray(n, np.float64)
    gap = np.log(n.max()) - np.log(n)
    return gap / gap.max() if gap.max() > 0 else np.zeros_like(gap)


def fbl(z, f, y, n, lam, t):
    norm = np.sqrt((f * f).sum(axis=1, keepdims=True))
    return ce(z - t * lam * log_gap(n)[None, :] / (norm + 1e-12), y)


def gcl_given_noise(cos, y, n, abs_noise, s, m, kappa, gamma):
    logits = s * (cos - kappa * abs_noise * log_gap(n)[None, :] - m * onehot(y, cos.shape[1]))
    loss = ce(logits, y)
    return (1 - np.exp(-loss)) ** gamma * loss
