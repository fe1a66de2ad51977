"""Images per second delivered by lt_jax's two input paths, on real CIFAR-10 JPEGs.

Usage: python benchmarks/input_pipeline.py [--root ../shared/data/cifar10_jpeg] [--batches 40]

1. On-device: CIFAR-10-LT (IF 100) held on the device as uint8; each batch is an index
   vector, gathered, cropped, flipped and normalised inside a jitted function, exactly
   the first half of the train step.
2. Streaming: the JPEG files decoded by Grain worker threads with random-resized-crop +
   flip on the host (the ImageNet-LT path), at 32 x 32 and at 224 x 224.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from lt_jax.data import augment, pipeline, samplers, sources, streaming

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10_jpeg")


def on_device(root, batch, batches):
    data, _ = sources.make_long_tailed(sources.load_image_folder(root), n_max=5000, imb_factor=100)
    mesh = pipeline.create_mesh()
    source = pipeline.InMemoryInput(data, mesh)

    @jax.jit
    def prepare(batch, key):
        x = augment.random_crop_flip(key, batch.take()[0], pad=4, flip=True)
        return augment.normalize(x, augment.CIFAR_MEAN, augment.CIFAR_STD)

    order = samplers.epoch_indices("instance", data.train_labels, seed=0, epoch=0)
    sizes = samplers.epoch_batches(len(order), batch, drop_last=True)
    it = source.train(order, epoch=0, start_batch=0, sizes=sizes, seed=0)
    jax.block_until_ready(prepare(next(it), jax.random.key(0)))
    start = time.perf_counter()
    out = None
    for b, arrays in zip(range(batches), it, strict=False):
        out = prepare(arrays, jax.random.key(b))
    jax.block_until_ready(out)
    return batches * batch / (time.perf_counter() - start)


def streamed(root, batch, batches, size, threads):
    files, labels, _ = streaming.folder_file_lists(root, "train")
    order = samplers.epoch_indices("instance", labels, seed=0, epoch=0)[: (batches + 2) * batch]
    it = streaming.train_batches(
        files, labels, order, batch_size=batch, epoch=0, seed=0, size=size, num_threads=threads
    )
    next(it)  # start-up
    start = time.perf_counter()
    n = sum(len(x) for x, _ in (next(it) for _ in range(batches)))
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"{os.cpu_count()} host cores, jax {jax.__version__}, {jax.device_count()} device(s)")
    print(
        f"on-device CIFAR-10-LT (gather+crop+flip+normalise): "
        f"{on_device(args.root, args.batch, args.batches):10.0f} images/s"
    )
    for size in (32, 224):
        rate = streamed(args.root, args.batch, args.batches, size, args.threads)
        print(f"streamed JPEG, Grain {args.threads} threads, RRC {size}: {rate:10.0f} images/s")


if __name__ == "__main__":
    main()
