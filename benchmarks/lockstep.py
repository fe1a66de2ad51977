"""Lockstep parity: lt_jax's train step against the releases' recipe written in PyTorch.

Usage: python benchmarks/lockstep.py [--methods ce,cb_focal,ldam_drw,kps_ga,fbl,gcl] [--steps 6]
           [--data-dir ../shared/data/cifar-10-batches-py] [--out results/lockstep]
       (needs PyTorch: pip install -e '.[bench]')

For each method and each phase of its 200-epoch CIFAR-10-LT (IF 100) recipe (warm-up, and the
epoch where the release switches DRW, GA, the FBL curriculum or the learning rate), both sides
start from **the same weights** (lt_jax's initialisation copied into the PyTorch ResNet-32) at
the phase's first step and see **the same batches and random draws**: lt_jax's epoch order and
batch sizes (the last partial batch kept, as the releases' DataLoader), its crop offsets and
flips (``augment.crop_flip_draws``), mixup lambda and partner permutation
(``augment.mixup_draws``) and GCL noise (``losses.gcl.gcl_noise``), applied on the PyTorch side
by its own code. The PyTorch side is ``benchmarks/torch_reference.py``: the releases' model,
kaiming init, ``torch.optim.SGD(momentum, weight_decay)`` (``release_optimizer``: CB focal's
head bias without weight decay), ``adjust_learning_rate`` and criteria, written from the
release code, not from lt_jax.

Three sides run every step: lt_jax, the release in float32 (as it runs) and the release in
float64 (the reference). lt_jax and the release both compute in float32, so the float32
release's distance from the float64 one is the size of float32 rounding (its largest so far
in the phase); lt_jax "parts" from the release when its own distance exceeds ``SLACK`` times
that (and a small floor), or when the learning rates differ (``--rejudge`` re-applies this to
a stored ``lockstep.json``). Per step: the learning rate, the loss, the logits before the
update, the parameters and the BatchNorm statistics after it (max |a - ref| / max |ref| over
every tensor). Two modes per phase:
  free   every side trains on its own from the shared start (rounding differences grow);
  synced before every step both PyTorch copies (weights, momentum buffers, BatchNorm
         statistics) are reset to lt_jax's state, so each row is one step's difference alone.
The report names the first step and quantity. Writes ``lockstep.json`` and ``lockstep.md``
to ``--out``.
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

# The phases checked: method -> (0-based first epochs, what changes there in the release).
PHASES = {
    "ce": {0: "warm-up (lr 0.02)", 160: "lr x0.01 from epoch 160 (release: epoch + 1 > 160)"},
    "cb_focal": {
        0: "sigmoid focal, CB weights, warm-up",
        160: "lr x0.01 (epoch + 1 > 160)",
    },
    "ldam_drw": {0: "LDAM, warm-up", 160: "DRW weights on (epoch // 160), lr x0.01"},
    "kps_ga": {0: "KPS, warm-up", 120: "released GA on (epoch >= 120)"},
    "fbl": {0: "curriculum t = 0, warm-up", 150: "t = (150 / 190)^2, lr 0.1"},
    "gcl": {0: "noise + mixup, warm-up", 180: "lr x0.01 (epoch + 1 > 180)"},
}


def _setup(method, data_dir, seed, kernels, batch_size=0):
    """lt_jax's stage-1 pieces for ``configs/cifar_lt.py:method=...`` (the 200-epoch recipe;
    ``batch_size`` > 0 replaces the recipe's, for quick checks)."""
    import jax
    import jax.numpy as jnp

    from lt_jax import config_lib, methods, optim, steps, sweep
    from lt_jax.data import augment, datasets, pipeline

    arg = f"method={method},seed={seed},data_dir={data_dir},stage2=none"
    config = sweep.load_config(os.path.join(ROOT, "configs", "cifar_lt.py"), arg)
    if kernels:
        config.kernels = kernels
    if batch_size:
        config.batch_size = batch_size
    if method == "kps_ga":
        config.loss.margin = "mirror"  # the release's margins (closed form: within 1.2e-4)
    config = config_lib.resolve(config)
    data, _ = datasets.load_dataset(config.dataset)
    counts = data.class_counts
    sizes = pipeline.epoch_sizes(len(data.train_labels), config.batch_size, drop_last=False)
    m = methods.get_method(config.method, config.loss, counts, len(sizes))
    tx, lr_fn = optim.create_optimizer(
        config, len(sizes), ga_start_step=m.ga_start_step, num_classes=data.num_classes
    )
    state, graphdef, head_graphdef, tx = steps.init_state(
        config, data.num_classes, m.head, tx, input_shape=data.train_images.shape[1:]
    )
    mean, std = augment.CIFAR_MEAN, augment.CIFAR_STD
    prep = steps.preprocess(config, config.dataset.augment, mean, std)
    step = steps.jit_step(
        steps.make_train_step(graphdef, head_graphdef, m, tx, lr_fn, prep),
        steps.kernels(config),
    )
    mix = prep.mix

    @jax.jit
    def logits_before(params, batch_stats, batch, key, step_no):
        from flax import nnx

        x = steps.prepare_batch(batch, key, step_no, prep).images
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        return model(x, train=True)[0]

    images, labels = jnp.asarray(data.train_images), jnp.asarray(data.train_labels)
    key = jax.random.fold_in(jax.random.key(config.seed), 1)  # run_stage's stage-1 key
    return dict(
        config=config,
        data=data,
        sizes=sizes,
        method=m,
        state=state,
        step=step,
        lr_fn=lr_fn,
        logits_before=logits_before,
        images=images,
        labels=labels,
        key=key,
        mix=mix,
        head=m.head,
    )


