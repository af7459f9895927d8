"""PyTorch twins of the zoo models: the same layers, in the same order, with the same ``state_dict`` names as the
zoo's ONNX initializers, so a dump of the device (initial parameters and running statistics by ONNX name) loads
straight into them. Used to check the generated C against PyTorch and by the host benchmark."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from poetc.frontend import zoo


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1))
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        for i in range(5):
            x = F.relu(getattr(self, f"conv{i + 1}")(x))
        return self.fc(x.flatten(1))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.kind = shortcut
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        k = {"poet": 3, "conv1x1": 1}.get(shortcut)
        if k:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.kind == "poet":
            y = F.relu(y)
        return F.relu(y + (self.shortcut(x) if self.kind != "identity" else x))


class ResNet8(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Block(16, 16, 1, "identity"))
        self.layer2 = nn.Sequential(Block(16, 32, 2, "conv1x1"))
        self.layer3 = nn.Sequential(Block(32, 64, 2, "conv1x1"))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ResNet18Cifar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Block(16, 16, 1, "poet"), Block(16, 16, 1, "poet"))
        self.layer2 = nn.Sequential(Block(16, 32, 2, "poet"), Block(32, 32, 1, "poet"))
        self.layer3 = nn.Sequential(Block(32, 64, 2, "poet"), Block(64, 64, 1, "poet"))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, 8, 1).flatten(1))


def _cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers = [_cbr(cin, hidden, 1)] if t != 1 else []
        layers += [_cbr(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False)]
        layers.append(nn.BatchNorm2d(cout))
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    def __init__(self, width: float = 0.35) -> None:
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]
        cfg.append((6, 320, 1, 1))
        cin = zoo._divisible(32 * width)
        feats: list[nn.Module] = [_cbr(3, cin, 3)]
        for t, c, n, s in cfg:
            cout = zoo._divisible(c * width)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(_cbr(cin, 1280, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Identity(), nn.Linear(1280, 10))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class VGG11Cifar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, 1, 1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _Dense(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, norm: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(fan_in, fan_out)
        if norm:
            self.LayerNorm = nn.LayerNorm(fan_out, eps=1e-12)


class _Layer(nn.Module):
    def __init__(self, d: int, inter: int) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = _Attention(d)
        self.attention.output = _Dense(d, d)
        self.intermediate = _Dense(d, inter, norm=False)
        self.output = _Dense(inter, d)


class TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c = zoo.TINY_BERT
        self.c = c
        d = c["hidden"]
        self.embeddings = nn.Module()
        self.embeddings.position_embeddings = nn.Parameter(torch.zeros(1, c["seq"], d))
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(d, c["intermediate"]) for _ in range(c["layers"]))
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(d, d)
        self.classifier = nn.Linear(d, c["classes"])

    def forward(self, x):
        b, s, d = x.shape
        h = self.c["heads"]
        x = self.embeddings.LayerNorm(x + self.embeddings.position_embeddings)
        for lyr in self.encoder.layer:
            att = lyr.attention.self

            def heads(t):
                return t.view(b, s, h, d // h).transpose(1, 2)

            q, k, v = heads(att.query(x)), heads(att.key(x)), heads(att.value(x))
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
            ctx = (p @ v).transpose(1, 2).reshape(b, s, d)
            x = lyr.attention.output.LayerNorm(lyr.attention.output.dense(ctx) + x)
            f = lyr.output.dense(F.gelu(lyr.intermediate.dense(x)))
            x = lyr.output.LayerNorm(f + x)
        return self.classifier(torch.tanh(self.pooler.dense(x[:, 0])))


TWINS = {
    "digits-cnn": DigitsCNN,
    "lenet": LeNet,
    "resnet8": ResNet8,
    "resnet18-cifar": ResNet18Cifar,
    "mobilenetv2-cifar": MobileNetV2Cifar,
    "vgg11-cifar": VGG11Cifar,
    "tiny-bert": TinyBert,
}


def twin(name: str, values: dict, dtype=torch.float64) -> nn.Module:
    """The PyTorch twin of zoo model ``name`` holding ``values`` (ONNX initializer name -> array), in train mode."""
    net = TWINS[name]().to(dtype)
    sd = net.state_dict()
    missing = [k for k in sd if not k.endswith("num_batches_tracked") and k not in values]
    if missing:
        raise KeyError(f"{name}: no value for {missing[:5]}")
    with torch.no_grad():
        for k, t in sd.items():
            if k in values:
                t.copy_(torch.as_tensor(values[k]).reshape(t.shape))
    return net.train()
