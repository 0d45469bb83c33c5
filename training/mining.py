"""What the matcher trains on: each query's global top-k candidates, and which of them are true.

The service reranks the global top-k, so the matcher learns to order exactly that: the
candidates are mined once from the frozen backbone's global vectors. A caption often
fits several images (identical captions, or the same caption up to case, punctuation
and articles); those images are positives, never negatives — hardest-negative mining
would otherwise pick exactly them.

A caption can also be true of an image without being equivalent to any of its captions:
"a red circle" is true of every image described as "a red circle left of a blue square".
With `--skip-implied` such pairs are left out of the losses (neither positive nor negative, `Candidates.unsure`):
labelling them negatives teaches the matcher distinctions that are not there.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_ARTICLES = {"a", "an", "the"}
_WORD = re.compile(r"\w+")
_NEGATIONS = ("not", "no", "without", "never", "nor", "none", "nothing", "nobody", "neither")
# between two kept words: at most one dropped word, never a negation, never across two captions ("|")
_SKIP = " (?:(?!(?:" + "|".join(_NEGATIONS) + r") )[^\s|]+ )?"
_NOT_NEGATED = "".join(f"(?<! {n})" for n in _NEGATIONS)  # "no red circle" does not imply "red circle"


def normalise_caption(text: str) -> str:
    """Case, punctuation, spacing and articles removed: captions equal under this say the same thing."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
    return " ".join(w for w in words if w not in _ARTICLES)