# --- weights across frameworks ------------------------------------------------------------------


def _named_leaves(tree):
    """{torch-style name: array} of an lt_jax params / batch_stats / momentum tree."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for entry in path:
            k = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", None)))
            if k != "value":
                parts.append(str(k))
        out[".".join(parts)] = np.asarray(leaf)
    return out


_TORCH_NAME = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _to_torch(name, value, head):
    """lt_jax (name, array) -> (torch name, array in torch layout)."""
    *mod, leaf = name.split(".")
    if leaf == "kernel":
        if value.ndim == 4:  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        elif head == "linear" or mod[0] != "head":  # Linear stores [out, in]
            value = value.T
        return ".".join([*mod, "weight"]), value  # NormedLinear keeps [in, out]
    return ".".join([*mod, _TORCH_NAME[leaf]]), value


def _momentum(opt_state):
    import optax

    return optax.tree_utils.tree_get(opt_state, "trace")


def load_into_torch(model, opt, state, head):
    """Copies lt_jax's params, BatchNorm statistics and (if ``opt``) momentum into PyTorch."""
    import torch

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for tree in (state["params"], state["batch_stats"]):
            for name, value in _named_leaves(tree).items():
                tname, v = _to_torch(name, value, head)
                tensors[tname].copy_(torch.from_numpy(np.array(v)))
    if opt is not None:
        params = dict(model.named_parameters())
        for name, value in _named_leaves(_momentum(state["opt_state"])).items():
            tname, v = _to_torch(name, value, head)
            p = params[tname]
            opt.state[p]["momentum_buffer"] = torch.from_numpy(np.array(v)).to(p.dtype)


def _torch_arrays(model):
    """{name: float64 array} of a torch model's parameters and buffers."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    return {k: v.detach().double().numpy() for k, v in tensors.items() if v.is_floating_point()}


def _jax_arrays(tree, head):
    """lt_jax's params or batch_stats as {torch name: float64 array in torch layout}."""
    out = {}
    for name, value in _named_leaves(tree).items():
        tname, v = _to_torch(name, value, head)
        out[tname] = v.astype(np.float64)
    return out


def _rel(a: dict, ref: dict):
    """(max over tensors of max|a - ref| / max|ref|, that tensor) over ``a``'s tensors."""
    worst, where = 0.0, ""
    for k, v in a.items():
        r = ref[k]
        e = float(np.max(np.abs(v - r)) / (np.max(np.abs(r)) + 1e-30))
        if e > worst:
            worst, where = e, k
    return worst, where


# --- the PyTorch step from lt_jax's draws ---------------------------------------------------------


def _torch_crops(images_u8, idx, draws):
    """The release's RandomCrop(32, padding=4) + RandomHorizontalFlip of the images ``idx``
    at lt_jax's draws (``torch_reference.crop_flip``): uint8 [B, 3, H, W]."""
    import torch

    from benchmarks.torch_reference import crop_flip

    dy, dx, flip = (np.asarray(d) for d in draws)
    x = torch.from_numpy(np.ascontiguousarray(images_u8[idx])).permute(0, 3, 1, 2)
    offsets = torch.from_numpy(np.stack([dy, dx], axis=1).astype(np.int64))
    return crop_flip(x, offsets, torch.from_numpy(flip.astype(bool)))


