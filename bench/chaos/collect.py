"""Thin adapters that collect record identities for the ledger, at both ends.

Outbox side: before an agent first starts, :func:`instrument_outbox` adds a
trigger to its outbox that notes every message put (seq, kind, how many records)
in a side table, in the same transaction as the put. So what the ledger calls
created is exactly what the agent promised to deliver, even when the agent is
killed a microsecond later, and it stays known after the message is acknowledged
and deleted. A message the disk budget drops is named in the agent's log.

Store side: the hub's SQLite store keeps each record under (device, seq, idx);
its dead-letter store keeps each refused message, whose envelope header names
the device and seq without any key.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from bench.chaos.ledger import Ledger, RecordId
from roadside.edge.outbox.sqlite import Outbox
from roadside.shared.compact import decode_counts
from roadside.shared.envelope import parse
from roadside.shared.errors import RoadsideError

# Messages holding a list of records; a health message is one record (index 0). Counts in the
# compact form (ADR 0033) are kept whole and counted in Python: SQL cannot walk their string table.
_TRIGGER = """
CREATE TABLE IF NOT EXISTS chaos_created (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, records INTEGER NOT NULL, compact BLOB
);
CREATE TRIGGER IF NOT EXISTS chaos_note_created AFTER INSERT ON outbox BEGIN
  INSERT OR REPLACE INTO chaos_created (seq, kind, records, compact) VALUES (
    NEW.seq,
    NEW.kind,
    CASE
      WHEN NEW.kind = 'health' THEN 1
      WHEN NEW.kind IN ('counts', 'events', 'sensors') AND json_valid(CAST(NEW.payload AS TEXT))
        THEN COALESCE(json_array_length(CAST(NEW.payload AS TEXT), '$.records'), 0)
      ELSE 0
    END,
    CASE WHEN NEW.kind = 'counts' AND substr(NEW.payload, 1, 1) = X'00' THEN NEW.payload END);
END;
"""
_DROPPED = re.compile(rb"outbox full: dropped \w+ message (\d+)")
_NOT_QUEUED = re.compile(rb"outbox disk full: \w+ message not queued")
_RECORD_TABLES = ("counts", "events", "sensors")


def instrument_outbox(path: Path) -> None:
    """Create the agent's outbox as the agent would, and add the ledger's trigger to it."""
    Outbox(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_TRIGGER)


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield db
    finally:
        db.close()


def created_messages(outbox: Path) -> list[tuple[int, str, int]]:
    """(seq, kind, records) of every message the agent ever put in ``outbox``."""
    with _read_only(outbox) as db:
        rows = db.execute("SELECT seq, kind, records, compact FROM chaos_created").fetchall()
    return [(int(s), str(k), int(n) if c is None else len(decode_counts(bytes(c)))) for s, k, n, c in rows]


def backlog(outbox: Path) -> int:
    """Messages still queued (not yet acknowledged by the broker)."""
    with _read_only(outbox) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def dropped_seqs(agent_log: Path) -> set[int]:
    """Messages the outbox's disk budget deleted unsent, as the agent logged them."""
    if not agent_log.exists():
        return set()
    return {int(m.group(1)) for m in _DROPPED.finditer(agent_log.read_bytes())}


def not_queued(agent_log: Path) -> int:
    """New messages the agent could not queue because its disk was full (never numbered, so
    never in the ledger: the loss a full disk costs, counted by the agent)."""
    return len(_NOT_QUEUED.findall(agent_log.read_bytes())) if agent_log.exists() else 0


_THREAD_DIED = re.compile(rb"Exception in thread ([\w.-]+)")


def dead_threads(log: Path) -> list[str]:
    """Threads a process's log shows dying of an uncaught exception (Python's own report):
    a part that stopped working while its process stayed up."""
    if not log.exists():
        return []
    return [m.group(1).decode() for m in _THREAD_DIED.finditer(log.read_bytes())]


def stored_records(telemetry_db: Path) -> Iterator[RecordId]:
    """Every record row in the hub's SQLite store (repeats, if any could exist, included)."""
    if not telemetry_db.exists():
        return
    with _read_only(telemetry_db) as db:
        for table in _RECORD_TABLES:
            for device, seq, idx in db.execute(f"SELECT device_id, seq, idx FROM {table}"):  # noqa: S608 (constant names)
                yield RecordId(str(device), int(seq), int(idx))
        for device, seq in db.execute("SELECT device_id, seq FROM health"):
            yield RecordId(str(device), int(seq), 0)


def influx_ingest_marks(url: str, database: str) -> list[tuple[str, int, int]]:
    """(device, seq, records) of every envelope an InfluxDB 1.x store holds: its ``ingest``
    measurement keeps one mark per envelope with the number of points written for it."""
    query = urllib.parse.urlencode({"db": database, "q": 'SELECT "device", "seq", "records" FROM "ingest"'})
    try:
        with urllib.request.urlopen(f"{url}/query?{query}", timeout=10) as response:  # noqa: S310 (our URL)
            body = json.load(response)
    except (OSError, ValueError):
        return []  # the store is down: nothing seen now
    marks: list[tuple[str, int, int]] = []
    for result in body.get("results", []):
        for series in result.get("series", []):
            for _time, device, seq, records in series.get("values", []):
                marks.append((str(device), int(seq), int(records)))
    return marks


def stored_messages(telemetry_db: Path) -> set[tuple[str, int]]:
    """(device, seq) of every envelope the hub committed."""
    if not telemetry_db.exists():
        return set()
    with _read_only(telemetry_db) as db:
        return {(str(d), int(s)) for d, s in db.execute("SELECT device_id, seq FROM ingested")}


def rejected_messages(dead_letters_db: Path) -> tuple[list[tuple[str, int, str]], int]:
    """(device, seq, reason) of each dead letter whose header parses, and how many did not."""
    if not dead_letters_db.exists():
        return [], 0
    found: list[tuple[str, int, str]] = []
    unattributed = 0
    with _read_only(dead_letters_db) as db:
        for reason, payload in db.execute("SELECT reason, payload FROM dead_letters"):
            try:
                header = parse(bytes(payload or b"")).header
            except RoadsideError:
                unattributed += 1
                continue
            found.append((header.device_id, header.seq, str(reason)))
    return found, unattributed


def fill_ledger(
    ledger: Ledger, agents: dict[str, tuple[Path, Path]], stored: Iterable[RecordId], dead_letters_db: Path
) -> int:
    """Collect both ends into ``ledger``; ``agents`` maps device to (outbox, agent log),
    ``stored`` is every record the store holds.

    Returns how many dead letters could not be attributed to a device and seq.
    """
    for device, (outbox, log) in agents.items():
        for seq, _kind, records in created_messages(outbox):
            ledger.created(device, seq, records)
        for seq in dropped_seqs(log):
            ledger.dropped(device, seq)
    for record in stored:
        ledger.stored(record)
    rejected, unattributed = rejected_messages(dead_letters_db)
    for device, seq, reason in rejected:
        ledger.rejected(device, seq, reason)
    return unattributed
