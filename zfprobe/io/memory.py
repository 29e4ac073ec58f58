"""Memory budgets, one definition each: how many bytes of arrays one batch of each job may hold.
Batches are sized from these, so memory stays bounded however many images or positions a run has."""
from __future__ import annotations

MiB = 1024**2

PROJECTION_MEMORY_BUDGET = 2048 * MiB   # one batch of seeds through a reversal program
BATCH_BUDGET = 256 * MiB                # activations of one mining / invariance batch
FEATURES_MEMORY_LIMIT = 4096 * MiB      # features one extraction may hold in memory
OCCLUSION_MEMORY_BUDGET = 512 * MiB     # one batch of occluded positions