def _torch_normalize(crops_u8, dtype):
    """The release's ToTensor + Normalize (``torch_reference.RELEASE_MEAN`` / ``RELEASE_STD``)
    at ``dtype``. Each side normalises the uint8 crops at its own precision: the float64
    reference from float64 arithmetic, so the float32 release carries its own input rounding,
    as lt_jax does (fed the float32 release's input, the reference would share its rounding
    and the comparison would favour it)."""
    import torch

    from benchmarks.torch_reference import RELEASE_MEAN, RELEASE_STD

    m = torch.tensor(RELEASE_MEAN, dtype=dtype).view(1, 3, 1, 1)
    s = torch.tensor(RELEASE_STD, dtype=dtype).view(1, 3, 1, 1)
    return (crops_u8.to(dtype) / 255.0 - m) / s


def _noise(a):
    import torch

    return torch.from_numpy(np.array(a))


class _TorchSide:
    """One copy of the release's model and optimizer in PyTorch (float32 or float64)."""

    def __init__(self, method, num_classes, head, wd, dtype):
        from benchmarks.torch_reference import release_optimizer, release_resnet32

        self.dtype, self.head = dtype, head
        self.model = release_resnet32(num_classes, head).to(dtype)
        self.opt = release_optimizer(self.model, method, weight_decay=wd)

    def load(self, state, momentum: bool):
        load_into_torch(self.model, self.opt if momentum else None, state, self.head)

    def step(self, crops_u8, y, lr, criterion, mixing, noises):
        """The release's train iteration on uint8 crops; returns (loss, scores before the
        update)."""
        from benchmarks.torch_reference import release_train_step

        x = _torch_normalize(crops_u8, self.dtype)
        noises = tuple(n.to(self.dtype) for n in noises)
        loss, out = release_train_step(self.model, self.opt, x, y, lr, criterion, mixing, noises)
        return float(loss.item()), out.double().numpy()


