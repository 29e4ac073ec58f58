"""Train a zfprobe Graph's architecture from scratch in torch (transfer's baseline, paper Table 4).

The graph (from an ONNX file, a torch module or a Keras model) is turned into a trainable
``nn.Module``: each node runs through the torch backend's op table (:data:`OPS`), every weight
of a Conv / ConvTranspose / Gemm / MatMul / PRelu and every BatchNormalization scale and shift
becomes a fresh ``nn.Parameter`` (torch's default initialization, uniform in +-1/sqrt(fan_in)),
BatchNormalization uses batch statistics while training, and the classifier head (see
:mod:`zfprobe.engine.heads`) is resized to the new number of classes. Other constants (reshape targets,
folded values) stay fixed. Dropout is exported as Identity and is not re-inserted.

Training: Adam, cross-entropy, mini-batches, seeded (torch and numpy), on the CPU or the
device the caller picks; a progress bar counts epochs.
"""
from __future__ import annotations

import math

import numpy as np

from zfprobe.engine.graph import Graph
from zfprobe.engine.heads import find_head

WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "PRelu": (1,),
                 "BatchNormalization": (1, 2)}


def _fan_in(op: str, shape: tuple[int, ...], node) -> int:
    if op in ("Conv",):
        return int(np.prod(shape[1:]))
    if op == "ConvTranspose":
        return int(shape[0] * np.prod(shape[2:]))
    if op == "Gemm":
        return int(shape[1] if node.attr("transB", 0) else shape[0])
    if op == "MatMul":
        return int(shape[0])
    return max(1, int(np.prod(shape)))


def build_module(graph: Graph, n_classes: int, seed: int = 0, copy_weights: bool = False):
    """A freshly initialized trainable ``nn.Module`` of ``graph``'s architecture, ``n_classes`` logits.

    ``copy_weights``: start from the graph's own weights and BatchNorm statistics instead (the
    head keeps its size); then, in eval mode, the module computes exactly what the model does,
    which is how the tests check the translation."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from zfprobe.adapters.backends.torch_backend import OPS

    head = find_head(graph)
    if copy_weights:
        n_classes = graph.shape(head.logits)[-1]
    nodes = graph.ancestors([head.logits])
    gen = torch.Generator().manual_seed(int(seed))

    class GraphNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.params = nn.ParameterDict()
            self.stats = {}
            self.fixed: dict[str, torch.Tensor] = {}
            self.steps = []
            names: dict[str, str] = {}
            # fan-in of the layer each bias belongs to
            for node in nodes:
                roles = WEIGHT_INPUTS.get(node.op_type, ())
                w_shape = None
                for pos in roles:
                    if pos >= len(node.inputs) or not node.inputs[pos] or not graph.is_constant(node.inputs[pos]):
                        continue
                    name = node.inputs[pos]
                    shape = tuple(graph.constants[name].shape)
                    if name == head.bias:
                        shape = (n_classes,)
                    if name == head.weight:
                        shape = (n_classes, shape[1]) if head.weight_out_first else (shape[0], n_classes)
                    if pos == 1:
                        w_shape = shape
                    key = f"p{len(names)}"
                    names[name] = key
                    if copy_weights:
                        value = torch.from_numpy(np.array(graph.constants[name], np.float32))
                    elif node.op_type == "BatchNormalization":
                        value = torch.ones(shape) if pos == 1 else torch.zeros(shape)
                    else:
                        bound = 1.0 / math.sqrt(_fan_in(node.op_type, w_shape or shape, node))
                        value = (torch.rand(shape, generator=gen) * 2 - 1) * bound
                    self.params[key] = nn.Parameter(value.float())
                if head.bias and head.bias not in names and any(i == head.bias for i in node.inputs):
                    key = f"p{len(names)}"
                    names[head.bias] = key
                    bound = 1.0 / math.sqrt(graph.constants[head.weight].shape[0 if not head.weight_out_first else 1])
                    value = ((torch.rand(n_classes, generator=gen) * 2 - 1) * bound).float()
                    if copy_weights:
                        value = torch.from_numpy(np.array(graph.constants[head.bias], np.float32).reshape(-1))
                    self.params[key] = nn.Parameter(value)
            self.names = names
            for node in nodes:
                if node.op_type == "BatchNormalization":
                    mean, var = (np.array(graph.constants[t], np.float32) for t in node.inputs[3:5])
                    if not copy_weights:
                        mean, var = np.zeros_like(mean), np.ones_like(var)
                    self.register_buffer(f"mean_{len(self.stats)}", torch.from_numpy(mean))
                    self.register_buffer(f"var_{len(self.stats)}", torch.from_numpy(var))
                    self.stats[node.name] = len(self.stats)
                    fn = self._bn(node, self.stats[node.name], F)
                else:
                    fn = OPS[node.op_type](node)
                self.steps.append((node, fn))
            for node in nodes:
                for t in node.inputs:
                    if t and graph.is_constant(t) and t not in names:
                        arr = np.ascontiguousarray(graph.constants[t])
                        self.fixed[t] = torch.from_numpy(arr.astype(np.float32) if arr.dtype == np.float64 else arr.copy())

        def _bn(self, node, i, F_):
            eps = float(node.attr("epsilon", 1e-5))
            momentum = 1.0 - float(node.attr("momentum", 0.9))

            def run(x, w, b, *_):
                return F_.batch_norm(x, getattr(self, f"mean_{i}"), getattr(self, f"var_{i}"), w, b,
                                     self.training, momentum, eps)

            return run

        def forward(self, x):
            env = {graph.inputs[0]: x}
            env.update(self.fixed)
            for t, key in self.names.items():
                env[t] = self.params[key]
            for node, fn in self.steps:
                out = fn(*[env[t] if t else None for t in node.inputs])
                if isinstance(out, tuple):
                    for o, r in zip(node.outputs, out):
                        if o:
                            env[o] = r
                else:
                    env[node.outputs[0]] = out
            return env[head.logits]

    return GraphNet()


def train_from_scratch(graph: Graph, x: np.ndarray, y: np.ndarray, epochs: int = 60, batch_size: int = 32,
                       lr: float = 3e-3, seed: int = 0, progress: bool = False):
    """Train the architecture on preprocessed images ``x`` with labels ``y``; returns
    ``predict(images) -> labels`` (labels in ``y``'s values)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    classes, target = np.unique(y, return_inverse=True)
    torch.manual_seed(int(seed))
    net = build_module(graph, len(classes), seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    xs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    ys = torch.from_numpy(target.astype(np.int64))
    gen = torch.Generator().manual_seed(int(seed))
    net.train()
    for _ in tqdm(range(int(epochs)), desc="scratch", unit="epoch", disable=not progress, leave=False, dynamic_ncols=True):
        order = torch.randperm(len(xs), generator=gen)
        for lo in range(0, len(xs), batch_size):
            idx = order[lo:lo + batch_size]
            if len(idx) < 2 and net.stats:  # BatchNorm cannot train on a batch of one
                continue
            loss = F.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for lo in range(0, len(images), 256):
                batch = torch.from_numpy(np.ascontiguousarray(images[lo:lo + 256], np.float32))
                out.append(net(batch).argmax(1).numpy())
        return classes[np.concatenate(out)] if out else classes[:0]

    return predict
