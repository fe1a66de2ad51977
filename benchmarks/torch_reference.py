"""Cross-check: the LDAM-DRW release's cross-entropy recipe in PyTorch, on lt_jax's data.

Usage: python benchmarks/torch_reference.py [--epochs 10] [--seed 0]
           [--data-dir ../shared/data/cifar10_jpeg] [--threads N]
       (needs the [bench] extra: pip install -e '.[bench]')

Trains the PyTorch ResNet-32 of ``benchmarks/throughput.py`` (option-A shortcuts, Kaiming
init as in the release) with plain softmax cross-entropy on exactly the CIFAR-10-LT (IF 100)
training images that ``configs/cifar_lt.py`` selects (loaded through ``lt_jax.train``), with
the release's recipe scaled to ``--epochs`` the way lt_jax scales it: batch 128, SGD 0.9,
weight decay 2e-4 on all weights, lr 0.1 with linear warm-up, x0.01 and x0.0001 steps, pad-4
crop + flip, the same normalisation. Prints the final test top-1 and per-class accuracy; run
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
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10_jpeg")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    import torch
    from torch import nn
    from torch.nn import functional as F

    sys.path.insert(0, ROOT)  # run as a script from anywhere
    from benchmarks.throughput import torch_resnet32
    from lt_jax import sweep, train
    from lt_jax.data import augment

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = sweep.load_config(
        os.path.join(ROOT, "configs", "cifar_lt.py"),
        f"method=ce,epochs={args.epochs},seed={args.seed},data_dir={args.data_dir}",
    )
    data, _ = train.load_dataset(config.dataset)
    mean = torch.tensor(augment.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(augment.CIFAR_STD).view(1, 3, 1, 1)

    def to_tensor(images):  # uint8 NHWC -> normalised float NCHW
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std

    train_x = torch.from_numpy(np.ascontiguousarray(data.train_images)).permute(0, 3, 1, 2)
    train_y = torch.from_numpy(data.train_labels.astype(np.int64))
    test_x, test_y = to_tensor(data.test_images), data.test_labels

    model = torch_resnet32(data.num_classes)
    for m in model.modules():  # the release's _weights_init
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.wd)
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
        for i in range(0, n - batch + 1, batch):  # full batches, as lt_jax's sampler
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