class Truth:
    """Which (image, caption) pairs are true: the caption, or an equivalent one, belongs to the image."""

    def __init__(self, txt_img: torch.Tensor, texts: Sequence[str]) -> None:
        self.txt_img = txt_img
        norm = [normalise_caption(t) for t in texts]
        ids: dict[str, int] = {}  # one group per caption; equivalent captions share it
        self.groups = torch.tensor([ids.setdefault(n, len(ids)) for n in norm], dtype=torch.long)
        self.n_groups = int(self.groups.max()) + 1 if len(self.groups) else 1
        # each image's caption groups as sorted keys image·G + group, for vectorised membership tests
        self.keys = torch.unique(txt_img * self.n_groups + self.groups)
        self._phrase = [f" {n} " for n in norm]
        described: dict[int, list[str]] = {}
        for n, i in zip(norm, txt_img.tolist(), strict=True):
            described.setdefault(i, []).append(f" {n} ")
        self._described = {i: "|".join(ns) for i, ns in described.items()}

    def matches(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Broadcasting image and caption indices → bool, True where the pair is a true match."""
        probe = images * self.n_groups + self.groups[captions]
        if len(self.keys) == 0:
            return torch.zeros(probe.shape, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, probe.contiguous()).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == probe

    def implied(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Broadcasting image and caption indices → bool, True where the caption can be read out of one of the
        image's own captions by dropping words: any before and after, and single words in between
        (articles and punctuation aside).

        Dropping a modifier or cutting out a phrase keeps a description true ("large red circle left of
        small blue square" → "red circle left of blue square", "red circle"), and allowing only single
        words in between keeps each word next to the words it binds to: "red square" cannot be read out of
        "red circle left of blue square". Negations are never dropped, nor is a negated phrase read out. It
        is a lower bound of what is true, from the captions alone, for any dataset whose captions describe
        what is in the picture.
        """
        images, captions = torch.broadcast_tensors(images, captions)
        pairs = torch.stack([images.flatten(), captions.flatten()], dim=1)
        uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
        patterns: dict[int, re.Pattern[str]] = {}
        hit = torch.tensor([bool(self._pattern(t, patterns).search(self._described.get(i, "")))
                            for i, t in uniq.tolist()], dtype=torch.bool)
        return hit[inv].view(images.shape)

    def _pattern(self, caption: int, cache: dict[int, re.Pattern[str]]) -> re.Pattern[str]:
        g = int(self.groups[caption])
        if g not in cache:
            words = self._phrase[caption].split()
            cache[g] = re.compile(_NOT_NEGATED + " " + _SKIP.join(re.escape(w) for w in words) + " ")
        return cache[g]


@dataclass
class Candidates:
    """Per query, its mined candidates [Q, C] and which of them are true matches [Q, C]."""

    index: torch.Tensor  # long, candidate indices (images for caption queries, captions for image queries)
    positive: torch.Tensor  # bool
    unsure: torch.Tensor  # bool: not a positive, yet the caption is implied by the image (Truth.implied);
    # all False unless mined with implied=True

    def __len__(self) -> int:
        return self.index.shape[0]

    def draw(self, rows: torch.Tensor, size: int, generator: torch.Generator | None = None) -> Candidates:
        """Rows `rows`, each cut to `size` candidates: its first size//2 (the global ranking's hardest) and the
        rest drawn at random from the remainder of its list, so that a list mined as deep as the service
        reranks is seen whole over the steps. A row whose draw holds no positive gets its first positive in
        the last slot (mining put one in every list)."""
        index, positive, unsure = self.index[rows], self.positive[rows], self.unsure[rows]
        depth = index.shape[1]
        if size >= depth:
            return Candidates(index, positive, unsure)
        head = size // 2
        tail = torch.rand(len(rows), depth - head, generator=generator).argsort(dim=1)[:, :size - head] + head
        cols = torch.cat([torch.arange(head).expand(len(rows), head), tail], dim=1)
        lacking = ~positive.gather(1, cols).any(dim=1)
        cols[lacking, -1] = positive[lacking].float().argmax(dim=1)
        return Candidates(index.gather(1, cols), positive.gather(1, cols), unsure.gather(1, cols))


def _topk_chunked(q: torch.Tensor, c: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    k = min(k, c.shape[0])
    return torch.cat([(q[lo:lo + chunk] @ c.T).topk(k, dim=1).indices for lo in range(0, q.shape[0], chunk)])


def mine(img_glob: torch.Tensor, txt_glob: torch.Tensor, truth: Truth, k: int,
         implied: bool = False) -> tuple[Candidates, Candidates]:
    """(caption → its top-k images, image → its top-k captions) by global cosine, the ground truth always included.

    The ground truth takes the last slot when the global top-k missed it, so every query has a positive.
    `implied` marks the `unsure` candidates; it is off unless asked for because it matches a pattern per
    mined pair (mining 50 000 captions × 16 candidates: 3 s without, 46 s with, on 2 CPU cores; the default
    candidate pool mines 100 deep, about 6× that).
    """
    txt_img = truth.txt_img
    n_img = img_glob.shape[0]
    t2i = _topk_chunked(txt_glob.float(), img_glob.float(), k)  # [Nt, k]
    missing = ~(t2i == txt_img[:, None]).any(dim=1)
    t2i[missing, -1] = txt_img[missing]
    t2i_pos = truth.matches(t2i, torch.arange(len(txt_img))[:, None])
    t2i_unsure = (truth.implied(t2i, torch.arange(len(txt_img))[:, None]) & ~t2i_pos if implied
                  else torch.zeros_like(t2i_pos))

    i2t = _topk_chunked(img_glob.float(), txt_glob.float(), k)  # [Ni, k]
    own = txt_img[i2t] == torch.arange(n_img)[:, None]
    first_caption = torch.full((n_img,), -1, dtype=torch.long)
    first_caption[txt_img.flip(0)] = torch.arange(len(txt_img) - 1, -1, -1)  # one caption of each image
    lacking = ~own.any(dim=1) & (first_caption >= 0)
    i2t[lacking, -1] = first_caption[lacking]
    i2t_pos = truth.matches(torch.arange(n_img)[:, None], i2t)
    i2t_unsure = (truth.implied(torch.arange(n_img)[:, None], i2t) & ~i2t_pos if implied
                  else torch.zeros_like(i2t_pos))
    return Candidates(t2i, t2i_pos, t2i_unsure), Candidates(i2t, i2t_pos, i2t_unsure)


def bow_neighbours(captions: Sequence[Sequence[str]], k: int, chunk: int = 2048) -> torch.Tensor:
    """[N, k]: for each image, the k other images whose captions use the most similar words (tf-idf cosine).

    Images described with the same words in another arrangement — swapped colours, swapped positions —
    are exactly the pairs a bag-of-words global vector confuses; training batches that put them together
    make the model tell them apart. Nothing here knows the dataset's vocabulary or grammar.
    """
    n = len(captions)
    k = max(0, min(k, n - 1))
    if k == 0:
        return torch.zeros(n, 0, dtype=torch.long)
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, caps in enumerate(captions):
        words = {vocab.setdefault(w, len(vocab)) for c in caps for w in normalise_caption(c).split()}
        rows += [i] * len(words)
        cols += sorted(words)
    r, c = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    df = torch.bincount(c, minlength=len(vocab)).double()
    idf = (torch.log((1 + n) / (1 + df)) + 1).float()
    vals = idf[c]
    norms = torch.zeros(n).index_add_(0, r, vals * vals).sqrt().clamp(min=1e-6)
    x = torch.sparse_coo_tensor(torch.stack([r, c]), vals / norms[r], (n, len(vocab)),
                                check_invariants=True).coalesce()
    xt = x.t().to_dense() if n * len(vocab) <= 50_000_000 else x.t().coalesce()
    out = []
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        sims = torch.sparse.mm(x.index_select(0, torch.arange(lo, hi)), xt)
        sims = sims.to_dense() if sims.is_sparse else sims
        sims[torch.arange(hi - lo), torch.arange(lo, hi)] = -1.0  # never its own neighbour
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)
