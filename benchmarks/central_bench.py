"""Synthetic till analytics files (N stores x M lanes x D days of receipts, items and band counts,
with a supermarket's hourly shape) and the central sync / report benchmark on them.

    python -m agetool.benchmarks.central_bench --stores 200 --lanes 10 --days 7 --db postgresql://...
    python -m agetool.benchmarks.central_bench --stores 1 --lanes 10 --days 1   # starts a throwaway server

Deterministic (seeded); only bands, counts and made-up receipts, nothing about anyone."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agetool.contract import BAND_NAMES, UNKNOWN_BAND

# Share of the day's receipts per opening hour (07:00-21:59 UTC): a late-morning bump, a lunch
# peak and the after-work peak.
HOURLY_SHAPE = {7: 2, 8: 4, 9: 5, 10: 6, 11: 8, 12: 10, 13: 8, 14: 6, 15: 6, 16: 8, 17: 11, 18: 10, 19: 7, 20: 5, 21: 3}
BAND_WEIGHTS = {"0-12": 0, "13-17": 2, "18-24": 10, "25-34": 20, "35-49": 26, "50-64": 20, "65+": 14, UNKNOWN_BAND: 8}
CATEGORIES = ("bread", "milk", "fruit", "vegetables", "meat", "fish", "cheese", "beer", "wine", "spirits",
              "crisps", "sweets", "coffee", "tea", "frozen", "cleaning", "baby", "pet", "tobacco", "ready_meals")
START_DAY = datetime(2026, 11, 2, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TillShape:
    lanes: int = 10
    days: int = 7
    receipts_per_lane_day: int = 72  # 200 stores x 10 lanes x 7 days x 72 = 1.0 M receipts
    mean_items: float = 4.0


def generate_till(path: Path, store_index: int, shape: TillShape, seed: int = 42) -> dict[str, int]:
    """Write one store's analytics file (the daemon's real schema); the rows written per table."""
    from agetool.edge_runtime.receipts import migrate, open_db

    rng = random.Random(seed * 1_000_003 + store_index)
    bands = list(BAND_WEIGHTS)
    band_weights = list(BAND_WEIGHTS.values())
    hours = list(HOURLY_SHAPE)
    hour_weights = list(HOURLY_SHAPE.values())
    receipts, items, counts = [], [], {}
    serial = 0
    for day in range(shape.days):
        day_start = START_DAY + timedelta(days=day)
        for lane_no in range(1, shape.lanes + 1):
            lane = f"till-{lane_no}"
            n = max(0, int(rng.gauss(shape.receipts_per_lane_day, shape.receipts_per_lane_day ** 0.5)))
            times = sorted(day_start + timedelta(hours=h, seconds=rng.randrange(3600))
                           for h in rng.choices(hours, hour_weights, k=n))
            for moment in times:
                serial += 1
                band = rng.choices(bands, band_weights)[0]
                receipt_id = f"S{store_index:04d}-{serial:08d}"
                n_items = max(1, min(40, int(rng.expovariate(1 / shape.mean_items)) + 1))
                lines = [(receipt_id, line, f"{rng.randrange(100000):05d}", rng.choice(CATEGORIES),
                          float(rng.randint(1, 3))) for line in range(1, n_items + 1)]
                items.extend(lines)
                hour = moment.strftime("%Y-%m-%dT%H:00Z")
                basis = "no_face" if band == UNKNOWN_BAND else "estimated"
                receipts.append((receipt_id, lane, moment.strftime("%Y-%m-%dT%H:%M:%SZ"), hour, band,
                                 None if band == UNKNOWN_BAND else 0.75, basis, rng.randint(150, 12000), n_items,
                                 f"{serial:064x}"))
                if band != UNKNOWN_BAND:  # a shopper with a face is counted; a few without a receipt too
                    key = (hour, lane, band)
                    counts[key] = counts.get(key, 0) + (2 if rng.random() < 0.1 else 1)
    partial = path.with_name(f".{path.name}.partial")  # renamed when complete: a killed run leaves no half file
    partial.unlink(missing_ok=True)
    db = open_db(partial)
    try:
        migrate(db, str(partial))
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        db.executemany("INSERT INTO receipts (receipt_id, lane, recorded_at_utc, hour_utc, band, band_confidence, "
                       "band_basis, total_cents, n_items, body_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", receipts)
        db.executemany("INSERT INTO receipt_items (receipt_id, line, sku, category, quantity) VALUES (?, ?, ?, ?, ?)",
                       items)
        db.executemany("INSERT INTO band_counts (hour_utc, lane, band, shoppers) VALUES (?, ?, ?, ?)",
                       [(*key, n) for key, n in counts.items()])
        db.execute("COMMIT")
    finally:
        db.close()
    partial.replace(path)
    return {"receipts": len(receipts), "receipt_items": len(items), "band_counts": len(counts)}


def generate_chain(folder: Path, stores: int, shape: TillShape, seed: int = 42) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for store in range(stores):
        path = folder / f"store-{store:04d}.sqlite"
        if not path.exists():
            generate_till(path, store, shape, seed)
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> dict[str, object]:
    from agetool.edge_runtime.central_db import CentralTarget, migrate_central
    from agetool.edge_runtime.central_report import build_central_report
    from agetool.edge_runtime.central_sync import sync_till

    shape = TillShape(args.lanes, args.days, args.receipts_per_lane_day)
    started = time.perf_counter()
    paths = generate_chain(Path(args.work), args.stores, shape)
    generate_s = time.perf_counter() - started
    target = CentralTarget(args.db)
    migrate_central(target)
    total_rows = 0
    sync_s = 0.0
    first_till: dict[str, float] = {}
    for index, path in enumerate(paths):
        result = sync_till(target, path, f"store-{index:04d}", batch_rows=args.batch_rows, retries=0)
        sync_s += result.seconds
        total_rows += result.total_rows
        if index == 0:
            first_till = {"rows": result.total_rows, "seconds": round(result.seconds, 3)}
    import psycopg

    with psycopg.connect(args.db) as conn:
        receipts = conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
        items = conn.execute("SELECT COUNT(*) FROM receipt_items").fetchone()[0]
        counts = conn.execute("SELECT COUNT(*) FROM band_counts").fetchone()[0]
    report_s, sql_s = time_report(target, Path(args.work) / "chain-report")
    store_report_s, store_sql_s = time_report(target, Path(args.work) / "store-report", "store-0000")
    return {
        "stores": args.stores, "lanes": args.lanes, "days": args.days,
        "central_rows": {"receipts": receipts, "receipt_items": items, "band_counts": counts},
        "generate_s": round(generate_s, 1),
        "first_store_sync": first_till,
        "sync_s": round(sync_s, 2),
        "rows_per_s": round(total_rows / sync_s) if sync_s else None,
        "receipts_per_s": round(receipts / sync_s) if sync_s else None,
        "chain_report_s": round(report_s, 2),
        "chain_report_sql_s": round(sql_s, 2),
        "store_report_s": round(store_report_s, 2),
        "store_report_sql_s": round(store_sql_s, 2),
    }


def time_report(target: "object", out: Path, store: str | None = None) -> tuple[float, float]:
    """(seconds for the whole report: SQL, suppression, charts, files; seconds for its SQL alone)."""
    from agetool.edge_runtime.analytics_report import make_period
    from agetool.edge_runtime.central_db import connect
    from agetool.edge_runtime.central_report import build_central_report, query_tables

    started = time.perf_counter()
    build_central_report(target, out, store)  # type: ignore[arg-type]
    report_s = time.perf_counter() - started
    conn = connect(target)  # type: ignore[arg-type]
    try:
        started = time.perf_counter()
        query_tables(conn, make_period(None, None), store)
        sql_s = time.perf_counter() - started
    finally:
        conn.close()
    return report_s, sql_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=200)
    parser.add_argument("--lanes", type=int, default=10)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--receipts-per-lane-day", type=int, default=72)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--work", default="/tmp/agetool-central-bench", help="Where the till files are written.")
    parser.add_argument("--db", help="Central postgresql:// URL (an empty database); default: a throwaway server.")
    args = parser.parse_args(argv)
    cluster = None
    if args.db is None:
        from agetool.benchmarks.pg_throwaway import ThrowawayCluster

        cluster = ThrowawayCluster(fsync=True).init().start()
        args.db = cluster.url
    try:
        print(json.dumps(run(args), indent=2))
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
