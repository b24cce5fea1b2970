"""The ``zoo`` suite: the distinct convolution, transposed-convolution and pooling layers of
published networks, at the sizes those networks use them.

Each layer runs twice: at batch 1, forward only (inference), and at a training batch, forward
and every gradient (a training step's share of the layer). Shapes are at batch 1 here; a
network's training batch is chosen so that its largest layer's step stays near a second on
a 2-core machine. Layers that several networks share (ResNet-18's and ResNet-50's 3x3 layers,
say) are listed once, under the first network that has them.
"""

from __future__ import annotations

# network: (where its layers come from, training batch, layers). A layer is
# (name, op, input shape at batch 1, weight shape or None, keyword arguments).
NETWORKS = {
    "resnet18": (
        "He et al. 2016, 'Deep residual learning'; torchvision resnet18, 224x224", 16, [
            ("conv1", "conv2d", (1, 3, 224, 224), (64, 3, 7, 7), {"stride": 2, "padding": 3}),
            ("maxpool", "max_pool2d", (1, 64, 112, 112), None,
             {"kernel_size": 3, "stride": 2, "padding": 1}),
            ("layer1", "conv2d", (1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}),
            ("layer2.0", "conv2d", (1, 64, 56, 56), (128, 64, 3, 3), {"stride": 2, "padding": 1}),
            ("layer2.down", "conv2d", (1, 64, 56, 56), (128, 64, 1, 1), {"stride": 2}),
            ("layer2", "conv2d", (1, 128, 28, 28), (128, 128, 3, 3), {"padding": 1}),
            ("layer3", "conv2d", (1, 256, 14, 14), (256, 256, 3, 3), {"padding": 1}),
            ("layer4.0", "conv2d", (1, 256, 14, 14), (512, 256, 3, 3),
             {"stride": 2, "padding": 1}),
            ("layer4", "conv2d", (1, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}),
            ("avgpool", "avg_pool2d", (1, 512, 7, 7), None, {"kernel_size": 7}),
        ]),
    "resnet50": (
        "He et al. 2016, bottleneck blocks; torchvision resnet50 (stride on the 3x3)", 16, [
            ("layer1.conv1", "conv2d", (1, 64, 56, 56), (64, 64, 1, 1), {}),
            ("layer1.conv3", "conv2d", (1, 64, 56, 56), (256, 64, 1, 1), {}),
            ("layer2.0.conv2", "conv2d", (1, 128, 56, 56), (128, 128, 3, 3),
             {"stride": 2, "padding": 1}),
            ("layer3.conv1", "conv2d", (1, 1024, 14, 14), (256, 1024, 1, 1), {}),
            ("layer4.conv3", "conv2d", (1, 512, 7, 7), (2048, 512, 1, 1), {}),
        ]),
    "mobilenet_v2": (
        "Sandler et al. 2018, 'MobileNetV2'; torchvision mobilenet_v2, 224x224", 16, [
            ("stem", "conv2d", (1, 3, 224, 224), (32, 3, 3, 3), {"stride": 2, "padding": 1}),
            ("dw112", "conv2d", (1, 32, 112, 112), (32, 1, 3, 3), {"padding": 1, "groups": 32}),
            ("expand56", "conv2d", (1, 24, 56, 56), (144, 24, 1, 1), {}),
            ("dw56", "conv2d", (1, 144, 56, 56), (144, 1, 3, 3), {"padding": 1, "groups": 144}),
            ("dw56.s2", "conv2d", (1, 144, 56, 56), (144, 1, 3, 3),
             {"stride": 2, "padding": 1, "groups": 144}),
            ("project14", "conv2d", (1, 576, 14, 14), (96, 576, 1, 1), {}),
            ("dw7", "conv2d", (1, 960, 7, 7), (960, 1, 3, 3), {"padding": 1, "groups": 960}),
        ]),
    "resnext50": (
        "Xie et al. 2017, 'Aggregated residual transformations'; torchvision "
        "resnext50_32x4d", 16, [
            ("layer1.conv2", "conv2d", (1, 128, 56, 56), (128, 4, 3, 3),
             {"padding": 1, "groups": 32}),
            ("layer3.conv2", "conv2d", (1, 512, 14, 14), (512, 16, 3, 3),
             {"padding": 1, "groups": 32}),
            ("layer4.0.conv2", "conv2d", (1, 1024, 14, 14), (1024, 32, 3, 3),
             {"stride": 2, "padding": 1, "groups": 32}),
        ]),
    "vgg16": (
        "Simonyan & Zisserman 2015, configuration D; torchvision vgg16, 224x224", 4, [
            ("conv1_2", "conv2d", (1, 64, 224, 224), (64, 64, 3, 3), {"padding": 1}),
            ("conv3_2", "conv2d", (1, 256, 56, 56), (256, 256, 3, 3), {"padding": 1}),
            ("conv5_1", "conv2d", (1, 512, 14, 14), (512, 512, 3, 3), {"padding": 1}),
            ("pool1", "max_pool2d", (1, 64, 224, 224), None, {"kernel_size": 2, "stride": 2}),
        ]),
    "alexnet": (
        "Krizhevsky et al. 2012; torchvision alexnet, 224x224", 16, [
            ("conv1", "conv2d", (1, 3, 224, 224), (64, 3, 11, 11), {"stride": 4, "padding": 2}),
            ("conv2", "conv2d", (1, 64, 27, 27), (192, 64, 5, 5), {"padding": 2}),
            ("pool1", "max_pool2d", (1, 64, 55, 55), None, {"kernel_size": 3, "stride": 2}),
        ]),
    "unet": (
        "Ronneberger et al. 2015, 'U-Net', with padded 3x3 convolutions as in common "
        "implementations, 256x256", 4, [
            ("enc1", "conv2d", (1, 64, 256, 256), (64, 64, 3, 3), {"padding": 1}),
            ("bottleneck", "conv2d", (1, 512, 16, 16), (1024, 512, 3, 3), {"padding": 1}),
            ("up4", "conv_transpose2d", (1, 1024, 16, 16), (1024, 512, 2, 2), {"stride": 2}),
            ("up1", "conv_transpose2d", (1, 128, 128, 128), (128, 64, 2, 2), {"stride": 2}),
            ("head", "conv2d", (1, 64, 256, 256), (2, 64, 1, 1), {}),
        ]),
    "wavenet": (
        "van den Oord et al. 2016, 'WaveNet': dilated convolutions of kernel 2, 32 residual "
        "and 256 skip channels, one second at 16 kHz", 8, [
            ("dilated.d256", "conv1d", (1, 32, 16384 + 256), (64, 32, 2), {"dilation": 256}),
            ("dilated.d1", "conv1d", (1, 32, 16385), (64, 32, 2), {}),
            ("skip", "conv1d", (1, 32, 16384), (256, 32, 1), {}),
        ]),
    "m5": (
        "Dai et al. 2017, 'Very deep CNNs for raw waveforms' (M5), 8 kHz audio", 64, [
            ("conv1", "conv1d", (1, 1, 8000), (128, 1, 80), {"stride": 4}),
            ("conv2", "conv1d", (1, 128, 495), (128, 128, 3), {}),
            ("pool1", "max_pool1d", (1, 128, 1981), None, {"kernel_size": 4}),
        ]),
    "c3d": (
        "Tran et al. 2015, 'C3D', 16 frames of 112x112", 2, [
            ("conv1a", "conv3d", (1, 3, 16, 112, 112), (64, 3, 3, 3, 3), {"padding": 1}),
            ("conv3a", "conv3d", (1, 128, 8, 28, 28), (256, 128, 3, 3, 3), {"padding": 1}),
            ("conv5a", "conv3d", (1, 512, 2, 7, 7), (512, 512, 3, 3, 3), {"padding": 1}),
            ("pool2", "max_pool3d", (1, 128, 16, 56, 56), None,
             {"kernel_size": 2, "stride": 2}),
        ]),
}

