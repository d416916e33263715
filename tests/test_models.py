"""The model registry and the federated vector layout (fedtune.models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedtune.job import ModelConfig
from fedtune.models import (
    MODEL_IDS,
    ModelError,
    build_model,
    get_flat,
    initial_parameters,
    input_shape,
    num_trainable,
    set_flat,
    trainable_names,
)

MLP = ModelConfig(id="tabular-mlp", input_dim=7, num_classes=2, hidden=16)
DIGITS_CNN = ModelConfig(id="image-cnn", num_classes=10, image_shape=(1, 8, 8))
MNIST_CNN = ModelConfig(id="image-cnn", num_classes=10, image_shape=(1, 28, 28))
DIGITS_LINEAR = ModelConfig(id="image-linear", num_classes=10, image_shape=(1, 8, 8))


def test_registry_lists_every_model():
    assert MODEL_IDS == ("tabular-mlp", "image-cnn", "image-linear", "minilm-lora",
                         "smollm2-lora")


def test_mlp_has_the_documented_layers():
    model = build_model(MLP)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 16), (16, 16), (16, 2)]


def test_mlp_forward_gives_one_logit_per_class():
    out = build_model(MLP)(torch.zeros(5, 7))
    assert out.shape == (5, 2)


@pytest.mark.parametrize("spec", [DIGITS_CNN, MNIST_CNN], ids=["8x8", "28x28"])
def test_cnn_forward_gives_one_logit_per_class(spec):
    out = build_model(spec)(torch.rand(3, *spec.image_shape))
    assert out.shape == (3, 10)


def test_cnn_for_8x8_digits_is_small():
    assert num_trainable(build_model(DIGITS_CNN)) < 50_000


def test_cnn_has_the_same_layout_for_8x8_and_28x28():
    assert num_trainable(build_model(DIGITS_CNN)) == num_trainable(build_model(MNIST_CNN))


def test_cnn_passes_opacus_strict_validation():
    assert ModuleValidator.validate(build_model(DIGITS_CNN), strict=True) == []


def test_cnn_accepts_several_channels():
    spec = ModelConfig(id="image-cnn", num_classes=3, image_shape=(3, 12, 12))
    assert build_model(spec)(torch.rand(2, 3, 12, 12)).shape == (2, 3)


def test_image_linear_is_softmax_regression_on_centred_pixels():
    model = build_model(DIGITS_LINEAR)
    assert num_trainable(model) == 64 * 10 + 10
    x = torch.rand(3, 1, 8, 8)
    linear = model[-1]
    expected = (2 * x - 1).reshape(3, 64) @ linear.weight.T + linear.bias
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_image_linear_accepts_images_smaller_than_the_cnn_needs():
    spec = ModelConfig(id="image-linear", num_classes=2, image_shape=(3, 2, 2))
    assert build_model(spec)(torch.rand(4, 3, 2, 2)).shape == (4, 2)


def test_image_linear_passes_opacus_strict_validation():
    assert ModuleValidator.validate(build_model(DIGITS_LINEAR), strict=True) == []


def test_same_seed_gives_identical_parameters():
    assert np.array_equal(initial_parameters(MLP, seed=7), initial_parameters(MLP, seed=7))


def test_different_seeds_give_different_parameters():
    assert not np.array_equal(initial_parameters(MLP, seed=1), initial_parameters(MLP, seed=2))


def test_build_model_leaves_global_torch_random_state_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_model(DIGITS_CNN, seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_flat_vector_is_float32_1d_of_trainable_length():
    model = build_model(DIGITS_CNN)
    vec = get_flat(model)
    assert vec.dtype == np.float32
    assert vec.shape == (sum(p.numel() for p in model.parameters()),)


def test_flat_vector_follows_named_parameters_order():
    model = build_model(MLP)
    vec = get_flat(model)
    first = dict(model.named_parameters())[trainable_names(model)[0]]
    assert np.array_equal(vec[: first.numel()], first.detach().numpy().reshape(-1))
    assert trainable_names(model) == [n for n, _ in model.named_parameters()]


def test_frozen_parameters_are_left_out_of_the_vector():
    model = build_model(MLP)
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in trainable_names(model)
    assert get_flat(model).size == num_trainable(build_model(MLP)) - 7 * 16


def test_set_flat_then_get_flat_round_trips():
    model = build_model(DIGITS_CNN)
    vec = np.random.default_rng(0).standard_normal(num_trainable(model)).astype(np.float32)
    set_flat(model, vec)
    assert np.array_equal(get_flat(model), vec)


def test_set_flat_does_not_alias_the_callers_buffer():
    model = build_model(MLP)
    vec = np.zeros(num_trainable(model), dtype=np.float32)
    set_flat(model, vec)
    vec[:] = 1.0
    assert not get_flat(model).any()


def test_set_flat_makes_two_models_compute_the_same_function():
    a, b = build_model(MLP, seed=1), build_model(MLP, seed=2)
    set_flat(b, get_flat(a))
    x = torch.randn(4, 7)
    assert torch.equal(a(x), b(x))


def test_set_flat_rejects_wrong_length():
    model = build_model(MLP)
    with pytest.raises(ModelError, match="length"):
        set_flat(model, np.zeros(num_trainable(model) - 1, dtype=np.float32))


def test_set_flat_rejects_float64():
    model = build_model(MLP)
    with pytest.raises(ModelError, match="float32"):
        set_flat(model, np.zeros(num_trainable(model), dtype=np.float64))


def test_set_flat_rejects_2d_vector():
    model = build_model(MLP)
    with pytest.raises(ModelError, match="1-D"):
        set_flat(model, np.zeros((1, num_trainable(model)), dtype=np.float32))


def test_rejected_vector_leaves_model_unchanged():
    model = build_model(MLP)
    before = get_flat(model)
    with pytest.raises(ModelError):
        set_flat(model, np.ones(3, dtype=np.float32))
    assert np.array_equal(get_flat(model), before)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ModelConfig(id="resnet"), "model.id"),
        (ModelConfig(id="tabular-mlp", input_dim=0), "model.input_dim"),
        (ModelConfig(id="tabular-mlp", input_dim=4, num_classes=1), "model.num_classes"),
        (ModelConfig(id="tabular-mlp", input_dim=4, hidden=0), "model.hidden"),
        (ModelConfig(id="image-cnn", image_shape=(8, 8)), "model.image_shape"),
        (ModelConfig(id="image-cnn", image_shape=(1, 2, 2)), "model.image_shape"),
        (ModelConfig(id="image-cnn", image_shape=(1, 8, 8), input_dim=10), "model.input_dim"),
        (ModelConfig(id="image-linear", image_shape=(64,)), "model.image_shape"),
    ],
    ids=[
        "unknown-id",
        "mlp-no-input",
        "one-class",
        "no-hidden",
        "2d-image",
        "tiny-image",
        "cnn-input-dim-mismatch",
        "linear-flat-image",
    ],
)
def test_invalid_spec_error_names_the_field(spec, field):
    with pytest.raises(ModelError, match=field):
        build_model(spec)


def test_input_shape_is_feature_count_or_image_shape():
    assert input_shape(MLP) == (7,)
    assert input_shape(MNIST_CNN) == (1, 28, 28)
