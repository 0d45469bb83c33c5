from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.tokenbank import BackboneMismatch, TokenBank


def _batch(n: int, length: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, length, dim, generator=torch.Generator().manual_seed(seed))


def test_round_trip_ragged_in_requested_order(tmp_path: Path) -> None:
    bank = TokenBank(tmp_path, 8, "fp")
    t = _batch(4, 6)
    lens = [6, 2, 0, 4]
    rows = bank.append(t, lens, ids=["a", "b", "c", "d"])
    assert len(set(rows.tolist())) == 4
    order = rows[[3, 0, 2, 1]]
    tok, mask = bank.gather(order)
    assert tok.dtype == torch.float16 and tok.shape == (4, 6, 8)
    assert mask.sum(1).tolist() == [4, 6, 0, 2]
    for out_i, in_i in enumerate([3, 0, 2, 1]):
        n = lens[in_i]
        torch.testing.assert_close(tok[out_i, :n], t[in_i, :n].half())
        assert torch.all(tok[out_i, n:] == 0)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_a_row_without_tokens_in_a_segment_without_tokens(tmp_path: Path, device: str | None) -> None:
    """A caption with no word tokens can be a segment of its own with no token at all; gathering it beside
    other rows (a search, compaction) reads nothing from it and gives zeros, not an IndexError."""
    bank = TokenBank(tmp_path, 8, "fp", device=device)
    empty = bank.append(_batch(1, 1), [0])
    full = bank.append(_batch(2, 3, seed=3), [3, 2])
    tok, mask = bank.gather(np.array([full[0], empty[0], full[1]]))
    assert mask.sum(1).tolist() == [3, 0, 2] and torch.all(tok[1] == 0)
    assert bank.compact()["rows_after"] == 3
    tok2, mask2 = bank.gather(np.array([full[0], empty[0], full[1]]))
    assert torch.equal(tok.cpu(), tok2.cpu()) and torch.equal(mask.cpu(), mask2.cpu())


def test_gather_across_segments_and_reopen(tmp_path: Path) -> None:
    bank = TokenBank(tmp_path, 8, "fp")
    r1 = bank.append(_batch(3, 5, seed=1), [5, 5, 5])
    r2 = bank.append(_batch(2, 3, seed=2), [3, 1])
    mixed = np.array([r2[1], r1[0], r2[0], r1[2]])
    tok, mask = bank.gather(mixed)
    reopened = TokenBank(tmp_path, 8, "fp")
    tok2, mask2 = reopened.gather(mixed)
    assert torch.equal(tok, tok2) and torch.equal(mask, mask2)
    resident = TokenBank(tmp_path, 8, "fp", device="cpu")
    tok3, mask3 = resident.gather(mixed)
    assert torch.equal(tok, tok3.cpu()) and torch.equal(mask, mask3.cpu())


def test_tombstones_hide_rows_and_survive_reopen(tmp_path: Path) -> None:
    bank = TokenBank(tmp_path, 8, "fp")
    rows = bank.append(_batch(3, 4), [4, 4, 4])
    bank.delete([rows[1]])
    assert rows[1] not in bank and len(bank) == 2
    with pytest.raises(KeyError, match=str(rows[1])):
        bank.gather([rows[1]])
    assert len(TokenBank(tmp_path, 8, "fp")) == 2


def test_compaction_keeps_row_ids_and_drops_dead_and_orphans(tmp_path: Path) -> None:
    bank = TokenBank(tmp_path, 8, "fp")
    rows = np.concatenate([bank.append(_batch(5, 4, seed=s), [4, 3, 2, 1, 4]) for s in range(3)])
    before, _ = bank.gather(rows)
    bank.delete([rows[0]])
    live = rows[1:-2]  # the last two are "orphans" nothing references
    stats = bank.compact(live.tolist())
    assert stats["rows_after"] == len(live) and stats["segments"] == 1
    assert stats["bytes_after"] < stats["bytes_before"]
    after, _ = bank.gather(live)
    torch.testing.assert_close(after, before[1:-2][:, : after.shape[1]])
    assert len(list(tmp_path.glob("seg-*.safetensors"))) == 1
    assert rows[-1] not in TokenBank(tmp_path, 8, "fp")


def test_two_writers_never_collide_and_readers_refresh(tmp_path: Path) -> None:
    a = TokenBank(tmp_path, 8, "fp")
    b = TokenBank(tmp_path, 8, "fp")
    ra = a.append(_batch(3, 2, seed=1), [2, 2, 2])
    rb = b.append(_batch(3, 2, seed=2), [2, 2, 2])
    assert not set(ra.tolist()) & set(rb.tolist())
    names = {p.name for p in tmp_path.glob("seg-*.safetensors")}
    assert len(names) == 2
    tok, _ = a.gather(rb)  # unknown rows trigger a refresh
    torch.testing.assert_close(tok, _batch(3, 2, seed=2).half())


def test_backbone_mismatch_is_refused(tmp_path: Path) -> None:
    TokenBank(tmp_path, 8, "fp-one")
    with pytest.raises(BackboneMismatch, match="fp-one"):
        TokenBank(tmp_path, 8, "fp-two")
    with pytest.raises(BackboneMismatch, match="8-d"):
        TokenBank(tmp_path, 16, "fp-one")


def test_a_torn_segment_write_is_invisible(tmp_path: Path) -> None:
    bank = TokenBank(tmp_path, 8, "fp")
    rows = bank.append(_batch(2, 2), [2, 2])
    (tmp_path / ".seg-w000009-00000000.safetensors.tmp").write_bytes(b"\x00" * 100)  # crash before rename
    fresh = TokenBank(tmp_path, 8, "fp")
    assert len(fresh) == 2
    fresh.gather(rows)
    fresh.compact()
    assert not list(tmp_path.glob(".seg-*.tmp"))


def test_bad_shapes_are_rejected(tmp_path: Path) -> None:
    bank = TokenBank(tmp_path, 8, "fp")
    with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
        bank.append(torch.zeros(2, 3, 4), [1, 1])
    with pytest.raises(ValueError, match="lengths"):
        bank.append(torch.zeros(2, 3, 8), [1, 4])


def test_gather_live_drops_rows_tombstoned_after_recall(tmp_path: Path) -> None:
    """The race a search meets: rows recalled, then deleted (or replaced) by another request, then gathered."""
    bank = TokenBank(tmp_path, 8, "fp")
    t = _batch(4, 3, seed=5)
    rows = bank.append(t, [3, 2, 3, 1])
    recalled = rows[[2, 0, 3, 1]]
    bank.delete([rows[0], rows[1]])  # a concurrent delete, after the recall
    tok, mask, kept = bank.gather_live(recalled)
    assert kept.tolist() == [0, 2]  # positions into `recalled`: rows[2] and rows[3] survive, in order
    torch.testing.assert_close(tok[0, :3], t[2].half())
    torch.testing.assert_close(tok[1, :1], t[3, :1].half())
    assert mask.sum(1).tolist() == [3, 1]
    # rows written by another writer after this reader opened are found after one refresh
    other = TokenBank(tmp_path, 8, "fp")
    new = other.append(_batch(1, 2, seed=6), [2])
    tok, mask, kept = bank.gather_live(np.array([new[0], rows[1]]))
    assert kept.tolist() == [0] and mask.sum().item() == 2
    # nothing live: an empty answer, not an error
    tok, mask, kept = bank.gather_live(np.array([rows[0]]))
    assert len(kept) == 0 and tok.shape[0] == 0
