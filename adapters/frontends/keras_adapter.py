"""Keras 3 front-end: a live Keras model (Sequential, Functional, nested) or a .keras / .h5 file
becomes zfprobe's neutral :class:`~zfprobe.engine.graph.Graph`, run natively by TensorFlow.

No tf2onnx: a direct walker visits the model's layers (in the Functional graph's topological
order, recursing into nested models) and emits canonical nodes for each one via ``CONVERTERS``,
a table keyed by the layer class name. A layer class it does not know stops the walk with an
error naming the layer and its class.

Layout. Keras is channels-last (NHWC); zfprobe's op vocabulary is ONNX's (channels-first). The
graph keeps the model's NHWC image input and puts ONE ``Transpose`` (perm [0, 3, 1, 2]) right
after it, so every layer tensor is channels-first in zfprobe's view: channel = axis 1, then the
spatial axes (``probe.activations`` returns [N, C, H, W] for a conv layer of a Keras model).
Projections come back in the input's layout ([K, H, W, C]). Kernels are converted exactly:
Conv2D HWIO -> OIHW; DepthwiseConv2D (kh, kw, C, M) -> (C*M, 1, kh, kw) with group=C;
SeparableConv2D = a depthwise node + a 1x1 pointwise node; ``Flatten`` before ``Dense``
reproduces Keras' channels-last order (Transpose to NHWC, then Flatten); ``padding='same'`` is
turned into the explicit (possibly asymmetric) pads TensorFlow uses.

Names. A layer's name is the tensor Keras users expect: the layer output AFTER its fused
activation. A layer with a fused activation also exposes ``<layer>/preactivation`` (the node
``<layer>/conv``, ``<layer>/dense``, ...) and its activation node is ``<layer>/activation``.
Separable convolutions also expose ``<layer>/depthwise``.

Live weights. ``graph.parameter_refs[constant] = KerasWeight(layer, index, transform)``; the
TensorFlow backend reads ``layer.weights[index]`` at every run, so a model being trained or
edited in place is always probed with its current weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from zfprobe.errors import ModelLoadError, ZfprobeError
from zfprobe.engine.fusion import fuse
from zfprobe.engine.graph import Graph, Node
from zfprobe.ops.geometry import AxisWindow, conv_transpose_length, same_window, split_pad


class KerasLayerError(ZfprobeError):
    """A Keras layer (or layer option) that the walker cannot follow."""


@dataclass(frozen=True)
class KerasWeight:
    """A live Keras weight: ``layer.weights[index]``, shown to zfprobe after ``transform``.

    transform: ``identity``; ``conv`` (HWIO -> OIHW); ``depthwise`` ((kh, kw, C, M) -> (C*M, 1, kh, kw));
    ``bn_std`` and friends are not used: BatchNorm statistics are read as they are.
    """

    layer: Any
    index: int
    transform: str = "identity"

    def variable(self):
        return self.layer.weights[self.index]


def to_canonical(value: np.ndarray, transform: str) -> np.ndarray:
    """The numpy version of a :class:`KerasWeight` transform (also used by the TF backend's checks)."""
    if transform == "identity":
        return np.asarray(value, np.float32)
    if transform == "conv":
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)), np.float32)
    if transform == "depthwise":
        kh, kw, c, m = value.shape
        return np.ascontiguousarray(np.transpose(value, (2, 3, 0, 1)).reshape(c * m, 1, kh, kw), np.float32)
    raise ValueError(f"unknown weight transform {transform!r}")


# -------------------------------------------------------------------------------------------------
# Layout helpers: zfprobe's channels-first view of a Keras channels-last tensor.
# -------------------------------------------------------------------------------------------------
def to_first_perm(rank: int) -> list[int]:
    """Permutation NHWC -> NCHW for a tensor of ``rank``."""
    return [0, rank - 1] + list(range(1, rank - 1)) if rank > 2 else list(range(rank))


def to_last_perm(rank: int) -> list[int]:
    """Permutation NCHW -> NHWC."""
    return [0] + list(range(2, rank)) + [1] if rank > 2 else list(range(rank))


def keras_axis_to_view(axis: int, rank: int) -> int:
    """A Keras (channels-last) axis -> the same axis in zfprobe's channels-first view."""
    axis = axis % rank
    if rank <= 2 or axis == 0:
        return axis
    return 1 if axis == rank - 1 else axis + 1



