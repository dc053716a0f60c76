"""One seeding function for the whole project, so runs are reproducible."""

import os
import random


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (if imported or importable) RNGs."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
