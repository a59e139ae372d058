"""The recorder's writer on SQLite: CPU per stored row as the tables grow, by id kind and settings.

    .venv/bin/python bench/bench_writer.py [--sizes 10000,100000] [--batches 10] [--rounds 3]

For each table size, a fresh SQLite file (made by the app's own create_app and
create_all, so every connection gets the app's settings) is filled to that many
rows, then `recorder.write_batch` stores batches of 1,000 records (RECORDER_BATCH_ROWS)
and this process's CPU time per row is reported. Side by side, in one run:

  uuid7, app settings      what the app does: time-ordered ids (titanic_web/ids.py)
  uuid4, app settings      random ids, which land anywhere in the two uuid indexes
  uuid4, SQLite defaults   random ids without the app's page cache and checkpoint interval

Each configuration is measured in `--rounds` rounds, interleaved; the median is printed.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench.run_http import PASSENGER  # noqa: E402  (the one-passenger body the HTTP benchmark posts)

BATCH = 1000
FEATURES = {
    "Pclass": 3.0,
    "Age": 34.5,
    "SibSp": 0.0,
    "Parch": 0.0,
    "FamilySize": 1.0,
    "IsAlone": 1.0,
    "CabinKnown": 0.0,
    "Fare": 7.8292,
    "FarePerPerson": 7.8292,
    "TicketGroupSize": 1.0,
    "WCGroupLived": 0.0,
    "WCGroupDied": 0.0,
    "Sex": "male",
    "Title": "Mr",
    "Deck": "U",
    "Embarked": "Q",
}
CONFIGS = {
    "uuid7, app settings": ("uuid7", False),
    "uuid4, app settings": ("uuid4", False),
    "uuid4, SQLite defaults": ("uuid4", True),
}


def records(count: int, kind: str) -> list[Any]:
    from titanic_web.ids import new_ids
    from titanic_web.recorder import Record, parse_fields

    ids = new_ids(count) if kind == "uuid7" else [uuid.uuid4().hex for _ in range(count)]
    now = datetime.now(UTC)
    return [
        parse_fields(
            Record(
                id=uuid.UUID(hex=hex_id),
                passenger_id=892,
                survived=0,
                probability=0.075,
                model_version="524812a58437",
                source="api",
                features=FEATURES,
                raw_input=PASSENGER,
                created_at=now,
                request_id=uuid.uuid4().hex,
                latency_ms=1.25,
            ).to_fields()
        )
        for hex_id in ids
    ]


def measure(size: int, kind: str, defaults: bool, batches: int, work: Path) -> float:
    """CPU microseconds per row of `batches` batches into a table already holding `size` rows."""
    from sqlalchemy import event

    from titanic_web import create_app
    from titanic_web.extensions import db
    from titanic_web.recorder import write_batch

    path = work / f"{kind}-{defaults}-{size}-{time.monotonic_ns()}.db"
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}", "SECRET_KEY": "bench-writer", "RECORDING": True})
    with app.app_context():
        db.create_all()
        if defaults:

            @event.listens_for(db.engine, "connect")
            def _sqlite_defaults(connection: Any, _record: Any) -> None:
                connection.execute("PRAGMA cache_size=-2000")
                connection.execute("PRAGMA wal_autocheckpoint=1000")

            db.engine.dispose()
        for _ in range(size // BATCH):
            write_batch(db.session(), records(BATCH, kind))
        prepared = [records(BATCH, kind) for _ in range(batches)]
        started = time.process_time()
        for batch in prepared:
            write_batch(db.session(), batch)
        seconds = time.process_time() - started
        db.session.remove()
        db.engine.dispose()
    path.unlink(missing_ok=True)
    return seconds / (batches * BATCH) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="rows in the table before measuring [10000,100000]")
    parser.add_argument("--batches", type=int, default=10, help="batches of 1,000 rows measured [10]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
    args = parser.parse_args(argv)
    sizes = [int(text) for text in args.sizes.split(",")]
    os.environ.setdefault("MODEL_DIR", str(PROJECT / "model" / "registry"))
    import logging

    logging.disable(logging.INFO)  # the app's start-up lines
    print(
        f"# the recorder's writer on SQLite: CPU per row, batches of {BATCH}, {args.batches} batches, "
        f"{args.rounds} rounds; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="titanic-bench-writer-") as folder:
        work = Path(folder)
        figures = {(size, name): [] for size in sizes for name in CONFIGS}
        for _ in range(args.rounds):
            for size in sizes:
                for name, (kind, defaults) in CONFIGS.items():
                    figures[size, name].append(measure(size, kind, defaults, args.batches, work))
    for size in sizes:
        print(f"\ntable of {size:,} rows")
        base = statistics.median(figures[size, "uuid7, app settings"])
        for name in CONFIGS:
            value = statistics.median(figures[size, name])
            spread = ", ".join(f"{v:.1f}" for v in figures[size, name])
            print(f"  {name:<24} {value:6.1f} us/row  ({value / base:.1f}x uuid7; rounds {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
