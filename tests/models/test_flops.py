"""dualssl_tf.models.flops: FLOPs counted from the layers, against hand counts."""

import keras

from dualssl_tf.models import flops, heads, resnet

# ResNet-18 CIFAR stem at 32 px: (input side, in, out, kernel, stride, how many).
_R18_CONVS = ((32, 3, 64, 3, 1, 1), (32, 64, 64, 3, 1, 4), (32, 64, 128, 3, 2, 1),
              (32, 64, 128, 1, 2, 1), (16, 128, 128, 3, 1, 3), (16, 128, 256, 3, 2, 1),
              (16, 128, 256, 1, 2, 1), (8, 256, 256, 3, 1, 3), (8, 256, 512, 3, 2, 1),
              (8, 256, 512, 1, 2, 1), (4, 512, 512, 3, 1, 3))


def test_small_model_by_hand():
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)(x)
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(5)(y)
    got = flops.forward_flops(keras.Model(x, y))
    conv = 2 * 4 * 4 * 3 * 3 * 3 * 4
    assert got == {"total": conv + 2 * 4 * 5, "first_conv": conv}


def test_resnet18_cifar_simclr_step():
    enc = resnet.resnet(18, image_size=32, stem="cifar")
    head = heads.projection_head(512, 512, 128)
    convs = sum(2 * (s // st) ** 2 * ci * co * k * k * n for s, ci, co, k, st, n in _R18_CONVS)
    fwd = convs + 2 * (512 * 512 + 512 * 128)
    assert flops.forward_flops(enc)["total"] == convs          # 1.11 GFLOP
    assert abs(convs / 1e9 - 1.11) < 0.01
    stem = 2 * 32 * 32 * 3 * 64 * 9
    train, forward = flops.simclr_train_flops(enc, head, probe_classes=10)
    assert forward == fwd
    assert train == 2 * (3 * fwd - stem) + 3 * 2 * 512 * 10
