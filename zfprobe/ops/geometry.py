"""Window geometry along one axis: the arithmetic every sliding-window op shares.

A window op (Conv, pools, a strided Slice, ConvTranspose's adjoint) maps an axis of ``n`` input
positions to ``out_length(n)`` outputs; output ``o`` reads the taps ``o*stride - pad_begin +
t*dilation`` for ``t < kernel``. Receptive fields, the windowed reversal, incremental occlusion and
the transposed convolutions of the reversal all need the same few facts about such a window,
stated once here (pure integer arithmetic, no arrays, no framework). ``tests/engine/test_geometry.py``
checks every method by brute force against indicator convolutions.
"""
from __future__ import annotations

from dataclasses import dataclass

# ONNX's ``auto_pad`` values (Conv, pools, ConvTranspose); TensorFlow's 'same' is SAME_UPPER.
NOTSET, SAME_UPPER, SAME_LOWER, VALID = "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"
SAME_MODES = (SAME_UPPER, SAME_LOWER)


def split_pad(total: int, upper: bool = True) -> tuple[int, int]:
    """``total`` padding split in two; the odd position goes at the end (SAME_UPPER, TensorFlow)
    or at the start (SAME_LOWER)."""
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


@dataclass(frozen=True)
class AxisWindow:
    """A sliding window along one axis (ONNX conventions: pads may be asymmetric or negative)."""

    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_begin: int = 0
    pad_end: int = 0
    ceil_mode: bool = False

    @property
    def span(self) -> int:
        """Input positions covered by one window, from its first tap to its last."""
        return (self.kernel - 1) * self.dilation + 1

    def out_length(self, n: int) -> int:
        """Number of outputs for ``n`` inputs (ONNX's floor / ceil_mode formula; a ceil-mode window
        that would start in the end padding is dropped, as ONNX and torch do)."""
        room = n + self.pad_begin + self.pad_end - self.span
        if room < 0:
            return 0
        if not self.ceil_mode:
            return room // self.stride + 1
        out = -(-room // self.stride) + 1
        if (out - 1) * self.stride >= n + self.pad_begin:
            out -= 1
        return out

    def first_tap(self, o: int) -> int:
        """Input position of output ``o``'s first tap (may lie in the padding: < 0 or >= n)."""
        return o * self.stride - self.pad_begin

    def input_span(self, o_lo: int, o_hi: int, n: int | None = None) -> tuple[int, int]:
        """The input range ``[lo, hi)`` that outputs ``[o_lo, o_hi)`` read. With ``n`` given, only
        taps on existing inputs count (the padding holds none): the exact first and last input
        read, also with dilation."""
        lo, hi = self.first_tap(o_lo), self.first_tap(o_hi - 1) + self.span
        if n is None:
            return lo, hi
        if lo < 0:  # skip the taps in the begin padding
            lo = min(lo + -(-(-lo) // self.dilation) * self.dilation, self.first_tap(o_lo) + self.span - 1)
        if hi > n:  # and those in the end padding
            last = hi - 1
            last -= -(-(last - (n - 1)) // self.dilation) * self.dilation
            hi = max(last, self.first_tap(o_hi - 1)) + 1
        return max(lo, 0), min(hi, n)

    def outputs_reading(self, i_lo: int, i_hi: int, n_out: int) -> tuple[int, int]:
        """The smallest output range ``[lo, hi)`` holding every output whose window covers any of
        the inputs ``[i_lo, i_hi)`` (the tightest range for dilation 1; with dilation it may hold
        outputs whose taps straddle the range); empty (lo == hi) when none does."""
        if i_hi <= i_lo:
            return 0, 0
        # first_tap(o) + span - 1 >= i_lo  and  first_tap(o) <= i_hi - 1
        lo = -(-(i_lo + self.pad_begin - self.span + 1) // self.stride)
        hi = (i_hi - 1 + self.pad_begin) // self.stride + 1
        lo, hi = max(lo, 0), min(hi, n_out)
        return (lo, hi) if hi > lo else (0, 0)

    def then(self, outer: "AxisWindow") -> "AxisWindow":
        """The window of ``outer`` applied to this window's output, seen from this window's input
        (a dilation-1 window over the hull of the taps; ceil mode and end pads do not compose
        into a hull, so the result keeps only what receptive fields need: kernel, stride, begin)."""
        stride = self.stride * outer.stride
        span = self.span + (outer.span - 1) * self.stride
        begin = self.pad_begin + outer.pad_begin * self.stride
        end = self.pad_end + outer.pad_end * self.stride
        return AxisWindow(span, stride, 1, begin, end)

    def ceil_overhang(self, n: int) -> int:
        """Extra end padding after which a floor-mode window gives this window's ``out_length(n)``:
        how a ceil-mode pool runs on kernels without ONNX's ceil mode (the overhang is padding
        that an average pool never counts)."""
        return max(0, (self.out_length(n) - 1) * self.stride + self.span - (n + self.pad_begin + self.pad_end))

    def transposed_crop(self, output_padding: int = 0) -> tuple[int, int]:
        """ONNX ConvTranspose as a kernel without pads computes it: the full transposed output,
        then ``(before, after)`` positions added (> 0) or cropped (< 0) at each end (pads crop,
        output_padding extends; F.pad's convention)."""
        return -self.pad_begin, output_padding - self.pad_end

    def transposed_pads(self, n_in: int, n_out: int) -> tuple[int, int, int]:
        """``(pad_begin, pad_end, output_padding)`` for the transposed convolution with this
        window's kernel, stride and dilation that maps ``n_out`` positions back onto exactly
        ``n_in`` (inputs this window never read, at the end, come back as output padding; reads
        past the end, in ceil mode, are cropped by a larger end pad)."""
        produced = self.stride * (n_out - 1) + self.span - self.pad_begin - self.pad_end
        extra = n_in - produced
        if extra >= 0:
            return self.pad_begin, self.pad_end, extra
        return self.pad_begin, self.pad_end - extra, 0


def same_window(n: int, kernel: int, stride: int = 1, dilation: int = 1, upper: bool = True) -> AxisWindow:
    """The window ONNX's SAME_UPPER / SAME_LOWER (and TensorFlow's 'same') give ``n`` inputs:
    ``ceil(n / stride)`` outputs, the padding that needs split by :func:`split_pad`."""
    span = (kernel - 1) * dilation + 1
    total = max(0, (-(-n // stride) - 1) * stride + span - n)
    return AxisWindow(kernel, stride, dilation, *split_pad(total, upper))


def explicit_pads(auto_pad: str | None, pads, n_in, kernel, strides, dilations) -> list[int]:
    """A Conv / pool's pads ``[begins.., ends..]`` with ``auto_pad`` resolved for inputs ``n_in``."""
    nd = len(kernel)
    if auto_pad in SAME_MODES:
        wins = [same_window(int(n_in[i]), int(kernel[i]), int(strides[i]), int(dilations[i]), auto_pad == SAME_UPPER)
                for i in range(nd)]
        return [w.pad_begin for w in wins] + [w.pad_end for w in wins]
    if auto_pad == VALID:
        return [0] * (2 * nd)
    return [int(p) for p in (pads or [0] * (2 * nd))]


def axis_windows(attrs: dict, nd: int) -> list[AxisWindow]:
    """The per-axis windows of a canonical Conv / pool / ConvTranspose node's attributes."""
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides") or [1] * nd)
    dilations = list(attrs.get("dilations") or [1] * nd)
    pads = list(attrs.get("pads") or [0] * (2 * nd))
    ceil = bool(attrs.get("ceil_mode", 0))
    return [AxisWindow(int(kernel[i]), int(strides[i]), int(dilations[i]), int(pads[i]), int(pads[i + nd]), ceil)
            for i in range(nd)]


def conv_transpose_length(n: int, w: AxisWindow, output_padding: int = 0) -> int:
    """Output length of a transposed convolution with window ``w`` over ``n`` positions."""
    return w.stride * (n - 1) + w.span - w.pad_begin - w.pad_end + output_padding