def run_phase(method, start_epoch, steps, *, setup, sync):
    """``steps`` steps of lt_jax, the release in float32 and the release in float64 (the
    reference), from the first step of ``start_epoch``; one row per step."""
    import jax
    import optax
    import torch

    from benchmarks.torch_reference import RELEASE, release_loss, release_lr
    from lt_jax import steps as steps_lib
    from lt_jax.data import augment, pipeline
    from lt_jax.data import samplers as smp
    from lt_jax.losses import gcl as gcl_lib

    s = setup
    config, data, sizes, head = s["config"], s["data"], s["sizes"], s["head"]
    spe = len(sizes)
    # Start at the phase: the step counter and the optimizer's own (the schedule reads it).
    first = jax.numpy.asarray(start_epoch * spe, jax.numpy.int32)
    opt_state = optax.tree_utils.tree_set(s["state"]["opt_state"], count=first)
    state = dict(s["state"], step=first, opt_state=opt_state)
    torch.manual_seed(0)
    sides = {
        name: _TorchSide(method, data.num_classes, head, config.wd, dtype)
        for name, dtype in (("release32", torch.float32), ("reference64", torch.float64))
    }
    for side in sides.values():
        side.load(state, momentum=False)  # the same start; no momentum yet
    labels_np = data.train_labels.astype(np.int64)
    ends = np.cumsum(sizes)
    _, alpha = s["mix"]
    rows = []
    for k in range(steps):
        step_no = start_epoch * spe + k
        epoch, b = divmod(step_no, spe)
        order = smp.epoch_indices(
            config.sampler, data.train_labels, seed=config.seed, epoch=epoch,
            num_classes=data.num_classes, total_epochs=config.epochs,
        )  # fmt: skip
        idx = order[ends[b] - sizes[b] : ends[b]]
        if sync and k:
            for side in sides.values():
                side.load(state, momentum=True)
        # lt_jax: logits before the update, then its real train step.
        batch = pipeline.GatherBatch(s["images"], s["labels"], idx)
        logits = {
            "lt_jax": np.asarray(
                s["logits_before"](state["params"], state["batch_stats"], batch, s["key"], step_no),
                np.float64,
            )
        }
        state, metrics = s["step"](state, batch, s["key"])
        # PyTorch: the same batch from lt_jax's draws, the release's iteration.
        k_aug, k_mix, k_loss, k_loss_b = steps_lib.step_keys(s["key"], step_no)
        draws = augment.crop_flip_draws(k_aug, len(idx), pad=4)
        crops = _torch_crops(data.train_images, idx, draws)
        y = torch.from_numpy(labels_np[idx])
        mixing = None
        if alpha > 0:
            lam, perm = augment.mixup_draws(k_mix, len(idx), alpha=alpha)
            mixing = float(lam), torch.from_numpy(np.asarray(perm).astype(np.int64))
        shape = (len(idx), data.num_classes)
        noises = [_noise(gcl_lib.gcl_noise(k, shape)) for k in (k_loss, k_loss_b)]
        lr = release_lr(epoch, factors=RELEASE[method]["factors"])
        criterion = release_loss(method, data.class_counts, epoch=epoch, epochs=config.epochs)
        losses = {"lt_jax": float(metrics["loss"])}
        for name, side in sides.items():
            losses[name], logits[name] = side.step(crops, y, lr, criterion, mixing, noises)
        ref = sides["reference64"].model
        ref_arrays = _torch_arrays(ref)
        arrays32 = _torch_arrays(sides["release32"].model)  # parameters and buffers, once
        params = {"lt_jax": _jax_arrays(state["params"], head)}
        params["release32"] = {k: arrays32[k] for k in params["lt_jax"]}
        stats_j = _jax_arrays(state["batch_stats"], head)
        stats_32 = {k: arrays32[k] for k in stats_j}
        row = dict(step=step_no, epoch=epoch, batch=len(idx), lr_lt_jax=float(metrics["lr"]))
        row["lr_release"] = lr
        for who in ("lt_jax", "release32"):
            row[f"loss_{who}"] = losses[who]
            row[f"loss_err_{who}"] = abs(losses[who] - losses["reference64"]) / abs(
                losses["reference64"]
            )
            lg, lr64 = logits[who], logits["reference64"]
            row[f"logits_err_{who}"] = float(np.max(np.abs(lg - lr64)) / np.max(np.abs(lr64)))
            row[f"params_err_{who}"], row[f"params_worst_{who}"] = _rel(params[who], ref_arrays)
            st = stats_j if who == "lt_jax" else stats_32
            row[f"bn_stats_err_{who}"], row[f"bn_stats_worst_{who}"] = _rel(st, ref_arrays)
        row["loss_reference64"] = losses["reference64"]
        rows.append(row)
    return rows


# A quantity parts when lt_jax's error (against the float64 release) exceeds SLACK times the
# float32 release's own error, and the floor: both run float32, so the release's distance
# from its float64 twin is the size of float32 rounding for that step. The parameter floor is
# higher: the gradients of the first layers and of near-zero BatchNorm biases are
# ill-conditioned at initialisation, and both float32 sides miss the float64 update there by
# up to about 1e-2 of the tensor (measured: 1e-3 to 2e-2 per step, either side the larger).
# The release's error is taken as its largest so far in the phase: the loss is one number, and
# its float32 error can cancel to almost nothing at one step by chance (free-running CE,
# 2026-12-03: 4.3e-4, 1.8e-5, 1.2e-3 at steps 2-4) while the rounding it stands for only grows
# (free) or stays the same size (synced: each step from lt_jax's state).
SLACK = 10.0
FLOOR = {"loss": 1e-6, "logits": 1e-5, "params": 5e-2, "bn_stats": 1e-5}
QUANTITIES = ("loss", "logits", "params", "bn_stats")
CRITERION = dict(slack=SLACK, floor=FLOOR, rounding="largest so far in the phase")  # recorded


def parted(rows):
    """The first (step, quantity) where lt_jax parts from the release beyond float32 rounding
    (see ``SLACK`` / ``FLOOR``), or None."""
    rounding = dict.fromkeys(QUANTITIES, 0.0)
    for r in rows:
        if abs(r["lr_lt_jax"] - r["lr_release"]) > 1e-6 * r["lr_release"]:
            return r["step"], "learning rate"
        for q in QUANTITIES:
            rounding[q] = max(rounding[q], r[f"{q}_err_release32"])
            if r[f"{q}_err_lt_jax"] > max(SLACK * rounding[q], FLOOR[q]):
                where = r.get(f"{q}_worst_lt_jax", "")
                return r["step"], f"{q} ({where})" if where else q
    return None


