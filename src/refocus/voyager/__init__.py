"""Frame-Voyager (Yu et al., ICLR 2025) as a trained baseline for ReFoCUS.

Frame-Voyager ranks T-frame combinations of a video by a frozen Video-LLM's loss on the answer
and trains a model to query the low-loss combinations. Here the frozen model is the same
reference model that rewards ReFoCUS, and the trained model is the same policy (vision tower,
projector, Mamba2 backbone, K/Q/V heads), so the two differ only in their supervision:
ranking labels collected up front versus reinforcement learning on sampled subsets.

- :mod:`refocus.voyager.collect`: ``collect_rankings`` / ``run_collect`` (``refocus voyager collect``)
- :mod:`refocus.voyager.ranking`: pure math (reference loss, preference pairs, RankNet loss)
- :mod:`refocus.voyager.model`: how the policy scores a combination, and its best combination
- :mod:`refocus.voyager.train`: ``train_voyager`` (``refocus voyager train``) and ``run_voyager``
  (collect + train in one call, with a reference-call budget)
- the ``voyager:DIR`` selector: :mod:`refocus.selectors.voyager`

Import the sub-modules directly; this package imports only the (torch-free) configs.
"""

from refocus.voyager.config import CollectConfig, VoyagerConfig, load_voyager_config

__all__ = ["CollectConfig", "VoyagerConfig", "load_voyager_config"]
