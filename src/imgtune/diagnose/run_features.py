"""The pretrained backbone's pooled features of any images, as a run's head stage saw them: from the
feature cache (a run's own images are there already), extracted for the rest."""

from __future__ import annotations

import numpy as np

from ..cache.features import FeatureCache, default_cache_dir, extract_features
from ..errors import RunFolderError
from ..model.backbones import create_backbone
from ..progress import Reporter
from ..train.selection import Candidate


def frozen_features(trained, paths: list[str], *, cache_dir=None, reporter: Reporter | None = None
                    ) -> tuple[np.ndarray, dict[str, str], list[str | None]]:
    """-> (features [N, D] float32, NaN rows for files that do not decode; {bad path: reason}; the
    content digest of every path, None for unreadable files)."""
    backbone = create_backbone(trained.backbone, image_size=trained.data_config.image_size)
    wanted = trained.fit_info.get("weights")
    if wanted and wanted != backbone.weights_id:
        raise RunFolderError(f"The run was trained from backbone weights {wanted!r}, which imgtune cannot load "
                             f"again by name ({backbone.weights_id!r} is what {trained.backbone!r} gives): its "
                             "features cannot be reproduced.")
    cache = FeatureCache(cache_dir or default_cache_dir(), backbone)
    feats, bad, _, digests = extract_features(backbone, paths, cache, device=trained.device,
                                              reporter=reporter or Reporter(quiet=True))
    return feats, bad, digests


def head_candidate(trained) -> Candidate:
    """The run's head (its L2 strength and class weighting) as the head selection chose it; for a run
    without a selection (the seed recipe's trained head), scikit-learn's default C=1."""
    chosen = (trained.fit_info.get("head_selection") or {}).get("candidate")
    return Candidate(float(chosen["c"]), chosen["weighting"]) if chosen else Candidate(1.0)
