"""Near-duplicate detection: MinHash signatures of word shingles, indexed with LSH
(datasketch). Used by the `near_dedupe` step and by prepare's leakage check.

Two texts are near duplicates when the Jaccard similarity of their sets of `shingle`-word
shingles (lowercased, whitespace-split words) is at least `threshold`, as estimated by
MinHash with `num_perm` permutations (the share of equal signature slots). LSH bands are
tuned for recall (false negatives weighted 0.95), and every candidate is then checked
against the threshold with its stored signature, so LSH's loose bands cost time, not
false drops. Pairs right at the threshold may go either way (the estimate's standard
error is ~sqrt(J(1-J)/num_perm), 0.035 at J=0.8 with 128 permutations). The index lives in
memory: num_perm x 4 bytes per indexed text plus the LSH buckets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_tune_cli.optional import require

MINHASH_SEED = 1  # fixed: the same text always gets the same signature


def shingles(text: str, size: int) -> set[bytes]:
    """The set of `size`-word shingles (one shingle of all words when shorter)."""
    words = text.lower().split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def minhash(text: str, size: int, num_perm: int) -> Any:
    datasketch = require("datasketch", "near-duplicate detection (near_dedupe, data.leakage)")
    m = datasketch.MinHash(num_perm=num_perm, seed=MINHASH_SEED)
    m.update_batch(list(shingles(text, size)))
    return m


class NearIndex:
    """An LSH index of MinHash signatures: `seen(text)` answers whether a near duplicate
    of `text` was added before; `add` indexes it under a key."""

    def __init__(self, threshold: float, shingle: int, num_perm: int = 128):
        datasketch = require("datasketch", "near-duplicate detection (near_dedupe, data.leakage)")
        self.shingle, self.num_perm, self.threshold = shingle, num_perm, threshold
        self.lsh = datasketch.MinHashLSH(
            threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95)
        )
        self.signatures: dict[Any, np.ndarray] = {}
        self.size = 0

    def signature(self, text: str) -> Any:
        return minhash(text, self.shingle, self.num_perm)

    def query(self, signature: Any) -> list[Any]:
        """Indexed keys whose estimated Jaccard with `signature` reaches the threshold."""
        mine = signature.hashvalues
        return [
            key
            for key in self.lsh.query(signature)
            if np.mean(self.signatures[key] == mine) >= self.threshold
        ]

    def add(self, key: Any, signature: Any) -> None:
        self.lsh.insert(key, signature, check_duplication=False)
        # MinHash values are < 2^32 (datasketch's max_hash): 4 bytes each.
        self.signatures[key] = signature.hashvalues.astype(np.uint32)
        self.size += 1
