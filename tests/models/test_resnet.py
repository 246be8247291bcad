"""Tests of the ResNet encoders: parameter counts vs torchvision, shapes, stems."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from dualssl_tf.models import resnet


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_resnet18_cifar_parameter_count():
    # torchvision resnet18: 11,689,512 params; minus fc (512*1000 + 1000) = 11,176,512;
    # CIFAR stem replaces the 7x7x3x64 conv (9,408) by a 3x3x3x64 one (1,728).
    model = resnet.resnet(18, image_size=32, stem="cifar")
    assert _trainable(model) == 11_176_512 - 9_408 + 1_728 == 11_168_832
    assert model.output_shape == (None, 512)
    # BatchNorm moving statistics: 2 per channel of each of the 20 BN layers.
    bn_channels = sum(l.gamma.shape[0] for l in model.layers
                      if isinstance(l, keras.layers.BatchNormalization))
    assert model.count_params() - _trainable(model) == 2 * bn_channels


def test_resnet18_imagenet_stem_parameter_count():
    model = resnet.resnet(18, image_size=64, stem="imagenet")
    assert _trainable(model) == 11_176_512


def test_resnet50_cifar_parameter_count():
    # torchvision resnet50: 25,557,032 minus fc (2048*1000 + 1000), CIFAR stem.
    model = resnet.resnet(50, image_size=32, stem="cifar", width_multiplier=1.0)
    assert _trainable(model) == 25_557_032 - 2_049_000 - 9_408 + 1_728
    assert model.output_shape == (None, 2048)


@pytest.mark.parametrize("depth,width,rep", [(18, 0.125, 64), (50, 0.0625, 128)])
def test_output_shapes_and_width(depth, width, rep):
    model = resnet.resnet(depth, image_size=16, stem="cifar", width_multiplier=width)
    out = model(tf.random.uniform([3, 16, 16, 3]), training=True)
    assert out.shape == (3, rep)
    # Representation is after ReLU then average pooling: non-negative.
    assert float(tf.reduce_min(out)) >= 0.0


def test_stem_downsampling():
    cifar = resnet.resnet(18, image_size=32, stem="cifar", width_multiplier=0.125)
    imnet = resnet.resnet(18, image_size=64, stem="imagenet", width_multiplier=0.125)
    # Spatial size of the last stage before pooling: 32/8 = 4 and 64/32 = 2.
    assert cifar.get_layer("layer4_1_out").output.shape[1:3] == (4, 4)
    assert imnet.get_layer("layer4_1_out").output.shape[1:3] == (2, 2)
    assert cifar.get_layer("stem_conv").kernel.shape == (3, 3, 3, 8)
    assert imnet.get_layer("stem_conv").kernel.shape == (7, 7, 3, 8)
    assert "stem_pool" in [l.name for l in imnet.layers]
    assert "stem_pool" not in [l.name for l in cifar.layers]


def test_auto_stem_and_errors():
    assert resnet.resolve_stem("auto", 32) == "cifar"
    assert resnet.resolve_stem("auto", 96) == "imagenet"
    assert resnet.resolve_stem("cifar", 96) == "cifar"
    with pytest.raises(ValueError, match="stem"):
        resnet.resolve_stem("bogus", 32)
    with pytest.raises(ValueError, match="image_size=32 is too small for the imagenet"):
        resnet.resnet(18, image_size=32, stem="imagenet")
    with pytest.raises(ValueError, match="depth"):
        resnet.resnet(34)


def test_sync_bn_and_config_round_trip():
    model = resnet.resnet(18, image_size=8, stem="cifar", width_multiplier=0.0625,
                          sync_bn=True)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.synchronized for l in bns)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = tf.random.uniform([2, 8, 8, 3])
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
