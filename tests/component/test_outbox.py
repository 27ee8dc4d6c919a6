"""The outbox on a real disk: order, acks, the disk budget, and kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from roadside.edge.outbox import Outbox, Priority, QueuedMessage, choose_drops


def test_order_ack_and_sequence_numbers_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.put("counts", f"m{i}".encode(), Priority.COUNTS)
    items = box.pending(10)
    assert [i.payload for i in items] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [i.seq for i in items] == sorted(i.seq for i in items)
    for item in items:
        box.ack(item.seq)
    box.close()
    reopened = Outbox(tmp_path / "o.db")
    reopened.put("counts", b"after", Priority.COUNTS)
    (item,) = reopened.pending(10)
    assert item.seq > items[-1].seq  # never reused, even after every row was deleted


def test_pending_skips_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for _ in range(3):
        assert box.put("events", b"e", Priority.EVENTS) == 0  # nothing had to be dropped
    first = box.pending(3)
    assert [i.seq for i in box.pending(3, exclude={first[0].seq})] == [first[1].seq, first[2].seq]


def test_a_put_after_the_waiter_looked_ends_its_wait(tmp_path: Path) -> None:
    """The uplink reads ``puts``, looks at the queue, then waits: a put in between must not be
    left waiting for the timeout (it held an event up to 0.2 s)."""
    outbox = Outbox(tmp_path / "o.db")
    seen = outbox.puts
    assert outbox.pending(10) == []  # the waiter looks: nothing yet
    outbox.put("events", b"e", Priority.EVENTS)  # ... and a message lands before it waits
    waiter = threading.Thread(target=outbox.wait, args=(600.0, seen))
    waiter.start()
    waiter.join(30)
    assert not waiter.is_alive(), "the wait should end at once: a message came after the look"
    assert outbox.puts == seen + 1
    outbox.close()


def test_budget_drops_lowest_priority_oldest_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=1024 * 1024)
    chunk = b"x" * (200 * 1024)
    box.put("events", chunk, Priority.EVENTS)
    box.put("health", chunk, Priority.HEALTH)
    box.put("counts", chunk, Priority.COUNTS)
    box.put("health", chunk, Priority.HEALTH)
    box.put("counts", chunk, Priority.COUNTS)  # 1000 KiB: fits
    dropped = box.put("events", chunk, Priority.EVENTS)  # needs room: the two health messages go
    assert dropped == 1
    kinds = [i.kind for i in box.pending(10)]
    assert kinds == ["events", "counts", "health", "counts", "events"]
    box.put("events", chunk, Priority.EVENTS)
    assert [i.kind for i in box.pending(10)] == ["events", "counts", "counts", "events", "events"]
    assert box.dropped == 2


def test_the_outbox_drops_what_the_rule_chooses(tmp_path: Path) -> None:
    """The SQL carries out ``choose_drops``: a model queue run by the rule alone ends the same."""
    budget = 20_000
    box = Outbox(tmp_path / "o.db", max_bytes=budget)
    model: list[QueuedMessage] = []
    rng = random.Random(10)
    most = 0
    for i in range(150):
        # Mostly small messages, now and then one big enough to need more than a page of drops.
        size = rng.randrange(8_000, 15_000) if i % 40 == 39 else rng.randrange(50, 400)
        priority = rng.choice(list(Priority))
        drops = choose_drops(model, sum(m.size for m in model), size, budget)
        assert box.put("k", bytes(size), priority) == len(drops)
        most = max(most, len(drops))
        model = [m for m in model if m not in drops]
        (item,) = [i for i in box.pending(1000) if i.seq not in {m.seq for m in model}]
        model.append(QueuedMessage(item.seq, priority, size))
        assert [i.seq for i in box.pending(1000)] == sorted(m.seq for m in model)
        assert box.size_bytes == sum(m.size for m in model) <= budget
    assert most > 16  # one put needed more candidates than the first page read


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from roadside.edge.outbox import Outbox, Priority, QueuedMessage, choose_drops
    box = Outbox(Path(sys.argv[1]))
    i = 0
    while True:
        box.put("counts", f"msg-{i}".encode(), Priority.COUNTS)
        print(i, flush=True)  # the put returned: it must survive
        i += 1
    """
)


def test_kill_9_loses_nothing_that_was_put(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    confirmed = -1
    for line in process.stdout:
        confirmed = int(line)
        if confirmed >= 300:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored = {item.payload for item in Outbox(db).pending(100_000)}
    assert {f"msg-{i}".encode() for i in range(confirmed + 1)} <= stored
