"""Seeding for the whole project, so runs are reproducible: the global RNGs, and the seed of
one item's draw (selectors, Frame-Voyager collection, analyses)."""

import hashlib
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


def stable_hash(text: str) -> int:
    """A 63-bit integer hash of ``text`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def item_seed(seed: int, item_id: str) -> int:
    """Seed of one item's random draw: mixes the run seed with the item id, so a selection
    does not depend on which items came before it."""
    import numpy as np

    sequence = np.random.SeedSequence([int(seed) % 2**63, stable_hash(str(item_id))])
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)
