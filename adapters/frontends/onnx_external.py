"""ONNX external data, read by zfprobe itself so that a model file cannot make it read others.

An ONNX tensor may keep its bytes in another file (``location``, ``offset``, ``length``). onnx's
own loader has, in some versions, followed symlinks, hard links and ``sub/../..`` paths out of
the model's folder (and ``export-deconv`` would then copy those bytes into its output). Here each
location must be a plain relative path that resolves, after following symlinks, inside the
model's folder, to a regular file with a single link, and the byte range must lie within it.
Anything else is refused with one line, whatever onnx version is installed.
"""
from __future__ import annotations

import os
import stat

from zfprobe.errors import UntrustedFileError


def _tensors(graph):
    """Every TensorProto of a graph, subgraphs and sparse tensors included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    """Every TensorProto in the attributes of ``nodes``: dense, sparse (a Constant's
    ``sparse_value``), lists of both, and those of subgraphs."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sp in [*sparse, *attr.sparse_tensors]:
                yield sp.values
                yield sp.indices
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def model_tensors(model):
    """Every TensorProto of a model: its graph's and those inside its local functions."""
    yield from _tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def resolve_location(model_path: str, location: str) -> str:
    """The real path of an external-data file, or :class:`UntrustedFileError`."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(model_path)))
    shown = repr(location)
    if not location or "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")):
        raise UntrustedFileError(f"model '{model_path}': external data location {shown} is not a relative path")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise UntrustedFileError(f"model '{model_path}': external data location {shown} leaves the model's folder")
    real = os.path.realpath(os.path.join(folder, *parts))
    if os.path.commonpath([folder, real]) != folder:
        raise UntrustedFileError(f"model '{model_path}': external data location {shown} resolves outside the "
                                 f"model's folder (to '{real}')")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise UntrustedFileError(f"model '{model_path}': external data file {shown} cannot be read: "
                                 f"{exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFileError(f"model '{model_path}': external data file {shown} is not a regular file")
    if st.st_nlink > 1:
        raise UntrustedFileError(f"model '{model_path}': external data file {shown} is a hard link "
                                 f"({st.st_nlink} names); copy it into the model's folder instead")
    return real


def inline_external_data(model, model_path: str) -> int:
    """Replace every external-data reference by the checked bytes; returns how many tensors."""
    from onnx import TensorProto

    count = 0
    for tensor in model_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        where = f"model '{model_path}', tensor '{tensor.name}'"
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise UntrustedFileError(f"{where}: external data offset/length are not numbers") from None
        real = resolve_location(model_path, info.get("location", ""))
        size = os.path.getsize(real)
        if offset < 0 or (length is not None and length < 0) or offset > size or (
                length is not None and offset + length > size):
            raise UntrustedFileError(f"{where}: external data range {offset}+{length} lies outside its "
                                     f"{size}-byte file")
        with open(real, "rb") as f:
            f.seek(offset)
            data = f.read(size - offset if length is None else length)
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        count += 1
    return count
