"""The names of the reversal rules and LRN modes, stated once (PAPER.md; docs/methods.md).

``deconvnet`` rectifies the signal at every ReLU (Zeiler & Fergus), ``gradient`` masks it by the
forward activation (the gradient), ``guided`` does both (guided backprop). ``identity`` passes
the signal through LRN unchanged, as the paper does; ``gradient`` uses LRN's local derivative."""
from __future__ import annotations

DECONVNET, GRADIENT, GUIDED = "deconvnet", "gradient", "guided"
RULES = (DECONVNET, GRADIENT, GUIDED)
# chosen per layer from the path to the input (zfprobe.engine.rule_choice): guided backprop where no
# max-pool switch ties the deconvnet to the image, the deconvnet otherwise
AUTO = "auto"
RULE_CHOICES = (AUTO,) + RULES
LRN_IDENTITY = "identity"
LRN_MODES = (LRN_IDENTITY, GRADIENT)
