"""Per-frame trust: does this frame look like what the model was trained on, and does its
output explain its input? (issue 17)

* :mod:`.features` (pure numpy/scipy): cheap statistics of an input frame and of its output;
* :mod:`.calibration`: their in-domain distribution, stored in the model folder (``trust.json``)
  and tied to the weights' sha256, so a re-trained or re-exported model is never scored against
  another model's calibration;
* :mod:`.score`: :class:`TrustScorer`, what the frame runner calls: a frame's features against
  the calibration -> :class:`FrameTrust` (a score in [0, 1] and whether it passes);
* :mod:`.calibrate`: run a model over in-domain frames and write the calibration.
"""

from __future__ import annotations

from cyclesr_deploy.trust.score import FrameTrust, TrustScorer

__all__ = ["FrameTrust", "TrustScorer"]