def report_markdown(results) -> str:
    """One line per (method, phase, mode): the first part, and the largest error of lt_jax
    and of the float32 release against the float64 release."""
    lines = [
        "| method | from epoch (phase) | mode | steps | batch sizes | first part | "
        "loss err lt_jax / release32 | logits err | params err | BN stats err |",
        "|---|---|---|---:|---|---|---|---|---|---|",
    ]
    for r in results:
        rows, p = r["rows"], r["parted"]
        sizes = sorted({row["batch"] for row in rows})

        def pair(q, rows=rows):
            a = max(x[f"{q}_err_lt_jax"] for x in rows)
            return f"{a:.1e} / {max(x[f'{q}_err_release32'] for x in rows):.1e}"

        lines.append(
            f"| {r['method']} | {r['start_epoch']} ({r['phase']}) | {r['mode']} | {len(rows)} | "
            f"{', '.join(map(str, sizes))} | {'none' if p is None else f'step {p[0]}: {p[1]}'} | "
            f"{pair('loss')} | {pair('logits')} | {pair('params')} | {pair('bn_stats')} |"
        )
    return "\n".join(lines)


def _write(out, meta, results):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "lockstep.json"), "w") as f:
        json.dump(dict(meta, results=results), f, indent=1)
    with open(os.path.join(out, "lockstep.md"), "w") as f:
        f.write(report_markdown(results) + "\n")


def rejudge(path, out, argv):
    """The stored rows of ``path`` (a lockstep.json) judged by today's ``parted``, labelled
    with today's ``PHASES``."""
    with open(path) as f:
        meta = json.load(f)
    results = meta.pop("results")
    for r in results:
        r["parted"] = parted(r["rows"])
        r["phase"] = PHASES.get(r["method"], {}).get(r["start_epoch"], r["phase"])
    meta["criterion"] = CRITERION
    meta["rejudged"] = "python benchmarks/lockstep.py " + " ".join(argv)
    print(report_markdown(results))
    _write(out, meta, results)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(PHASES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--modes", default="synced", help="free and/or synced, every method")
    parser.add_argument(
        "--free-methods", default="ce", help="methods also run free (on top of --modes)"
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--kernels", default="", help="lt_jax config.kernels (default: auto)")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the recipe's")
    parser.add_argument(
        "--phases", default="", help="start epochs to check, e.g. 0,160 (default: each method's)"
    )
    parser.add_argument("--out", default="", help="folder for lockstep.json and lockstep.md")
    parser.add_argument(
        "--rejudge",
        default="",
        help="a lockstep.json: recompute each phase's first part with this file's criterion "
        "from its stored rows (nothing is run) and write lockstep.json / lockstep.md to --out "
        "(default: over the given file)",
    )
    args = parser.parse_args(argv)
    if args.rejudge:
        out = args.out or os.path.dirname(args.rejudge) or "."
        return rejudge(args.rejudge, out, argv if argv is not None else sys.argv[1:])

    import torch

    sys.path.insert(0, ROOT)  # benchmarks.torch_reference when run as a script
    torch.set_num_threads(args.threads)
    results = []
    for method in args.methods.split(","):
        if method not in PHASES:
            parser.error(f"no lockstep recipe for {method!r}; valid: {', '.join(PHASES)}")
        setup = _setup(method, args.data_dir, args.seed, args.kernels, args.batch_size)
        phases = PHASES[method]
        starts = [int(e) for e in args.phases.split(",")] if args.phases else list(phases)
        for start in starts:
            modes = args.modes.split(",")
            if method in args.free_methods.split(",") and "free" not in modes:
                modes = ["free", *modes]
            for mode in modes:
                t0 = time.perf_counter()
                rows = run_phase(method, start, args.steps, setup=setup, sync=mode == "synced")
                r = dict(
                    method=method,
                    start_epoch=start,
                    phase=phases.get(start, ""),
                    mode=mode,
                    rows=rows,
                    parted=parted(rows),
                    seconds=time.perf_counter() - t0,
                )
                results.append(r)
                print(report_markdown([r]).splitlines()[-1], flush=True)
    import jax

    meta = dict(
        command="python benchmarks/lockstep.py " + " ".join(argv or sys.argv[1:]),
        data_dir=args.data_dir,
        jax=jax.__version__,
        torch=torch.__version__,
        backend=jax.default_backend(),
        criterion=CRITERION,
    )
    print(report_markdown(results))
    if args.out:
        _write(args.out, meta, results)
    return results


if __name__ == "__main__":
    main()
