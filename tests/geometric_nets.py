"""Small torch networks built around the geometric ops of issue 9 (random weights, fixed seeds):
a U-Net (ConvTranspose2d, skip Concat, bilinear and nearest F.interpolate), an FPN + PAN neck
(nearest nn.Upsample top-down, strided-conv bottom-up), a YOLO-style net (Focus space-to-depth by
step-2 slicing, SiLU, LeakyReLU, channel Gather) and a PixelShuffle super-resolution net
(PixelUnshuffle in, reflect pad, PixelShuffle out). Rectifiers are nn.ReLU / nn.LeakyReLU modules
so tests/oracle.py's rule-aware functions see them."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _init(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


def _block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.mid = _block(3, 8), _block(8, 12), _block(12, 16)
        self.pool = nn.MaxPool2d(2)
        self.up1 = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec1 = _block(24, 12)
        self.dec2 = _block(20, 8)
        self.up3 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d1 = self.dec1(torch.cat([self.up1(m), e2], 1))
        up = F.interpolate(d1, scale_factor=2, mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, e1], 1))
        d2 = F.interpolate(d2, size=(d2.shape[2] // 2, d2.shape[3] // 2), mode="nearest")
        return self.head(self.up3(d2))


class FPNPAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c3, self.c4, self.c5 = _block(3, 8, 2), _block(8, 16, 2), _block(16, 24, 2)
        self.l3, self.l4, self.l5 = nn.Conv2d(8, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(24, 8, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.s3, self.s4 = _block(8, 8), _block(8, 8)
        self.down3, self.down4 = _block(8, 8, 2), _block(8, 8, 2)
        self.out = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        c3 = self.c3(x)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.l5(c5)
        p4 = self.s4(self.l4(c4) + self.up(p5))
        p3 = self.s3(self.l3(c3) + F.interpolate(p4, scale_factor=2.0, mode="bilinear", align_corners=True))
        n4 = p4 + self.down3(p3)
        n5 = p5 + self.down4(n4)
        return self.out(torch.cat([F.adaptive_avg_pool2d(t, 1) for t in (p3, n4, n5)], 1))


class Focus(nn.Module):
    """YOLOv5 / YOLOX stem: four step-2 slices stacked on channels, then a conv."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(4 * cin, cout, 3, 1, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        parts = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        return self.act(self.conv(torch.cat(parts, 1)))


class YoloLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.focus = Focus(3, 12)
        self.b1 = nn.Sequential(nn.Conv2d(12, 16, 3, 2, 1), nn.LeakyReLU(0.1))
        self.b2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.SiLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(nn.Conv2d(40, 16, 3, 1, 1), nn.LeakyReLU(0.1))
        self.head = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        f = self.focus(x)
        p4 = self.b1(f)
        p5 = self.b2(p4)
        y = self.fuse(torch.cat([self.up(p5), p4], 1))
        y = self.head(y)
        return y[:, [4, 0, 2, 5]]  # a Gather with constant indices on channels


class PixelShuffleSR(nn.Module):
    def __init__(self):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.body = nn.Sequential(nn.Conv2d(12, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.tail = nn.Conv2d(16, 3 * 16, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(4)

    def forward(self, x):
        y = self.body(F.pad(self.unshuffle(x), (1, 1, 1, 1), mode="reflect"))
        return self.shuffle(self.tail(y))


NETS = {"unet": (UNet, 10), "fpn_pan": (FPNPAN, 11), "yolo_focus": (YoloLike, 12), "pixelshuffle_sr": (PixelShuffleSR, 13)}


def build(name: str) -> nn.Module:
    cls, seed = NETS[name]
    return _init(cls(), seed)
