"""The releases' CIFAR-LT recipes in PyTorch, written independently: trained whole beside lt_jax.

Usage: python benchmarks/torch_reference.py [--method ce|cb_focal|ldam_drw|kps_ga|fbl|gcl]
           [--epochs 10] [--seed 0] [--eval-every 0] [--device cpu|cuda]
           [--data-dir ../shared/data/cifar-10-batches-py] [--threads N] [--out FILE.json]
           [--checkpoint FILE.pt]
       python benchmarks/torch_reference.py --summarize FILE.json ...
       (needs PyTorch: pip install -e '.[bench]')

Trains a method's released recipe (stage 1; :data:`RELEASE`): the releases' ResNet-32
(:func:`release_resnet32`: option-A shortcuts, kaiming_normal_ init, nn.Linear or NormedLinear
head), SGD 0.9 with weight decay 2e-4 on every parameter, ``adjust_learning_rate``
(:func:`release_lr`), the released criterion of each epoch (:func:`release_loss`: LDAM with
DRW, KPS with released GA, FBL's curriculum, GCL's noise with mixup; Cui et al.'s sigmoid CB
focal with its prior head bias, a TensorFlow release run in this pipeline), pad-4 crop + flip and
the releases' normalisation, each epoch shuffled with its last partial batch, on exactly the
CIFAR-LT training images that ``configs/cifar_lt.py`` selects for the method (loaded through
lt_jax, the release split). Its own initialisation and draws: compare with lt_jax's runs
across seeds. ``--eval-every 1`` gives the releases' best-epoch number; the final epoch is
the headline, as in lt_jax's reports. 200 epochs is the recipe; fewer compress it (epoch e
runs the release's epoch ``e * 200 // epochs``).

Prints the final and best top-1; ``--out`` writes every evaluation and the per-class accuracy
as JSON, ``--summarize`` prints a table of such files (mean ± std over seeds, published number
beside it). On a lent GPU: ``REFERENCE=fbl bash launch/gpu_reproduce_cifar_lt.sh`` runs it
beside lt_jax's runs of the same seeds.

The module also holds the releases' recipe for ``benchmarks/lockstep.py``, which runs it step
by step beside lt_jax from the same weights and random draws (:func:`release_train_step`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar-10-batches-py")


# --- the releases' recipe, written independently in PyTorch (for benchmarks/lockstep.py) -------
#
# Written from what the official releases do (kaidic/LDAM-DRW, Keke921/KPSLoss, juyongjiang/FBL,
# Keke921/GCLLoss at the commits named in the README), not from lt_jax: the ResNet-32 with
# option-A shortcuts, NormedLinear, kaiming_normal_ init, SGD(momentum, weight_decay) on every
# parameter, adjust_learning_rate's per-epoch schedule and the five losses below, each reduced as
# the release reduces it. Classes are sorted head first (CIFAR-LT), as the releases assume.


def release_resnet32(num_classes: int, head: str = "linear"):
    """The releases' ResNet-32 (models/resnet_cifar.py); ``forward`` returns (scores, feature).

    Module names follow lt_jax's parameter tree (stem, stem_bn, blocks.i.conv1, ..., head) so
    that weights can be copied across; the computation is the release's.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    class NormedLinear(nn.Module):  # weight (in, out); cosine of feature and column
        def __init__(self, cin, cout):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(cin, cout).uniform_(-1, 1))
            self.weight.data.renorm_(2, 1, 1e-5).mul_(1e5)

        def forward(self, x):
            return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))

    class Block(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.option_a = stride != 1 or cin != planes
            self.planes = planes

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.option_a:  # LambdaLayer: subsample, planes // 4 zero channels each side
                q = self.planes // 4
                x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, q, q), "constant", 0)
            return F.relu(out + x)

    class ResNet32(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.stem_bn = nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for planes, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(5):
                    blocks.append(Block(cin, planes, stride if i == 0 else 1))
                    cin = planes
            self.blocks = nn.Sequential(*blocks)
            linear = NormedLinear if head == "cosine" else nn.Linear
            self.head = linear(64, num_classes)
            for m in self.modules():  # _weights_init
                if isinstance(m, nn.Linear | nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight)

        def forward(self, x):
            out = self.blocks(F.relu(self.stem_bn(self.stem(x))))
            feature = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
            return self.head(feature), feature

    return ResNet32()


def release_lr(epoch: int, *, base: float = 0.1, factors=(0.01, 0.0001)) -> float:
    """adjust_learning_rate of the releases for 0-based ``epoch`` of a 200-epoch run:
    ``epoch + 1 <= 5`` linear warm-up, ``> 180`` base * factors[1], ``> 160`` base * factors[0]
    (LDAM-DRW, FBL: 0.01 / 0.0001; KPS, GCL: 0.1 / 0.01)."""
    epoch = epoch + 1
    if epoch <= 5:
        return base * epoch / 5
    if epoch > 180:
        return base * factors[1]
    if epoch > 160:
        return base * factors[0]
    return base


def _onehot_bool(target, num_classes):
    import torch

    index = torch.zeros(target.shape[0], num_classes, dtype=torch.bool, device=target.device)
    return index.scatter_(1, target.view(-1, 1), True)


def release_class_weights(cls_num_list, beta: float = 0.9999):
    """The DRW / CB weights of the releases: (1 - beta) / (1 - beta^n), normalised to sum C."""
    effective_num = 1.0 - np.power(beta, cls_num_list)
    w = (1.0 - beta) / np.array(effective_num)
    return w / np.sum(w) * len(cls_num_list)


def release_loss(method: str, cls_num_list, *, epoch: int, epochs: int = 200, device="cpu"):
    """The release's criterion for ``method`` at 0-based ``epoch``, as a function
    ``(scores, feature, target, noise) -> scalar`` (``noise``: GCL's N(0, 1/3) draw); its
    per-class constants live on ``device``."""
    import torch
    from torch.nn import functional as F

    n = torch.tensor(np.asarray(cls_num_list, np.float64), dtype=torch.float32, device=device)
    num_classes = len(cls_num_list)
    if method == "ce":
        return lambda z, f, y, noise: F.cross_entropy(z, y)
    if method == "ldam_drw":  # LDAMLoss(max_m=0.5, s=30), weight from epoch // 160
        m_list = 1.0 / torch.sqrt(torch.sqrt(n))
        m_list = m_list * (0.5 / torch.max(m_list))
        drw = release_class_weights(cls_num_list)
        weights = [None, torch.tensor(drw, dtype=torch.float32, device=device)]
        weight = weights[min(epoch // 160, 1)]

        def ldam(x, f, y, noise):
            index = _onehot_bool(y, num_classes)
            output = torch.where(index, x - m_list[y].view(-1, 1), x)
            w = None if weight is None else weight.to(output.dtype)
            return F.cross_entropy(30.0 * output, y, weight=w)

        return ldam
    if method == "kps_ga":  # KPSLoss(max_m=0.2, s=15), weighted (GA) from epoch 120
        s_list = torch.log(n * (50 / n.min()))
        s_list = s_list * (1 / s_list.min())
        m_list = torch.flip(s_list, dims=[0])
        m_list = m_list * (0.2 / m_list.max())
        weighted = epoch >= 120

        def kps(x, f, y, noise):
            cosine = x * s_list
            output = torch.where(_onehot_bool(y, num_classes), cosine - m_list, cosine)
            if weighted:
                batch_s = torch.clamp(torch.flip(s_list, dims=[0]) * 15.0, 15.0, 50.0)[y]
                output = output * batch_s.view(-1, 1)
            else:
                output = output * 15.0
            return F.cross_entropy(output, y)

        return kps
    if method == "fbl":  # FeaBalLoss(lambda_=60), curr = (epoch / (epochs - 10)) ** 2
        lam_list = torch.log(n)
        lam_list = lam_list.max() - lam_list
        lam_list = lam_list * (1 / lam_list.max())
        curr = (epoch / (epochs - 10)) ** 2

        def fbl(out, feat, y, noise):
            feat_norm = torch.norm(feat, dim=1).unsqueeze(1).repeat([1, num_classes])
            return F.cross_entropy(out - curr * 60.0 * lam_list / (feat_norm + 1e-12), y)

        return fbl
    if method == "gcl":  # GCLLoss(m=0, s=30, noise_mul=0.5), stage 1
        m_list = torch.log(n)
        m_list = m_list.max() - m_list

        def gcl(cosine, f, y, noise):
            cosine = cosine - 0.5 * noise.abs() / m_list.max() * m_list
            output = torch.where(_onehot_bool(y, num_classes), cosine - 0.0, cosine)
            return F.cross_entropy(30.0 * output, y)

        return gcl
    if method == "cb_focal":  # Cui et al.'s focal_loss (TF): sigmoids, CB weights, sum / B
        w = torch.tensor(release_class_weights(cls_num_list), dtype=torch.float32, device=device)

        def cb_focal(z, f, y, noise):
            t = F.one_hot(y, num_classes).to(z.dtype)
            bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
            modulator = torch.exp(-t * z - torch.log1p(torch.exp(-z)))  # gamma 1
            return (w[y].view(-1, 1) * modulator * bce).sum() / len(y)

        return cb_focal
    raise ValueError(
        f"no release criterion for {method!r}; valid: ce, cb_focal, ldam_drw, kps_ga, fbl, gcl"
    )


# The releases' per-method settings on CIFAR-LT, read from their training scripts: the head
# (NormedLinear or nn.Linear), the batch size, adjust_learning_rate's factors after epochs 160
# and 180, mixup's alpha (GCL), and for CB focal (Cui et al., a TensorFlow release, run here in
# the PyTorch releases' pipeline) the head bias starting at -log(C - 1) with no weight decay.
# Every release: SGD momentum 0.9, weight decay 2e-4, lr 0.1.
RELEASE = {
    "ce": dict(head="linear", batch=128, factors=(0.01, 0.0001), mixup=0.0),
    "cb_focal": dict(head="linear", batch=128, factors=(0.01, 0.0001), mixup=0.0, prior=True),
    "ldam_drw": dict(head="cosine", batch=128, factors=(0.01, 0.0001), mixup=0.0),
    "kps_ga": dict(head="cosine", batch=64, factors=(0.1, 0.01), mixup=0.0),
    "fbl": dict(head="linear", batch=64, factors=(0.01, 0.0001), mixup=0.0),
    "gcl": dict(head="cosine", batch=64, factors=(0.1, 0.01), mixup=1.0),
}
RELEASE_WD = 2e-4
RECIPE_EPOCHS = 200
# transforms.Normalize of the releases' CIFAR loaders.
RELEASE_MEAN, RELEASE_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def release_optimizer(net, method: str, weight_decay: float = RELEASE_WD):
    """SGD (lr 0.1, momentum 0.9) with ``weight_decay`` on every parameter, as the PyTorch
    releases build it; for CB focal (``prior``) the head bias is left out of weight decay,
    as Cui et al. keep their prior bias."""
    import torch

    if not RELEASE[method].get("prior"):
        groups = [{"params": list(net.parameters())}]
    else:
        rest = [p for n, p in net.named_parameters() if n != "head.bias"]
        groups = [{"params": rest}, {"params": [net.head.bias], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=weight_decay)


def release_train_step(model, opt, x, y, lr, criterion, mixing=None, noises=(None, None)):
    """The releases' train iteration: set the lr, forward (mixup_data / mixup_criterion when
    ``mixing = (lam, perm)``: one forward of the mixed batch, the criterion against both
    label sets), backward, SGD step. Returns (loss, scores before the update)."""
    for group in opt.param_groups:
        group["lr"] = lr
    model.train()
    noise_a, noise_b = noises
    if mixing is not None:
        lam, perm = mixing
        out, feat = model(lam * x + (1 - lam) * x[perm])
        loss = lam * criterion(out, feat, y, noise_a) + (1 - lam) * criterion(
            out, feat, y[perm], noise_b
        )
    else:
        out, feat = model(x)
        loss = criterion(out, feat, y, noise_a)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), out.detach()


def crop_flip(x_u8, offsets, flip):
    """RandomCrop(32, padding=4) + RandomHorizontalFlip of a uint8 NCHW batch, vectorised:
    image k is cut at rows ``offsets[k, 0]:+H`` and columns ``offsets[k, 1]:+W`` of its
    zero-padded copy, then mirrored where ``flip[k]``."""
    import torch
    from torch.nn import functional as F

    b, c, h, w = x_u8.shape
    padded = F.pad(x_u8, (4, 4, 4, 4))
    dev = x_u8.device
    rows = (offsets[:, 0, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)


def train_release(method, data, *, epochs=RECIPE_EPOCHS, seed=0, device="cpu", eval_every=0,
                  log=print, checkpoint=""):  # fmt: skip
    """Trains ``method``'s released recipe (stage 1) in PyTorch on ``data`` (lt_jax's
    ``datasets.Dataset``: its long-tailed training images, the full test set) and returns
    the results as a dict: final-epoch top-1 and per-class accuracy, the best evaluated
    epoch, the test top-1 of every evaluated epoch.

    Independent of lt_jax's training code: the release's model and initialisation, its lr
    rule and criterion per epoch, a shuffled epoch with the last partial batch (DataLoader,
    drop_last=False), its own draws (``torch.manual_seed(seed)``; NumPy's legacy RNG seeded
    with ``seed`` for mixup's lambda, as the GCL release draws it). ``epochs`` other than 200
    compress the recipe: epoch e runs the release's epoch ``e * 200 // epochs`` (warm-up,
    decays, DRW / GA switches and the FBL curriculum all follow). ``eval_every`` > 0
    evaluates the test set every that many epochs (1: the releases' best-epoch number).

    ``checkpoint``: a file written (atomically) after every epoch with the model, the
    optimiser, every random state, the evaluations and the wall time so far; when it exists,
    training resumes from it and goes on exactly as the uninterrupted run would (a stopped
    run loses at most the epoch it was in). A checkpoint of another method, length or seed
    is refused.
    """
    import torch

    r = RELEASE[method]
    torch.manual_seed(seed)
    np_rng = np.random.RandomState(seed)
    gen = torch.Generator().manual_seed(seed)
    num_classes = data.num_classes
    counts = np.bincount(data.train_labels, minlength=num_classes)
    net = release_resnet32(num_classes, r["head"]).to(device)
    if r.get("prior"):  # Cui et al.: b = -log(C - 1)
        with torch.no_grad():
            net.head.bias.fill_(-float(np.log(num_classes - 1)))
    opt = release_optimizer(net, method)
    mean = torch.tensor(RELEASE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(RELEASE_STD, device=device).view(1, 3, 1, 1)
    train_x = torch.from_numpy(np.ascontiguousarray(data.train_images)).permute(0, 3, 1, 2)
    train_x = train_x.contiguous().to(device)
    train_y = torch.from_numpy(data.train_labels.astype(np.int64)).to(device)
    test_x = torch.from_numpy(np.ascontiguousarray(data.test_images)).permute(0, 3, 1, 2)
    test_x = test_x.contiguous().to(device)
    test_y = np.asarray(data.test_labels)
    n, batch = len(train_y), r["batch"]

    def evaluate():
        net.eval()
        with torch.no_grad():
            preds = [
                net((test_x[i : i + 1000].float() / 255 - mean) / std)[0].argmax(1).cpu()
                for i in range(0, len(test_y), 1000)
            ]
        pred = torch.cat(preds).numpy()
        per_class = [float(np.mean(pred[test_y == c] == c)) for c in range(num_classes)]
        return float(np.mean(pred == test_y)), per_class

    evals, start, first, before = [], time.perf_counter(), 0, 0.0
    what = dict(method=method, epochs=epochs, seed=seed, num_train=n)
    if checkpoint and os.path.exists(checkpoint):
        state = _load_checkpoint(checkpoint, what)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        np_rng.set_state(state["np_rng"])
        evals, first, before = state["evals"], state["epoch"], state["wall_time_s"]
        log(f"resumed from {checkpoint} after epoch {first} ({before:.0f} s before)")
    for epoch in range(first, epochs):
        recipe_epoch = epoch * RECIPE_EPOCHS // epochs
        lr = release_lr(recipe_epoch, factors=r["factors"])
        criterion = release_loss(method, counts, epoch=recipe_epoch, device=device)
        order = torch.randperm(n, generator=gen)
        total, steps = torch.zeros((), device=device), 0
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            offsets = torch.randint(0, 9, (len(idx), 2), generator=gen).to(device)
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            idx = idx.to(device)
            x = (crop_flip(train_x[idx], offsets, flip).float() / 255 - mean) / std
            mixing, noises = None, (None, None)
            if r["mixup"] > 0:
                lam = float(np_rng.beta(r["mixup"], r["mixup"]))
                mixing = lam, torch.randperm(len(idx), generator=gen).to(device)
            if method == "gcl":  # N(0, 1/3) clipped to [-1, 1], fresh per criterion call
                shape = (len(idx), num_classes)
                noises = tuple(
                    (torch.randn(shape, generator=gen) / 3).clamp(-1, 1).to(device)
                    for _ in range(2)
                )
            loss, _ = release_train_step(net, opt, x, train_y[idx], lr, criterion, mixing, noises)
            total, steps = total + loss, steps + 1
        mean_loss = float(total.item()) / steps
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"{method}: loss is {mean_loss} in epoch {epoch + 1}")
        line = f"epoch {epoch + 1}/{epochs}: lr {lr:.5f} loss {mean_loss:.4f}"
        last = epoch + 1 == epochs
        if last or (eval_every and (epoch + 1) % eval_every == 0):
            top1, per_class = evaluate()
            evals.append(dict(epoch=epoch + 1, top1=top1, per_class_accuracy=per_class))
            line += f" test top-1 {100 * top1:.2f}"
        log(f"{line} ({before + time.perf_counter() - start:.0f} s)")
        if checkpoint:
            _save_checkpoint(checkpoint, dict(
                what, epoch=epoch + 1, net=net.state_dict(), opt=opt.state_dict(),
                gen=gen.get_state(), np_rng=np_rng.get_state(), evals=evals,
                wall_time_s=before + time.perf_counter() - start,
            ))  # fmt: skip
    best = max(evals, key=lambda e: e["top1"])
    where = str(torch.device(device))
    if where.startswith("cuda"):
        where += f" ({torch.cuda.get_device_name(device)})"
    return dict(
        method=method,
        recipe=dict(r, wd=RELEASE_WD, recipe_epochs=RECIPE_EPOCHS),
        epochs=epochs,
        seed=seed,
        final=evals[-1],
        best_epoch=best,
        evaluations=[(e["epoch"], e["top1"]) for e in evals],
        train_class_counts=counts.tolist(),
        wall_time_s=before + time.perf_counter() - start,
        device=where,
        torch=torch.__version__,
    )


def _save_checkpoint(path, state):
    import torch

    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole


def _load_checkpoint(path, what):
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a checkpoint
        raise SystemExit(
            f"{path}: not a readable checkpoint ({e}); delete it to start again"
        ) from None
    theirs = {k: state.get(k) for k in what}
    if theirs != what:
        raise SystemExit(
            f"{path} is the checkpoint of {theirs}, not of {what}; use another --checkpoint"
        )
    return state


# CIFAR-10-LT IF 100, as published (best or last epoch, see docs/results.md).
PUBLISHED = {"fbl": 82.46, "ldam_drw": 77.03, "cb_focal": 74.57, "ce": 70.36}


def summarize(results) -> str:
    """A markdown table of reference runs (``train_release`` results), per method: mean ±
    sample std over seeds of the final and the best evaluated epoch's top-1, in %."""
    by = {}  # one row per method and length
    for r in results:
        by.setdefault((r["method"], r["epochs"]), []).append(r)
    lines = [
        "| PyTorch reference | epochs | seeds | top-1 final | top-1 best epoch | published "
        "| wall time / run | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, epochs), runs in sorted(by.items()):
        cells = []
        for part in ("final", "best_epoch"):
            v = [100 * r[part]["top1"] for r in runs]
            spread = f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else ""
            cells.append(f"{np.mean(v):.2f}{spread}")
        wall = np.mean([r["wall_time_s"] for r in runs])
        lines.append(
            f"| {method} | {epochs} | {','.join(str(r['seed']) for r in runs)} | "
            f"{cells[0]} | {cells[1]} | {PUBLISHED.get(method, '')} | {wall:.0f} s | "
            f"{runs[0]['device']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ce", choices=sorted(RELEASE))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--eval-every", type=int, default=0, help="0: the final epoch only")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument(
        "--checkpoint", default="", help="save every epoch here; resume from it if it exists"
    )
    parser.add_argument(
        "--summarize", nargs="+", metavar="JSON", help="only print a table of earlier --out files"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize([json.load(open(path)) for path in args.summarize]))
        return None

    import torch

    sys.path.insert(0, ROOT)  # run as a script from anywhere
    from lt_jax import sweep
    from lt_jax.data import datasets

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    # lt_jax's loader for the data only: the release split of the method (KPS: seed 666).
    config = sweep.load_config(
        os.path.join(ROOT, "configs", "cifar_lt.py"),
        f"method={args.method},seed={args.seed},data_dir={args.data_dir}",
    )
    data, _ = datasets.load_dataset(config.dataset)
    result = train_release(
        args.method, data, epochs=args.epochs, seed=args.seed, device=args.device,
        eval_every=args.eval_every, log=lambda line: print(line, flush=True),
        checkpoint=args.checkpoint,
    )  # fmt: skip
    result["data_dir"] = args.data_dir
    print(json.dumps({k: result[k] for k in ("method", "epochs", "seed", "wall_time_s")}
                     | {"final_top1": result["final"]["top1"],
                        "best_top1": result["best_epoch"]["top1"]}))  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
