"""Cross-check: the LDAM-DRW release's cross-entropy recipe in PyTorch, on lt_jax's data.

Usage: python benchmarks/torch_reference.py [--epochs 10] [--seed 0]
           [--data-dir ../shared/data/cifar-10-batches-py] [--threads N]
       (needs the [bench] extra: pip install -e '.[bench]')

Trains the release's ResNet-32 (:func:`release_resnet32`: option-A shortcuts, kaiming_normal_
init) with plain softmax cross-entropy on exactly the CIFAR-10-LT (IF 100) training images
that ``configs/cifar_lt.py`` selects (loaded through ``lt_jax.train``), with the release's
recipe scaled to ``--epochs`` the way lt_jax scales it: batch 128 with the last partial batch,
SGD 0.9, weight decay 2e-4 on all weights, lr 0.1 with linear warm-up, x0.01 and x0.0001
steps, pad-4 crop + flip, the same normalisation.

The module also holds the releases' recipe for ``benchmarks/lockstep.py``, which runs it step
by step beside lt_jax from the same weights and random draws.

Prints the final test top-1 and per-class accuracy; run
``python -m lt_jax.main --config configs/cifar_lt.py:method=ce,epochs=N,seed=S`` beside it to
compare the two pipelines on equal terms (the PyTorch side draws its own initialisation and
batch order, so compare across seeds).
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

    index = torch.zeros(target.shape[0], num_classes, dtype=torch.bool)
    return index.scatter_(1, target.view(-1, 1), True)


def release_class_weights(cls_num_list, beta: float = 0.9999):
    """The DRW / CB weights of the releases: (1 - beta) / (1 - beta^n), normalised to sum C."""
    effective_num = 1.0 - np.power(beta, cls_num_list)
    w = (1.0 - beta) / np.array(effective_num)
    return w / np.sum(w) * len(cls_num_list)


def release_loss(method: str, cls_num_list, *, epoch: int, epochs: int = 200):
    """The release's criterion for ``method`` at 0-based ``epoch``, as a function
    ``(scores, feature, target, noise) -> scalar`` (``noise``: GCL's N(0, 1/3) draw)."""
    import torch
    from torch.nn import functional as F

    n = torch.tensor(np.asarray(cls_num_list, np.float64), dtype=torch.float32)
    num_classes = len(cls_num_list)
    if method == "ce":
        return lambda z, f, y, noise: F.cross_entropy(z, y)
    if method == "ldam_drw":  # LDAMLoss(max_m=0.5, s=30), weight from epoch // 160
        m_list = 1.0 / torch.sqrt(torch.sqrt(n))
        m_list = m_list * (0.5 / torch.max(m_list))
        weights = [None, torch.tensor(release_class_weights(cls_num_list), dtype=torch.float32)]
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
    raise ValueError(f"no release criterion for {method!r}; valid: ce, ldam_drw, kps_ga, fbl, gcl")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    import torch
    from torch.nn import functional as F

    sys.path.insert(0, ROOT)  # run as a script from anywhere
    from lt_jax import sweep
    from lt_jax.data import augment, datasets

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = sweep.load_config(
        os.path.join(ROOT, "configs", "cifar_lt.py"),
        f"method=ce,epochs={args.epochs},seed={args.seed},data_dir={args.data_dir}",
    )
    data, _ = datasets.load_dataset(config.dataset)
    mean = torch.tensor(augment.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(augment.CIFAR_STD).view(1, 3, 1, 1)

    def to_tensor(images):  # uint8 NHWC -> normalised float NCHW
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std

    train_x = torch.from_numpy(np.ascontiguousarray(data.train_images)).permute(0, 3, 1, 2)
    train_y = torch.from_numpy(data.train_labels.astype(np.int64))
    test_x, test_y = to_tensor(data.test_images), data.test_labels

    net = release_resnet32(data.num_classes)  # the release's model and _weights_init

    def model(x):
        return net(x)[0]

    model.train, model.eval = net.train, net.eval
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.wd)
    batch, n = config.batch_size, len(train_y)
    gen = torch.Generator().manual_seed(args.seed)

    def lr_at(epoch):  # 0-indexed epoch; the same rule as lt_jax.optim.warmup_step_decay
        lr = config.lr
        for boundary, factor in zip(config.lr_boundaries, config.lr_factors, strict=True):
            if epoch >= boundary:
                lr = config.lr * factor
        if epoch < config.warmup_epochs:
            lr = config.lr * (epoch + 1) / config.warmup_epochs
        return lr

    start = time.perf_counter()
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch)
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):  # the last partial batch too (DataLoader, drop_last=False)
            idx = order[i : i + batch]
            padded = F.pad(train_x[idx], (4, 4, 4, 4))
            offsets = torch.randint(0, 9, (len(idx), 2), generator=gen).tolist()
            x = torch.stack(
                [padded[k, :, a : a + 32, b : b + 32] for k, (a, b) in enumerate(offsets)]
            )
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = ((x.float() / 255) - mean) / std
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: lr {lr_at(epoch):.5f} loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [model(test_x[i : i + 1000]).argmax(1) for i in range(0, len(test_y), 1000)]
        )
    pred = pred.numpy()
    per_class = [float(np.mean(pred[test_y == c] == c)) for c in range(data.num_classes)]
    top1 = float(np.mean(pred == test_y))
    result = dict(
        top1=top1,
        per_class_accuracy=per_class,
        epochs=config.epochs,
        seed=args.seed,
        wall_time_s=time.perf_counter() - start,
        torch=torch.__version__,
    )
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