# -------------------------------------------------------------------------------------------------
# The walker
# -------------------------------------------------------------------------------------------------
class _Walker:
    def __init__(self, model):
        self.model = model
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.refs: dict[str, KerasWeight] = {}
        self.names: set[str] = set()
        self.layer_tensors: dict[str, str] = {}
        self.conv_layers = 0

    # -- naming and emission ------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def emit(self, op_type: str, inputs: list[str], out_shape: tuple[int, ...], name: str, source: str,
             **attrs) -> str:
        name = self.unique(name)
        out = name
        self.nodes.append(Node(name, op_type, list(inputs), [out], dict(attrs), source))
        self.shapes[out] = tuple(int(s) for s in out_shape)
        self.dtypes[out] = np.dtype(np.float32)
        return out

    def const(self, name: str, value: np.ndarray, ref: KerasWeight | None = None) -> str:
        name = self.unique(name)
        self.constants[name] = np.ascontiguousarray(np.asarray(value, np.float32))
        if ref is not None:
            self.refs[name] = ref
        return name

    def weight(self, layer, variable, name: str, transform: str = "identity") -> str:
        """A constant for ``variable`` of ``layer``, registered as a live weight."""
        index = next(i for i, w in enumerate(layer.weights) if w is variable)
        value = to_canonical(np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable), transform)
        return self.const(f"{layer.name}/{name}", value, KerasWeight(layer, index, transform))

    # -- activations ----------------------------------------------------------------------------
    def activation(self, layer, fn, x: str, out_name: str) -> str:
        """Emit ``fn`` (a Keras activation) on ``x``; the result is named ``out_name``."""
        shape = self.shapes[x]
        name = getattr(fn, "__name__", str(fn)) if fn is not None else "linear"
        if name in ("linear", "identity"):
            return x if x == out_name else self.emit("Identity", [x], shape, out_name, layer.name)
        src = layer.name
        if name == "relu":
            return self.emit("Relu", [x], shape, out_name, src)
        if name == "relu6":
            return self.emit("Clip", [x], shape, out_name, src, min=0.0, max=6.0)
        if name == "leaky_relu":
            return self.emit("LeakyRelu", [x], shape, out_name, src, alpha=0.2)
        if name == "sigmoid":
            return self.emit("Sigmoid", [x], shape, out_name, src)
        if name == "tanh":
            return self.emit("Tanh", [x], shape, out_name, src)
        if name == "hard_sigmoid":
            return self.emit("HardSigmoid", [x], shape, out_name, src, alpha=1.0 / 6.0, beta=0.5)
        if name in ("silu", "swish"):
            return self.emit("Swish", [x], shape, out_name, src, alpha=1.0)
        if name == "gelu":
            return self.emit("Gelu", [x], shape, out_name, src, approximate="none")
        if name in ("mish", "softplus", "selu", "elu"):
            op = {"mish": "Mish", "softplus": "Softplus", "selu": "Selu", "elu": "Elu"}[name]
            return self.emit(op, [x], shape, out_name, src)
        if name == "hard_silu" or name == "hard_swish":
            return self.emit("HardSwish", [x], shape, out_name, src)
        if name == "softmax":
            return self.emit("Softmax", [x], shape, out_name, src, axis=1)
        raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}) uses the activation '{name}', "
                              "which zfprobe cannot reverse; supported: relu, relu6, leaky_relu, sigmoid, tanh, "
                              "hard_sigmoid, silu, hard_silu, gelu, mish, softplus, elu, selu, softmax, linear")

    def fused(self, layer, pre: str, shape, op_type: str, inputs: list[str], **attrs) -> str:
        """Emit the layer's main op, then its fused activation (if any) under the layer's name;
        the main op's output is then ``<layer>/preactivation``."""
        fn = getattr(layer, "activation", None)
        fname = getattr(fn, "__name__", "linear") if fn is not None else "linear"
        if fname in ("linear", "identity"):
            return self.emit(op_type, inputs, shape, layer.name, layer.name, **attrs)
        y = self.emit(op_type, inputs, shape, f"{layer.name}/preactivation", layer.name, **attrs)
        return self.activation(layer, fn, y, layer.name)

    # -- traversal ----------------------------------------------------------------------------
    def walk_model(self, model, inputs: list[str]) -> list[str]:
        """Emit ``model`` applied to graph tensors ``inputs``; returns its output tensors."""
        if _is_sequential(model) and getattr(model, "_functional", None) is None:
            x = inputs
            for layer in model.layers:
                x = self.walk_layer(layer, x, {})
            return x
        fn = model._functional if _is_sequential(model) else model
        if not hasattr(fn, "_nodes_by_depth"):
            raise KerasLayerError(f"model '{model.name}' ({type(model).__name__}) is a subclassed Keras model; zfprobe "
                                  "follows Sequential and Functional models only (rebuild it functionally)")
        tensors: dict[int, str] = {}
        for kt, name in zip(fn.inputs, inputs):
            tensors[id(kt)] = name
        for depth in sorted(fn._nodes_by_depth.keys(), reverse=True):
            for node in fn._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(t) not in tensors for t in node.input_tensors):
                    continue
                args = [tensors[id(t)] for t in node.input_tensors]
                kwargs = {k: v for k, v in node.arguments.kwargs.items() if not _has_keras_tensor(v)}
                outs = self.walk_layer(node.operation, args, kwargs)
                for kt, name in zip(node.outputs, outs):
                    tensors[id(kt)] = name
        missing = [t for t in fn.outputs if id(t) not in tensors]
        if missing:
            raise KerasLayerError(f"model '{model.name}': cannot follow the graph to its outputs")
        return [tensors[id(t)] for t in fn.outputs]

    def walk_layer(self, layer, inputs: list[str], kwargs: dict) -> list[str]:
        cls = type(layer).__name__
        if hasattr(layer, "layers") and (_is_sequential(layer) or hasattr(layer, "_nodes_by_depth")):
            return self.walk_model(layer, inputs)
        if kwargs.get("training") and cls not in _SAME_IN_TRAINING:
            raise KerasLayerError(f"layer '{layer.name}' ({cls}) is called with training=True in the model graph; "
                                  "zfprobe probes inference behaviour only")
        fn = CONVERTERS.get(cls)
        if fn is None:
            raise KerasLayerError(
                f"layer '{layer.name}' of class {cls} ({type(layer).__module__}) is not one zfprobe can follow; "
                f"supported layers: {', '.join(sorted(CONVERTERS))}")
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            raise KerasLayerError(f"layer '{layer.name}' ({cls}) uses data_format='channels_first'; zfprobe's Keras "
                                  "adapter follows channels_last models (the Keras default)")
        out = fn(self, layer, inputs)
        outs = out if isinstance(out, list) else [out]
        self.layer_tensors.setdefault(layer.name, outs[0])
        return outs


