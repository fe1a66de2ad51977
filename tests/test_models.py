"""Models: shapes, parameter counts against torchvision's, pretrained loading, frozen trunks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lt_jax import models


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@nnx.jit(static_argnames="train")
def forward(model, x, train):
    """One compiled forward pass (op-by-op dispatch of a ResNet takes a minute on 2 cores)."""
    return model(x, train=train)


@pytest.mark.parametrize(
    "name, expected",
    [
        # torchvision's counts (weights + biases, buffers excluded), 1000 classes.
        ("resnet50", 25_557_032),
        ("resnext50_32x4d", 25_028_904),
    ],
)
def test_imagenet_resnet_parameter_counts(name, expected):
    model = nnx.eval_shape(lambda: models.create_model(name, num_classes=1000, rngs=nnx.Rngs(0)))
    assert n_params(model) == expected


def test_resnet32_parameter_count_and_shapes():
    model = models.create_model("resnet32", num_classes=10, rngs=nnx.Rngs(0))
    # Counted by hand: convs 432 + 23,040 + 87,552 + 350,208, BN 2 x 1,136, head 640 + 10.
    assert n_params(model) == 464_154
    logits, feats = forward(model, jnp.zeros((2, 32, 32, 3)), train=True)
    assert logits.shape == (2, 10) and feats.shape == (2, 64)


def test_cosine_head_outputs_cosines():
    model = models.create_model("resnet32", num_classes=10, head="cosine", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    logits, feats = forward(model, x, train=False)
    w = model.head.kernel[...]
    expect = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=0, keepdims=True)
    )
    np.testing.assert_allclose(logits, expect, rtol=1e-5, atol=1e-6)
    assert np.abs(logits).max() <= 1 + 1e-6


def test_small_resnet_forward_and_frozen_trunk():
    model = models.ResNet((1, 1, 1, 1), num_classes=5, trainable_blocks=1, rngs=nnx.Rngs(0))
    logits, feats = forward(model, jnp.ones((2, 64, 64, 3)), train=True)
    assert logits.shape == (2, 5) and feats.shape == (2, 2048)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    labels = models.frozen_param_labels(model, params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
    assert all(
        v == "frozen"
        for k, v in flat.items()
        if "'stem'" in k or "[0]" in k.split("blocks")[-1][:4]
    )
    assert all(v == "train" for k, v in flat.items() if "'head'" in k or "blocks'][3]" in k)

    tx = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()}, labels)

    def loss(p):
        m = nnx.merge(graphdef, p, stats, copy=True)
        z, _ = m(jnp.ones((2, 64, 64, 3)), train=True)
        return jnp.mean(z**2) + sum(jnp.sum(x**2) for x in jax.tree.leaves(p)) * 1e-3

    grads = jax.jit(jax.grad(loss))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["stem"]["kernel"][...], params["stem"]["kernel"][...])
    np.testing.assert_array_equal(
        new["blocks"][0]["conv1"]["kernel"][...], params["blocks"][0]["conv1"]["kernel"][...]
    )
    assert not np.allclose(
        new["blocks"][3]["conv1"]["kernel"][...], params["blocks"][3]["conv1"]["kernel"][...]
    )


def test_load_torchvision_weights(tmp_path):
    model = models.ResNet((1, 1, 1, 1), num_classes=5, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    sd = {}
    for module, prefix in models.resnet._torch_names(model):
        if isinstance(module, nnx.Conv):
            kh, kw, cin, cout = module.kernel[...].shape
            sd[f"{prefix}.weight"] = rng.normal(size=(cout, cin, kh, kw)).astype(np.float32)
        else:
            c = module.scale[...].shape[0]
            for name in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.{name}"] = rng.uniform(0.5, 1.5, size=c).astype(np.float32)
    sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
    np.savez(tmp_path / "w.npz", **sd)
    loaded = models.load_torchvision_weights(model, str(tmp_path / "w.npz"))
    assert loaded == len(sd) - 1
    # torch [out, in, kh, kw] -> flax [kh, kw, in, out]
    np.testing.assert_array_equal(
        model.blocks[2].conv2.kernel[...], sd["layer3.0.conv2.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.blocks[1].downsample[1].var[...], sd["layer2.0.downsample.1.running_var"]
    )
    np.testing.assert_array_equal(model.stem_bn.scale[...], sd["bn1.weight"])

    del sd["layer4.0.bn3.bias"]
    np.savez(tmp_path / "bad.npz", **sd)
    with pytest.raises(ValueError, match="no tensor 'layer4.0.bn3.bias'"):
        models.load_torchvision_weights(model, str(tmp_path / "bad.npz"))
    (tmp_path / "corrupt.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read pretrained weights"):
        models.load_torchvision_weights(model, str(tmp_path / "corrupt.npz"))


def test_unknown_model_and_head():
    with pytest.raises(ValueError, match="unknown model 'vit'; valid: .*resnet32"):
        models.create_model("vit", num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown head 'mlp'; valid: cosine, linear"):
        models.create_model("resnet32", num_classes=2, head="mlp", rngs=nnx.Rngs(0))
