"""What a router trained on, so that it is judged only on prompts it never saw.

Next to a saved router, `training_prompts.npz` holds the 8-byte fingerprints of its training prompts and the
version (content hash) of the weights they trained; a record for other weights than those in the folder is
stale and ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

TRAINING_PROMPTS_FILE = "training_prompts.npz"


def prompt_fingerprint(prompt: str) -> int:
    """An 8-byte blake2b hash of the stripped prompt text."""
    return int.from_bytes(hashlib.blake2b(prompt.strip().encode(), digest_size=8).digest(), "big")


def prompt_fingerprints(prompts: Iterable[str]) -> np.ndarray:
    """Sorted, unique fingerprints of prompts (uint64)."""
    return np.unique(np.array([prompt_fingerprint(p) for p in prompts], dtype=np.uint64))


def save_training_prompts(router_dir: Path, prompts: Iterable[str], version: str) -> None:
    """Record, next to a saved router, the fingerprints of the prompts it trained on and its version (a
    router's files replaced later by other weights make the record stale, and it is then ignored)."""
    np.savez(router_dir / TRAINING_PROMPTS_FILE, fingerprints=prompt_fingerprints(prompts), version=np.array(version))


def load_training_prompts(router_dir: Path, version: str) -> np.ndarray | None:
    """The fingerprints of a saved router's training prompts; None when unknown (no record, or a record made
    for other weights than `version`)."""
    file = router_dir / TRAINING_PROMPTS_FILE
    if not file.exists():
        return None
    with np.load(file, allow_pickle=False) as saved:
        if str(saved["version"]) != version:
            return None
        return saved["fingerprints"].astype(np.uint64)
