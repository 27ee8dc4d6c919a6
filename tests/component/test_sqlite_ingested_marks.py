"""SQLite marks envelopes in chunks (one multi-row INSERT ... RETURNING): redeliveries stay out at any size."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from roadside.cloud.storage.base import CountQuery
from roadside.cloud.storage.sqlite import SqliteStore
from tests.component.stores import T0, batch, count

WHOLE_DAY = CountQuery(start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), bucket_s=86400)


def test_a_large_write_with_redeliveries_across_chunks_stores_each_envelope_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ts.db")
    try:
        store.write([batch(seq, counts=[count(n=1)]) for seq in range(1, 301)])  # stored before
        # 1,200 envelopes in one write: every stored one again, each new one twice, one copy
        # on each side of the 500-row chunk boundary, and two devices with the same numbers.
        again = [batch(seq, counts=[count(n=1)]) for seq in range(1, 301)]
        fresh = [batch(seq, counts=[count(n=1)]) for seq in range(301, 601)]
        other = [batch(seq, device="pole-2", counts=[count(n=1)]) for seq in range(1, 301)]
        store.write(again + fresh[:200] + fresh + other + fresh[200:])
        assert sum(b.count for b in store.count_buckets(WHOLE_DAY)) == 900
        assert store.recent_sequences("pole-1", 1000) == list(range(1, 601))
        assert store.recent_sequences("pole-2", 1000) == list(range(1, 301))
        store.write(again + fresh + other)  # all of it once more: nothing new
        assert sum(b.count for b in store.count_buckets(WHOLE_DAY)) == 900
    finally:
        store.close()
