"""Rewrites of a program that make it faster on onnxruntime without changing its result.

onnxruntime's CPU ConvTranspose is about 2x slower than its Conv for the same arithmetic; a
stride-1 transposed convolution is a plain convolution with the kernel flipped and its channel
axes swapped per group, so the backend runs it as one. The weight is rearranged by graph ops
(folded once by onnxruntime), so live weights stay live, and exported deconvnets
(``zfprobe export-deconv``) keep the plain ConvTranspose.
"""
from __future__ import annotations

import numpy as np


def conv_transpose_as_conv(program):
    """The same program with every stride-1 ``ConvTranspose`` (constant weights, no output
    padding) written as a ``Conv`` with the kernel transposed per group and flipped; the weight
    is rearranged by graph ops (folded once by the runtime), so live weights stay live."""
    from zfprobe.engine.graph import Graph, Node

    nodes, constants = [], dict(program.constants)
    count = 0
    for node in program.nodes:
        a = node.attrs
        w = node.inputs[1] if len(node.inputs) > 1 else ""
        kernel = list(a.get("kernel_shape", []))
        nd = len(kernel)
        dil = list(a.get("dilations") or [1] * nd)
        pads = list(a.get("pads") or [0] * (2 * nd))
        new_pads = [(kernel[i % nd] - 1) * dil[i % nd] - pads[i] for i in range(2 * nd)]
        ok = (node.op_type == "ConvTranspose" and w in program.constants and len(node.inputs) == 2 and nd
              and all(s == 1 for s in a.get("strides") or [1] * nd) and not any(a.get("output_padding") or [])
              and min(new_pads) >= 0)
        if not ok:
            nodes.append(node)
            continue
        count += 1
        g = int(a.get("group", 1))
        c_in, c_out_g = program.constants[w].shape[:2]
        pre = f"zf_fastconv/{count}"
        cur = w
        if g > 1:
            cur_shape = f"{pre}/shape5"
            constants[cur_shape] = np.array([g, c_in // g, c_out_g, *kernel], np.int64)
            nodes.append(Node(f"{pre}/r1", "Reshape", [cur], [f"{pre}/w5"], {"shape": [g, c_in // g, c_out_g, *kernel]}))
            nodes.append(Node(f"{pre}/t", "Transpose", [f"{pre}/w5"], [f"{pre}/w5t"], {"perm": [0, 2, 1] + list(range(3, 3 + nd))}))
            nodes.append(Node(f"{pre}/r2", "Reshape", [f"{pre}/w5t"], [f"{pre}/wt"], {"shape": [g * c_out_g, c_in // g, *kernel]}))
            del constants[cur_shape]
        else:
            nodes.append(Node(f"{pre}/t", "Transpose", [cur], [f"{pre}/wt"], {"perm": [1, 0] + list(range(2, 2 + nd))}))
        cur = f"{pre}/wt"
        for i in range(nd):
            idx = f"{pre}/flip{i}"
            constants[idx] = np.arange(kernel[i] - 1, -1, -1, dtype=np.int64)
            nodes.append(Node(f"{pre}/g{i}", "Gather", [cur, idx], [f"{pre}/wf{i}"], {"axis": 2 + i}))
            cur = f"{pre}/wf{i}"
        nodes.append(Node(node.name, "Conv", [node.inputs[0], cur], list(node.outputs),
                          {"kernel_shape": kernel, "strides": [1] * nd, "dilations": dil, "pads": new_pads, "group": g},
                          node.source))
    if not count:
        return program
    return Graph(nodes=nodes, inputs=list(program.inputs), outputs=list(program.outputs), constants=constants,
                 shapes=program.shapes, dtypes=program.dtypes, parameter_refs=program.parameter_refs,
                 name=program.name + "+conv", metadata=dict(program.metadata))
