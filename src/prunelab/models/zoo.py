"""Registers every model family and the named models of the zoo.

A name is a family plus default keyword arguments; ``create("resnet56", num_classes=100)`` or
``create(ArchSpec("wrn", {...}))`` builds the module. ``prunelab models`` lists them all.
"""

from __future__ import annotations

from prunelab.models import densenet, fastgrnn, mobilenet_v1, mobilenet_v2, resnet, resnet_cifar, small, vgg, wrn
from prunelab.models.registry import register_family, register_model

register_family("resnet_cifar", resnet_cifar.resnet_cifar, units=resnet_cifar.units, init=resnet_cifar.init,
                shape_of=resnet_cifar.input_shape, doc="CIFAR ResNet-6n+2, shortcut option A or B (PFS layout)")
register_family("wrn", wrn.wrn, units=wrn.units, init=wrn.init, shape_of=wrn.input_shape,
                doc="pre-activation Wide ResNet WRN-depth-k (pytorch-prunes layout)")
register_family("densenet", densenet.densenet, units=densenet.units, init=densenet.init,
                shape_of=densenet.input_shape, doc="DenseNet-BC for CIFAR (pytorch-prunes layout)")
register_family("vgg", vgg.vgg, units=vgg.units, init=vgg.init, shape_of=vgg.input_shape,
                doc="VGG-BN, CIFAR variant (PFS layout)")
register_family("mobilenet_v1", mobilenet_v1.mobilenet_v1, units=mobilenet_v1.units, init=mobilenet_v1.init,
                input_shape=(3, 224, 224), shape_of=mobilenet_v1.input_shape, doc="MobileNet-V1, ImageNet")
register_family("mobilenet_v2", mobilenet_v2.mobilenet_v2, units=mobilenet_v2.units, init=mobilenet_v2.init,
                input_shape=(3, 224, 224), shape_of=mobilenet_v2.input_shape, doc="MobileNet-V2, ImageNet")
register_family("mobilenet_v2_cifar", mobilenet_v2.mobilenet_v2_cifar, units=mobilenet_v2.units_cifar,
                init=mobilenet_v2.init_cifar, shape_of=mobilenet_v2.input_shape_cifar,
                doc="MobileNet-V2, CIFAR variant (K. Liu / Global MP)")
register_family("resnet", resnet.resnet, units=resnet.units, init=resnet.init, input_shape=(3, 224, 224),
                shape_of=resnet.input_shape, doc="ImageNet ResNet, torchvision layout and keys")
register_family("fastgrnn", fastgrnn.fastgrnn, units=fastgrnn.units, init=fastgrnn.init, input_shape=(128, 9),
                task="sequence", shape_of=fastgrnn.input_shape, doc="FastGRNN with low-rank W and U")
register_family("mlp", small.mlp, units=small.mlp_units, init=small.init, input_shape=(64,), task="vector",
                shape_of=small.mlp_shape, doc="MLP with BN (digits)")
register_family("cnn", small.cnn, units=small.conv_units, init=small.init, input_shape=(1, 8, 8),
                shape_of=small.cnn_shape, doc="small 2-D CNN (digits, 1x8x8)")
register_family("cnn1d", small.cnn1d, units=small.conv_units, init=small.init, input_shape=(1, 40),
                task="sequence", shape_of=small.cnn1d_shape, doc="small 1-D CNN (MNIST-1D, 1x40)")
register_family("gru", small.gru, init=small.init, input_shape=(40, 1), task="sequence",
                shape_of=small.gru_shape, doc="GRU sequence classifier (MNIST-1D as 40 steps x 1)")

# CIFAR ResNets: option B (PFS) under the plain name, option A with "-a".
for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", "resnet_cifar", depth=_depth, shortcut="B",
                   doc=f"CIFAR ResNet-{_depth}, 1x1-conv shortcuts (option B, PFS)")
    register_model(f"resnet{_depth}-a", "resnet_cifar", depth=_depth, shortcut="A",
                   doc=f"CIFAR ResNet-{_depth}, zero-padding shortcuts (option A)")

# Wide ResNets (pytorch-prunes; dropout 0.3 for the Global MP WRN-22-8 / WRN-28-8 settings).
for _depth, _k, _drop in ((16, 1, 0.0), (16, 2, 0.0), (16, 8, 0.0), (22, 8, 0.3), (28, 8, 0.3), (28, 10, 0.3),
                          (40, 1, 0.0), (40, 2, 0.0), (40, 4, 0.0)):
    register_model(f"wrn-{_depth}-{_k}", "wrn", depth=_depth, widen_factor=_k, dropout=_drop,
                   doc=f"WRN-{_depth}-{_k}" + (f", dropout {_drop}" if _drop else ""))

register_model("densenet-bc-100-12", "densenet", depth=100, growth_rate=12,
               doc="DenseNet-BC-100, k=12 (Crowley et al.)")
register_model("densenet-bc-40-12", "densenet", depth=40, growth_rate=12, doc="DenseNet-BC-40, k=12")

for _depth in (11, 13, 16, 19):
    register_model(f"vgg{_depth}-bn", "vgg", depth=_depth, doc=f"VGG-{_depth}-BN, CIFAR variant (PFS)")

register_model("mobilenet-v1", "mobilenet_v1", num_classes=1000, doc="MobileNet-V1, bias-free classifier (Global MP)")
register_model("mobilenet-v2", "mobilenet_v2", num_classes=1000, doc="MobileNet-V2 (PFS / torchvision layers)")
register_model("mobilenet-v2-cifar", "mobilenet_v2_cifar", doc="MobileNet-V2 for CIFAR (K. Liu, Global MP)")

for _name, _block, _layers in (("resnet18", "basic", [2, 2, 2, 2]), ("resnet34", "basic", [3, 4, 6, 3]),
                               ("resnet50", "bottleneck", [3, 4, 6, 3])):
    register_model(_name, "resnet", block=_block, layers=_layers, num_classes=1000,
                   doc=f"ResNet-{_name[6:]} (torchvision layout and keys)")

register_model("fastgrnn", "fastgrnn", input_size=9, hidden_size=80, w_rank=9, u_rank=80, num_classes=2,
               doc="FastGRNN for HAR-2, full rank (r_W=9, r_U=80)")

register_model("mlp", "mlp", in_features=64, doc="MLP 64-128-64-10 (digits)")
register_model("cnn", "cnn", in_channels=1, doc="CNN 16-32-64 (digits, 1x8x8)")
register_model("cnn1d", "cnn1d", in_channels=1, doc="1-D CNN 32-64-64 (MNIST-1D, 1x40)")
register_model("gru", "gru", input_size=1, doc="GRU, hidden 64 (MNIST-1D, 40x1)")