def _is_sequential(model) -> bool:
    return any(c.__name__ == "Sequential" for c in type(model).__mro__)


def _has_keras_tensor(value) -> bool:
    if type(value).__name__ == "KerasTensor":
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_keras_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_keras_tensor(v) for v in value.values())
    return False


# -------------------------------------------------------------------------------------------------
# Converters: one per Keras layer class. Each gets (walker, layer, input tensors) and returns the
# output tensor(s), named after the layer.
# -------------------------------------------------------------------------------------------------
CONVERTERS: dict[str, Callable[[_Walker, Any, list[str]], Any]] = {}


def converter(*classes: str):
    def register(fn):
        for c in classes:
            CONVERTERS[c] = fn
        return fn

    return register


def _one(layer, inputs: list[str]) -> str:
    if len(inputs) != 1:
        raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}) has {len(inputs)} inputs; expected one")
    return inputs[0]


def _spatial_geometry(w: _Walker, layer, x: str, kernel, strides, dilations, padding: str):
    """(output spatial sizes, explicit pads [begins + ends]) for a 2-D window op on NCHW ``x``."""
    shape = w.shapes[x]
    if len(shape) != 4:
        raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}) gets a rank-{len(shape)} input; "
                              "zfprobe follows 2-D (image) models")
    outs, begins, ends = [], [], []
    for i in range(2):
        n = shape[2 + i]
        if padding == "same":  # TensorFlow's 'same' is ONNX's SAME_UPPER
            win = same_window(n, kernel[i], strides[i], dilations[i], upper=True)
        elif padding == "valid":
            win = AxisWindow(kernel[i], strides[i], dilations[i])
        else:
            raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}) uses padding='{padding}'")
        o, b, e = win.out_length(n), win.pad_begin, win.pad_end
        if o <= 0:
            raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}): the input {shape[2:]} is smaller "
                                  "than its window")
        outs.append(o)
        begins.append(b)
        ends.append(e)
    return outs, begins + ends


