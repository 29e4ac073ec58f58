"""Occlusion sensitivity (PAPER.md section 5, Zeiler & Fergus Fig. 7).

A square of a fill value slides over the image; for every position of the square zfprobe records

(b) the total activation (summed over space) of the feature map of ``layer`` that is strongest on
    the unoccluded image,
(d) the probability of the target class (the given label, else the top-1 class of the unoccluded
    image),
(e) the most probable class,

and (c) projects that strongest feature map of the unoccluded image to pixel space with the
deconvnet.

Positions: the square's top-left corners lie on a grid ``0, stride, 2*stride, ...`` in each
direction, as long as the square fits; when the stride does not divide ``size - image``, one last
position flush with the bottom / right border is added, so every pixel is covered and the square
never leaves the image.

Probabilities: a graph output produced by ``Softmax`` is used as is; otherwise the first graph
output is taken as logits and ``softmax`` is applied to it (flattened per image). A model whose
first output is not a class vector (at least 2 values per image) has no class output: the
probability and label maps are refused with :class:`NoClassOutputError`, the activation map
still works.

Two exact ways to compute the maps (``method``):

``plain``
    builds every occluded image and runs the whole network on batches of them.
``incremental`` (the default through ``auto``)
    Krypton-style incremental inference (Nakandala et al., SIGMOD 2019). The network's first
    layers form a chain of spatially local ops (Conv, pooling, LRN, BatchNorm, element-wise
    ops). Each occluded image differs from the original only inside the square, so at each of
    these layers only a window around the square changes. zfprobe computes the original
    activations once; then for each position it recomputes, layer by layer, only the affected
    window: the layer's input window is cut from the cached original map (padded with the op's
    pad value where it leaves the map) with the previous layer's new window pasted in, and the
    op runs on it without padding. The last window is pasted into the cached map and the rest
    of the network runs on the batch as usual. Every op is the model's own op run by the
    probe's backend, so the result equals the plain computation up to float rounding. How far
    the incremental part goes is chosen by a cost model (multiply-adds of the windows plus copy
    costs against the full layers).
"""
from __future__ import annotations

from zfprobe.studies.occlusion.engine import Engine, build_engine, run_engine
from zfprobe.studies.occlusion.maps import occlude, occlusion_maps
from zfprobe.studies.occlusion.options import (FILLS, METHODS, POSITION_NOTE, PROBABILITY_NOTE, ClassOutput,
                                       NoClassOutputError, check_geometry, class_output, fill_values, positions)
from zfprobe.studies.occlusion.plan import LocalOp, local_chain, multiply_adds
from zfprobe.studies.occlusion.result import OcclusionResult

__all__ = ["Engine", "build_engine", "run_engine", "occlude", "occlusion_maps", "FILLS",
           "METHODS", "POSITION_NOTE", "PROBABILITY_NOTE", "ClassOutput", "NoClassOutputError", "check_geometry",
           "class_output", "fill_values", "positions", "LocalOp", "local_chain", "multiply_adds", "OcclusionResult"]
