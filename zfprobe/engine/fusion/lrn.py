"""torch's ``nn.LocalResponseNorm`` as exported (Mul / 5-D Reshape / Pad / AveragePool / Reshape /
Mul / Add / Pow / Div), matched structurally into one ``LRN``."""
from __future__ import annotations


from zfprobe.engine.graph import Node
from zfprobe.engine.fusion.matcher import Fuser


def fuse_lrn(f: Fuser) -> None:
    for div in list(f.g.nodes):
        if div.name in f.removed or div.op_type != "Div" or len(div.inputs) != 2:
            continue
        x, den = div.inputs
        if f.g.is_constant(x) or f.g.is_constant(den) or len(f.g.shape(x)) != 4:
            continue
        chain: list[Node] = [div]
        m = f.binary_with_scalar(den, "Pow", chain)
        m = m and (m, f.binary_with_scalar(m[0], "Add", chain))
        if not m or not m[1]:
            continue
        (base, beta), (scaled, k) = m
        m2 = f.binary_with_scalar(scaled, "Mul", chain)
        if not m2:
            continue
        avg_t, alpha = m2
        avg_t = f.through_reshapes(avg_t, chain)
        pool = f.producer(avg_t)
        if pool is None or pool.op_type != "AveragePool" or len(f.g.shape(pool.inputs[0])) != 5:
            continue
        a = pool.attrs
        size = int(a["kernel_shape"][0])
        if (list(a["kernel_shape"][1:]) != [1, 1] or any(s != 1 for s in a["strides"]) or any(a["pads"])
                or not a.get("count_include_pad") or size % 2 != 1):
            continue
        chain.append(pool)
        pad = f.producer(pool.inputs[0])
        if (pad is None or pad.op_type != "Pad" or pad.attrs.get("mode", "constant") != "constant"
                or float(pad.attrs.get("value", 0.0)) != 0.0
                or list(pad.attrs["pads"]) != [0, 0, size // 2, 0, 0, 0, 0, (size - 1) // 2, 0, 0]):
            continue
        chain.append(pad)
        sq_t = f.through_reshapes(pad.inputs[0], chain)
        sq = f.producer(sq_t)
        if sq is None or sq.op_type != "Mul" or sq.inputs != [x, x]:
            continue
        chain.append(sq)
        if not f.private(chain, div.outputs[0]):
            continue
        f.replace(chain, Node(div.name, "LRN", [x], list(div.outputs),
                                 {"size": size, "alpha": alpha, "beta": beta, "bias": k}, div.source))