@converter("Conv2D")
def _conv2d(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    kh, kw, cin_g, cout = (int(s) for s in layer.kernel.shape)
    strides, dil = list(layer.strides), list(layer.dilation_rate)
    if max(strides) > 1 and max(dil) > 1:
        raise KerasLayerError(f"layer '{layer.name}' (Conv2D) combines strides and dilation, which TensorFlow "
                              "does not define")
    (oh, ow), pads = _spatial_geometry(w, layer, x, (kh, kw), strides, dil, layer.padding)
    groups = int(getattr(layer, "groups", 1) or 1)
    ins = [x, w.weight(layer, layer.kernel, "kernel", "conv")]
    if layer.use_bias:
        ins.append(w.weight(layer, layer.bias, "bias"))
    w.conv_layers += 1
    return w.fused(layer, "conv", (1, cout, oh, ow), "Conv", ins, kernel_shape=[kh, kw], strides=strides,
                   dilations=dil, pads=pads, group=groups)


@converter("DepthwiseConv2D")
def _depthwise(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    kh, kw, c, m = (int(s) for s in layer.kernel.shape)
    strides, dil = list(layer.strides), list(layer.dilation_rate)
    (oh, ow), pads = _spatial_geometry(w, layer, x, (kh, kw), strides, dil, layer.padding)
    ins = [x, w.weight(layer, layer.kernel, "depthwise_kernel", "depthwise")]
    if layer.use_bias:
        ins.append(w.weight(layer, layer.bias, "bias"))
    w.conv_layers += 1
    return w.fused(layer, "conv", (1, c * m, oh, ow), "Conv", ins, kernel_shape=[kh, kw], strides=strides,
                   dilations=dil, pads=pads, group=c)


@converter("SeparableConv2D")
def _separable(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    kh, kw, c, m = (int(s) for s in layer.depthwise_kernel.shape)
    cout = int(layer.pointwise_kernel.shape[-1])
    strides, dil = list(layer.strides), list(layer.dilation_rate)
    (oh, ow), pads = _spatial_geometry(w, layer, x, (kh, kw), strides, dil, layer.padding)
    dk = w.weight(layer, layer.depthwise_kernel, "depthwise_kernel", "depthwise")
    d = w.emit("Conv", [x, dk], (1, c * m, oh, ow), f"{layer.name}/depthwise", layer.name, kernel_shape=[kh, kw],
               strides=strides, dilations=dil, pads=pads, group=c)
    ins = [d, w.weight(layer, layer.pointwise_kernel, "pointwise_kernel", "conv")]
    if layer.use_bias:
        ins.append(w.weight(layer, layer.bias, "bias"))
    w.conv_layers += 1
    return w.fused(layer, "pointwise", (1, cout, oh, ow), "Conv", ins, kernel_shape=[1, 1], strides=[1, 1],
                   dilations=[1, 1], pads=[0, 0, 0, 0], group=1)


@converter("Dense")
def _dense(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    units = int(layer.kernel.shape[-1])
    if len(shape) != 2:
        raise KerasLayerError(f"layer '{layer.name}' (Dense) is applied to a rank-{len(shape)} tensor; zfprobe "
                              "follows Dense layers on flat [N, features] inputs (put Flatten or global pooling first)")
    ins = [x, w.weight(layer, layer.kernel, "kernel")]
    if layer.use_bias:
        ins.append(w.weight(layer, layer.bias, "bias"))
    return w.fused(layer, "dense", (1, units), "Gemm", ins, alpha=1.0, beta=1.0, transA=0, transB=0)


def _pool_args(layer):
    pool = [int(p) for p in layer.pool_size]
    strides = [int(s) for s in (layer.strides or pool)]
    return pool, strides


@converter("MaxPooling2D")
def _maxpool(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    pool, strides = _pool_args(layer)
    (oh, ow), pads = _spatial_geometry(w, layer, x, pool, strides, [1, 1], layer.padding)
    c = w.shapes[x][1]
    return w.emit("MaxPool", [x], (1, c, oh, ow), layer.name, layer.name, kernel_shape=pool, strides=strides,
                  pads=pads, dilations=[1, 1], ceil_mode=0)


@converter("AveragePooling2D")
def _avgpool(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    pool, strides = _pool_args(layer)
    (oh, ow), pads = _spatial_geometry(w, layer, x, pool, strides, [1, 1], layer.padding)
    c = w.shapes[x][1]
    # TensorFlow averages over the valid (unpadded) inputs of each window.
    return w.emit("AveragePool", [x], (1, c, oh, ow), layer.name, layer.name, kernel_shape=pool, strides=strides,
                  pads=pads, ceil_mode=0, count_include_pad=0)


def _global_pool(op_type: str):
    def convert(w: _Walker, layer, inputs):
        x = _one(layer, inputs)
        shape = w.shapes[x]
        if len(shape) != 4:
            raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}) gets a rank-{len(shape)} input")
        c = shape[1]
        if getattr(layer, "keepdims", False):
            return w.emit(op_type, [x], (1, c, 1, 1), layer.name, layer.name)
        p = w.emit(op_type, [x], (1, c, 1, 1), f"{layer.name}/pool", layer.name)
        return w.emit("Flatten", [p], (1, c), layer.name, layer.name, axis=1)

    return convert


CONVERTERS["GlobalAveragePooling2D"] = _global_pool("GlobalAveragePool")
CONVERTERS["GlobalMaxPooling2D"] = _global_pool("GlobalMaxPool")


@converter("BatchNormalization")
def _batchnorm(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1 or keras_axis_to_view(int(axes[0]), len(shape)) != 1:
        raise KerasLayerError(f"layer '{layer.name}' (BatchNormalization) normalizes axis {layer.axis}; zfprobe "
                              "follows BatchNormalization over the channel axis only")
    c = shape[1]
    scale = w.weight(layer, layer.gamma, "gamma") if layer.scale else w.const(f"{layer.name}/gamma", np.ones(c))
    bias = w.weight(layer, layer.beta, "beta") if layer.center else w.const(f"{layer.name}/beta", np.zeros(c))
    mean = w.weight(layer, layer.moving_mean, "moving_mean")
    var = w.weight(layer, layer.moving_variance, "moving_variance")
    return w.emit("BatchNormalization", [x, scale, bias, mean, var], shape, layer.name, layer.name,
                  epsilon=float(layer.epsilon))


@converter("LayerNormalization")
def _layernorm(w: _Walker, layer, inputs):
    """Keras normalizes the channels-last axis (ConvNeXt's LayerNorm): in the channels-first
    view that is axis 1, so the canonical (trailing-axes) LayerNormalization runs between two
    transposes."""
    x = _one(layer, inputs)
    shape = w.shapes[x]
    rank = len(shape)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1 or keras_axis_to_view(int(axes[0]), rank) != 1 or getattr(layer, "rms_scaling", False):
        raise KerasLayerError(f"layer '{layer.name}' (LayerNormalization) normalizes axis {layer.axis}; zfprobe "
                              "follows LayerNormalization over the channel axis only")
    c = shape[1]
    scale = w.weight(layer, layer.gamma, "gamma") if layer.scale else w.const(f"{layer.name}/gamma", np.ones(c))
    bias = w.weight(layer, layer.beta, "beta") if layer.center else w.const(f"{layer.name}/beta", np.zeros(c))
    if rank == 2:
        return w.emit("LayerNormalization", [x, scale, bias], shape, layer.name, layer.name,
                      axis=-1, epsilon=float(layer.epsilon))
    last, first = to_last_perm(rank), to_first_perm(rank)
    t = w.emit("Transpose", [x], tuple(shape[p] for p in last), f"{layer.name}/channels_last", layer.name, perm=last)
    n = w.emit("LayerNormalization", [t, scale, bias], w.shapes[t], f"{layer.name}/norm", layer.name,
               axis=-1, epsilon=float(layer.epsilon))
    return w.emit("Transpose", [n], shape, layer.name, layer.name, perm=first)


@converter("GroupNormalization")
def _groupnorm(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    if keras_axis_to_view(int(layer.axis), len(shape)) != 1:
        raise KerasLayerError(f"layer '{layer.name}' (GroupNormalization) groups axis {layer.axis}; zfprobe "
                              "follows GroupNormalization over the channel axis only")
    c = shape[1]
    scale = w.weight(layer, layer.gamma, "gamma") if layer.scale else w.const(f"{layer.name}/gamma", np.ones(c))
    bias = w.weight(layer, layer.beta, "beta") if layer.center else w.const(f"{layer.name}/beta", np.zeros(c))
    return w.emit("GroupNormalization", [x, scale, bias], shape, layer.name, layer.name,
                  num_groups=int(layer.groups), epsilon=float(layer.epsilon))


@converter("PReLU")
def _prelu_layer(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    alpha = np.asarray(layer.alpha.numpy(), np.float32)      # [H, W, C] or shared axes of size 1
    if alpha.ndim == len(shape) - 1 and len(shape) > 2:
        alpha = np.transpose(alpha, [alpha.ndim - 1] + list(range(alpha.ndim - 1)))  # channels first
    slope = w.const(f"{layer.name}/alpha", alpha)  # a snapshot: its channels-first view has no live form
    return w.emit("PRelu", [x, slope], shape, layer.name, layer.name)


@converter("ELU")
def _elu_layer(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    return w.emit("Elu", [x], w.shapes[x], layer.name, layer.name, alpha=float(getattr(layer, "alpha", 1.0)))


@converter("Activation")
def _activation_layer(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    return w.activation(layer, layer.activation, x, layer.name)


@converter("ReLU")
def _relu_layer(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
    max_value = getattr(layer, "max_value", None)
    threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
    if threshold != 0.0:
        raise KerasLayerError(f"layer '{layer.name}' (ReLU) has threshold={threshold}; zfprobe reverses rectifiers "
                              "that switch at 0")
    if max_value is not None and slope != 0.0:
        raise KerasLayerError(f"layer '{layer.name}' (ReLU) combines max_value and negative_slope")
    if max_value is not None:
        return w.emit("Clip", [x], shape, layer.name, layer.name, min=0.0, max=float(max_value))
    if slope != 0.0:
        return w.emit("LeakyRelu", [x], shape, layer.name, layer.name, alpha=slope)
    return w.emit("Relu", [x], shape, layer.name, layer.name)


@converter("LeakyReLU")
def _leaky_layer(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    slope = float(getattr(layer, "negative_slope", getattr(layer, "alpha", 0.3)))
    return w.emit("LeakyRelu", [x], w.shapes[x], layer.name, layer.name, alpha=slope)


@converter("Softmax")
def _softmax_layer(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    rank = len(w.shapes[x])
    axis = layer.axis if not isinstance(layer.axis, (list, tuple)) else layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise KerasLayerError(f"layer '{layer.name}' (Softmax) normalizes over several axes {axis}")
        axis = axis[0]
    return w.emit("Softmax", [x], w.shapes[x], layer.name, layer.name, axis=keras_axis_to_view(int(axis), rank))


def _broadcast_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(int(s) for s in np.broadcast_shapes(*shapes))


@converter("Add")
def _add(w: _Walker, layer, inputs):
    shape = _broadcast_shape([w.shapes[t] for t in inputs])
    if len(inputs) == 2:
        return w.emit("Add", inputs, shape, layer.name, layer.name)
    return w.emit("Sum", inputs, shape, layer.name, layer.name)


@converter("Subtract")
def _sub(w: _Walker, layer, inputs):
    return w.emit("Sub", inputs, _broadcast_shape([w.shapes[t] for t in inputs]), layer.name, layer.name)


@converter("Multiply")
def _mul(w: _Walker, layer, inputs):
    shape = _broadcast_shape([w.shapes[t] for t in inputs])
    x = inputs[0]
    for i, t in enumerate(inputs[1:], 1):
        x = w.emit("Mul", [x, t], shape, layer.name if i == len(inputs) - 1 else f"{layer.name}/mul{i}", layer.name)
    return x


@converter("Average")
def _average(w: _Walker, layer, inputs):
    shape = _broadcast_shape([w.shapes[t] for t in inputs])
    s = w.emit("Sum", inputs, shape, f"{layer.name}/sum", layer.name)
    return w.emit("Div", [s, w.const(f"{layer.name}/count", np.float32(len(inputs)))], shape, layer.name, layer.name)


@converter("Concatenate")
def _concat(w: _Walker, layer, inputs):
    rank = len(w.shapes[inputs[0]])
    axis = keras_axis_to_view(int(layer.axis), rank)
    shape = list(w.shapes[inputs[0]])
    shape[axis] = sum(w.shapes[t][axis] for t in inputs)
    return w.emit("Concat", inputs, tuple(shape), layer.name, layer.name, axis=axis)


@converter("Flatten")
def _flatten(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    if len(shape) <= 2:
        return w.emit("Identity", [x], shape, layer.name, layer.name)
    perm = to_last_perm(len(shape))
    t = w.emit("Transpose", [x], tuple(shape[p] for p in perm), f"{layer.name}/channels_last", layer.name, perm=perm)
    return w.emit("Flatten", [t], (1, int(np.prod(shape[1:]))), layer.name, layer.name, axis=1)


@converter("Reshape")
def _reshape(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    target = [int(s) for s in layer.target_shape]
    total = int(np.prod(shape[1:]))
    if -1 in target:
        known = int(np.prod([s for s in target if s != -1]))
        target[target.index(-1)] = total // known
    if len(shape) > 2:
        perm = to_last_perm(len(shape))
        x = w.emit("Transpose", [x], tuple(shape[p] for p in perm), f"{layer.name}/channels_last", layer.name, perm=perm)
    keras_shape = (1, *target)
    if len(keras_shape) <= 2:
        return w.emit("Reshape", [x], keras_shape, layer.name, layer.name, shape=[-1, *target])
    r = w.emit("Reshape", [x], keras_shape, f"{layer.name}/reshape", layer.name, shape=[-1, *target])
    perm = to_first_perm(len(keras_shape))
    return w.emit("Transpose", [r], tuple(keras_shape[p] for p in perm), layer.name, layer.name, perm=perm)


@converter("Conv2DTranspose")
def _conv2d_transpose(w: _Walker, layer, inputs):
    """Keras' transposed conv: the output size Keras computes, and the crop TensorFlow applies
    (the 'same' pads of the forward conv from that output back to the input)."""
    x = _one(layer, inputs)
    shape = w.shapes[x]
    kh, kw, cout, cin = (int(s) for s in layer.kernel.shape)
    strides, dil = [int(s) for s in layer.strides], [int(d) for d in layer.dilation_rate]
    out_hw = [int(s) for s in layer.compute_output_shape((1, shape[2], shape[3], shape[1]))[1:3]]
    begins, ends, out_pad = [], [], []
    for i, k in enumerate((kh, kw)):
        full = conv_transpose_length(shape[2 + i], AxisWindow(k, strides[i], dil[i]))
        total = max(0, full - out_hw[i]) if layer.padding == "same" else 0
        b, e = split_pad(total, upper=True)
        begins.append(b)
        ends.append(e)
        out_pad.append(out_hw[i] - conv_transpose_length(shape[2 + i], AxisWindow(k, strides[i], dil[i], begins[i], ends[i])))
    if min(out_pad) < 0:
        raise KerasLayerError(f"layer '{layer.name}' (Conv2DTranspose): output size {out_hw} is not reachable")
    ins = [x, w.weight(layer, layer.kernel, "kernel", "conv")]
    if layer.use_bias:
        ins.append(w.weight(layer, layer.bias, "bias"))
    w.conv_layers += 1
    return w.fused(layer, "convT", (1, cout, *out_hw), "ConvTranspose", ins, kernel_shape=[kh, kw], strides=strides,
                   dilations=dil, pads=begins + ends, output_padding=out_pad, group=1)


# Layers whose output does not depend on ``training`` (Keras' preprocessing layers record
# training=True in functional graphs).
_SAME_IN_TRAINING = {"Resizing", "UpSampling2D"}

# Keras / TensorFlow image resizing (half-pixel centres) as ONNX Resize attributes.
_KERAS_RESIZE = {
    "nearest": {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "floor"},
    "bilinear": {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
}


def _resize_node(w: _Walker, layer, x: str, out_hw, interpolation: str, scales=None) -> str:
    if interpolation not in _KERAS_RESIZE:
        raise KerasLayerError(f"layer '{layer.name}' ({type(layer).__name__}) uses interpolation='{interpolation}'; "
                              "zfprobe follows nearest and bilinear")
    shape = w.shapes[x]
    out = (shape[0], shape[1], int(out_hw[0]), int(out_hw[1]))
    scales = scales or [out[2] / shape[2], out[3] / shape[3]]
    attrs = dict(_KERAS_RESIZE[interpolation], cubic_coeff_a=-0.75, exclude_outside=0,
                 scales=[1.0, 1.0, float(scales[0]), float(scales[1])], out_size=list(out))
    return w.emit("Resize", [x], out, layer.name, layer.name, **attrs)


@converter("UpSampling2D")
def _upsampling2d(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    sh, sw = (int(s) for s in layer.size)
    shape = w.shapes[x]
    if layer.interpolation == "nearest":  # a plain repeat, whatever the coordinate convention
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor",
                 "cubic_coeff_a": -0.75, "exclude_outside": 0, "scales": [1.0, 1.0, float(sh), float(sw)],
                 "out_size": [shape[0], shape[1], shape[2] * sh, shape[3] * sw]}
        return w.emit("Resize", [x], tuple(attrs["out_size"]), layer.name, layer.name, **attrs)
    return _resize_node(w, layer, x, (shape[2] * sh, shape[3] * sw), layer.interpolation, [sh, sw])


@converter("Resizing")
def _resizing(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    if getattr(layer, "crop_to_aspect_ratio", False) or getattr(layer, "pad_to_aspect_ratio", False):
        raise KerasLayerError(f"layer '{layer.name}' (Resizing) crops or pads to an aspect ratio; zfprobe follows "
                              "plain resizing")
    return _resize_node(w, layer, x, (layer.height, layer.width), layer.interpolation)


@converter("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
           "ActivityRegularization", "Identity")
def _identity(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    return w.emit("Identity", [x], w.shapes[x], layer.name, layer.name)


@converter("ZeroPadding2D")
def _zeropad(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    (t, b), (l, r) = layer.padding
    out = (shape[0], shape[1], shape[2] + t + b, shape[3] + l + r)
    return w.emit("Pad", [x], out, layer.name, layer.name, pads=[0, 0, int(t), int(l), 0, 0, int(b), int(r)],
                  mode="constant", value=0.0)


@converter("Cropping2D")
def _crop(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    (t, b), (l, r) = layer.cropping
    out = (shape[0], shape[1], shape[2] - t - b, shape[3] - l - r)
    return w.emit("Slice", [x], out, layer.name, layer.name, starts=[int(t), int(l)],
                  ends=[shape[2] - int(b), shape[3] - int(r)], axes=[2, 3], steps=[1, 1])


def _channel_const(w: _Walker, name: str, value, rank: int) -> str:
    """A per-channel (or scalar) Keras constant broadcast in the channels-first view."""
    v = np.asarray(value, np.float32)
    if v.ndim >= 1 and v.size > 1:
        v = v.reshape(-1)
        v = v.reshape((v.size,) + (1,) * max(0, rank - 2))
    else:
        v = v.reshape(())
    return w.const(name, v)


@converter("Rescaling")
def _rescaling(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    rank = len(shape)
    scale = np.asarray(layer.scale, np.float32)
    offset = np.asarray(layer.offset, np.float32)
    if scale.size > 1 and scale.size != shape[1] or offset.size > 1 and offset.size != shape[1]:
        raise KerasLayerError(f"layer '{layer.name}' (Rescaling) has a scale or offset that is not per-channel")
    y = w.emit("Mul", [x, _channel_const(w, f"{layer.name}/scale", scale, rank)], shape,
               f"{layer.name}/scale" if np.any(offset != 0) else layer.name, layer.name)
    if np.any(offset != 0):
        y = w.emit("Add", [y, _channel_const(w, f"{layer.name}/offset", offset, rank)], shape, layer.name, layer.name)
    return y


@converter("Normalization")
def _normalization(w: _Walker, layer, inputs):
    x = _one(layer, inputs)
    shape = w.shapes[x]
    rank = len(shape)
    if getattr(layer, "invert", False):
        raise KerasLayerError(f"layer '{layer.name}' (Normalization) has invert=True")
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
    if tuple(int(a) % rank for a in axes) not in ((rank - 1,), ()):
        raise KerasLayerError(f"layer '{layer.name}' (Normalization) normalizes axis {layer.axis}; zfprobe follows "
                              "per-channel normalization (axis=-1)")
    import keras

    mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float32).reshape(-1)
    var = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float32).reshape(-1)
    std = np.maximum(np.sqrt(var), keras.backend.epsilon())
    m = w.emit("Sub", [x, _channel_const(w, f"{layer.name}/mean", mean, rank)], shape, f"{layer.name}/center", layer.name)
    return w.emit("Div", [m, _channel_const(w, f"{layer.name}/std", std, rank)], shape, layer.name, layer.name)


@converter("InputLayer")
def _input_layer(w: _Walker, layer, inputs):
    return inputs


# -------------------------------------------------------------------------------------------------
# Entry points
# -------------------------------------------------------------------------------------------------
def keras_to_graph(model, input_shape: tuple[int, ...] | None = None) -> Graph:
    """Lower a Keras 3 model to zfprobe's graph (see the module docstring)."""
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) > 1:
        raise ModelLoadError(f"zfprobe probes models with one image input; '{model.name}' has {len(inputs)}")
    if inputs:
        declared = tuple(inputs[0].shape)
        in_name = getattr(inputs[0], "name", None) or "input"
    else:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ModelLoadError(f"model '{model.name}' is not built (no input shape); call it on an input first, or "
                                 "give it a keras.Input")
        declared, in_name = tuple(shape), "input"
    if input_shape is not None:
        given = tuple(int(s) for s in input_shape)
        if len(given) == len(declared):
            given = given[1:]
        if len(given) != len(declared) - 1:
            raise ZfprobeError(f"input shape {tuple(input_shape)} does not match the model input of rank {len(declared)}")
        for want, have in zip(declared[1:], given):
            if want is not None and want != have:
                raise ZfprobeError(f"input shape {given} conflicts with the model's fixed input shape {declared[1:]}")
        declared = (None, *given)
    if any(d is None for d in declared[1:]):
        raise ZfprobeError(f"the model input has unknown dimensions {declared}; give the input size "
                           "(input_shape=(H, W, C), or --input-size on the command line)")
    nhwc = (1, *(int(d) for d in declared[1:]))
    w = _Walker(model)
    in_name = w.unique(str(in_name))
    w.shapes[in_name] = nhwc
    w.dtypes[in_name] = np.dtype(np.float32)
    rank = len(nhwc)
    perm = to_first_perm(rank)
    x = in_name
    if perm != list(range(rank)):
        x = w.emit("Transpose", [in_name], tuple(nhwc[p] for p in perm), f"{in_name}/channels_first", in_name, perm=perm)
    outs = w.walk_model(model, [x])
    if w.conv_layers == 0:
        raise ModelLoadError(f"model '{model.name}' has no convolutional layer (Conv2D, DepthwiseConv2D, "
                             "SeparableConv2D); zfprobe visualizes convolutional networks")
    used = {i for n in w.nodes for i in n.inputs}
    return fuse(Graph(
        nodes=w.nodes,
        inputs=[in_name],
        outputs=outs,
        constants={k: v for k, v in w.constants.items() if k in used},
        shapes=w.shapes,
        dtypes=w.dtypes,
        parameter_refs={k: v for k, v in w.refs.items() if k in used},
        name=model.name,
        metadata={"format": "keras", "layout": "NHWC input; layer tensors channels-first (channel = axis 1)",
                  "keras_layers": dict(w.layer_tensors)},
    ))


def _preprocessing(graph: Graph, path: str | None):
    from dataclasses import replace

    from zfprobe.io.preprocess import default_preprocessing

    shape = graph.shape(graph.inputs[0])
    if len(shape) != 4:
        return None
    h, w_, c = shape[1], shape[2], shape[3]
    prep = default_preprocessing((1, h, w_, c) if c not in (1, 3) else (1, c, h, w_), path)
    return replace(prep, size=(h, w_), channels=c, layout="NHWC")


def attach(model, input_shape: tuple[int, ...] | None = None, device: str = "auto", backend: str | None = None,
           preprocessing=None, source: str = ""):
    """A :class:`~zfprobe.Probe` for a live Keras model, run by TensorFlow with the model's live weights.

    ``backend``: ``None`` / ``"tensorflow"`` (default) or ``"onnxruntime"`` (runs the same graph with a
    snapshot of the weights). ``input_shape`` (H, W, C) fixes inputs declared with unknown sizes.
    """
    from zfprobe.probe import Probe

    graph = keras_to_graph(model, input_shape)
    if backend in (None, "tensorflow", "tf"):
        from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

        runner = TensorFlowBackend(device)
    elif backend == "onnxruntime":
        from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend

        runner = OnnxRuntimeBackend(device)
    else:
        from zfprobe.errors import OptionError

        raise OptionError(f"unknown backend '{backend}' for a Keras model; choose tensorflow or onnxruntime")
    prep = preprocessing if preprocessing is not None else _preprocessing(graph, source or None)
    probe = Probe(graph, runner, source=source or getattr(model, "name", ""), preprocessing=prep)
    probe.keras_model = model
    return probe


def load_keras_model(path: str | os.PathLike, safe_mode: bool = True, custom_objects: dict | None = None):
    """Read a .keras / .h5 file with Keras (safe mode on by default), with errors a user can act on."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file '{path}' does not exist")
    try:
        import keras
    except ImportError:
        raise ModelLoadError("reading Keras files needs TensorFlow and Keras 3: pip install 'zfprobe[keras]'") from None
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        head = f.read(8)
    if ext == ".keras" and not head.startswith(b"PK"):
        raise ModelLoadError(f"'{path}' is not a readable .keras file (not a zip archive; corrupt or truncated?)")
    if ext in (".h5", ".hdf5") and not head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise ModelLoadError(f"'{path}' is not a readable HDF5 model file (bad signature; corrupt or truncated?)")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode, custom_objects=custom_objects)
    except Exception as exc:  # Keras raises many types on bad files
        msg = " ".join(str(exc).split())
        low = msg.lower()
        if "lambda" in low and "safe_mode" in low:
            raise ModelLoadError(f"'{path}' contains a Lambda layer (arbitrary Python code); Keras' safe mode refuses "
                                 "to load it. Only if you trust the file: load(path, safe_mode=False)") from None
        custom = _custom_classes(path, custom_objects)
        if custom or "could not locate class" in low or "unknown layer" in low or "custom_objects" in low:
            what = ", ".join(f"layer '{n}' of class {c}" for n, c in custom) or "a custom layer or object"
            raise ModelLoadError(
                f"'{path}' uses {what}, which Keras cannot rebuild without its code: "
                "zfprobe follows built-in Keras layers only (load the model yourself with its custom_objects and use "
                f"zfprobe.attach; a custom layer stops the walk by name). Keras said: {msg[:300]}") from None
        raise ModelLoadError(f"cannot read the Keras model '{path}' (corrupt, truncated or not a Keras model): "
                             f"{type(exc).__name__}: {msg[:300]}") from None


def _model_config(path: str):
    """The model's JSON config from a .keras (zip) or .h5 file, or None."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                return None
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:
        return None


def _custom_classes(path: str, custom_objects: dict | None = None) -> list[tuple[str, str]]:
    """(layer name, class name) of every layer in the file's config that is not a built-in Keras
    class and not given in ``custom_objects``."""
    import keras

    config = _model_config(path)
    found: list[tuple[str, str]] = []
    given = set(custom_objects or {})

    def visit(obj):
        if isinstance(obj, dict):
            cls = obj.get("class_name")
            if isinstance(cls, str) and not cls.startswith("__") and isinstance(obj.get("config"), dict) \
                    and "name" in obj["config"]:
                module = obj.get("module") or ""
                registered = obj.get("registered_name") or cls
                builtin = module.startswith("keras") or (not module and hasattr(keras.layers, cls))
                known = cls in given or registered in given or keras.saving.get_registered_object(registered) is not None
                if not builtin and not known and cls not in ("Functional", "Sequential", "Model"):
                    found.append((str(obj["config"].get("name", "?")), cls))
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit(config)
    return found


def load(path: str | os.PathLike, device: str = "auto", safe_mode: bool = True, input_shape=None,
         backend: str | None = None, custom_objects: dict | None = None):
    """Open a .keras / .h5 model file as a :class:`~zfprobe.Probe` run by TensorFlow."""
    model = load_keras_model(path, safe_mode=safe_mode, custom_objects=custom_objects)
    if input_shape is not None and len(tuple(input_shape)) == 3 and tuple(input_shape)[0] in (1, 3) \
            and model.inputs and model.inputs[0].shape[-1] == tuple(input_shape)[0]:
        c, h, w_ = input_shape  # the CLI passes (C, H, W); Keras wants (H, W, C)
        input_shape = (h, w_, c)
    return attach(model, input_shape=input_shape, device=device, backend=backend, source=os.fspath(path))
