"""Synthetic till analytics files (N stores x M lanes x D days of receipts, items and band counts,
with a supermarket's hourly shape) and the central sync / report benchmark on them.

    python -m agetool.benchmarks.central_bench --stores 200 --lanes 10 --days 7 --db postgresql://...
    python -m agetool.benchmarks.central_bench --stores 1 --lanes 10 --days 1   # starts a throwaway server
    python -m agetool.benchmarks.central_bench --stores 200 --concurrency 2      # two tills at a time

Without --db the throwaway server gets the settings README recommends for a centre (SERVER_SETTINGS)
and its CPU time is reported beside the client's, so a run on a shared machine still says what
each row cost.

Deterministic (seeded); only bands, counts and made-up receipts, nothing about anyone."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agetool.contract import BAND_NAMES, UNKNOWN_BAND
from agetool.edge_runtime.central_sync import DEFAULT_BATCH_ROWS

# Share of the day's receipts per opening hour (07:00-21:59 UTC): a late-morning bump, a lunch
# peak and the after-work peak.
HOURLY_SHAPE = {7: 2, 8: 4, 9: 5, 10: 6, 11: 8, 12: 10, 13: 8, 14: 6, 15: 6, 16: 8, 17: 11, 18: 10, 19: 7, 20: 5, 21: 3}
BAND_WEIGHTS = {"0-12": 0, "13-17": 2, "18-24": 10, "25-34": 20, "35-49": 26, "50-64": 20, "65+": 14, UNKNOWN_BAND: 8}
CATEGORIES = ("bread", "milk", "fruit", "vegetables", "meat", "fish", "cheese", "beer", "wine", "spirits",
              "crisps", "sweets", "coffee", "tea", "frozen", "cleaning", "baby", "pet", "tobacco", "ready_meals")
START_DAY = datetime(2026, 11, 2, tzinfo=timezone.utc)
# The throwaway server's settings (README, "Chain-wide analytics"): a catch-up writes GBs of WAL, so
# checkpoints far apart (after each one, the first change to every page logs a full copy of it) and
# buffers that hold the indexes being written; fsync and synchronous_commit stay on.
SERVER_SETTINGS = {
    "shared_buffers": "2GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "wal_buffers": "64MB",
}


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


def sync_stores(url: str, jobs: list[tuple[str, str]], batch_rows: int) -> dict[str, float]:
    """Sync (till file, store id) one after the other; rows sent, seconds, this process's CPU seconds."""
    from agetool.edge_runtime.central_db import CentralTarget
    from agetool.edge_runtime.central_sync import sync_till

    # Every run is a new central database, so each till says so once; expected here.
    logging.getLogger("agetool.edge_runtime.central_sync").setLevel(logging.ERROR)
    target = CentralTarget(url)
    rows, seconds, first = 0, 0.0, {}
    cpu_started = time.process_time()
    for path, store_id in jobs:
        result = sync_till(target, Path(path), store_id, batch_rows=batch_rows, retries=0)
        rows += result.total_rows
        seconds += result.seconds
        first = first or {"rows": result.total_rows, "seconds": round(result.seconds, 3)}
    return {"rows": rows, "seconds": seconds, "cpu_s": time.process_time() - cpu_started, **{
        f"first_{k}": v for k, v in first.items()}}


def server_cpu_s(postmaster_pid: int | None) -> float | None:
    """CPU seconds of a local server so far: the postmaster, its live processes and those it reaped."""
    if postmaster_pid is None:
        return None
    import psutil

    root = psutil.Process(postmaster_pid)
    times = root.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in root.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


def run(args: argparse.Namespace, postmaster_pid: int | None = None) -> dict[str, object]:
    from agetool.edge_runtime.central_db import CentralTarget, migrate_central

    shape = TillShape(args.lanes, args.days, args.receipts_per_lane_day)
    started = time.perf_counter()
    paths = generate_chain(Path(args.work), args.stores, shape)
    generate_s = time.perf_counter() - started
    target = CentralTarget(args.db)
    migrate_central(target)
    jobs = [(str(path), f"store-{index:04d}") for index, path in enumerate(paths)]
    # --concurrency N: N tills at a time, each worker taking every Nth store, one after the other.
    shares = [jobs[worker::args.concurrency] for worker in range(args.concurrency)]
    server_before = server_cpu_s(postmaster_pid)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if args.concurrency == 1:
        parts = [sync_stores(args.db, jobs, args.batch_rows)]
    else:
        with ProcessPoolExecutor(args.concurrency) as pool:
            parts = list(pool.map(sync_stores, [args.db] * args.concurrency, shares,
                                  [args.batch_rows] * args.concurrency))
    wall_s = time.perf_counter() - started
    server_after = server_cpu_s(postmaster_pid)
    total_rows = sum(int(part["rows"]) for part in parts)
    import psycopg

    with psycopg.connect(args.db) as conn:
        receipts = conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
        items = conn.execute("SELECT COUNT(*) FROM receipt_items").fetchone()[0]
        counts = conn.execute("SELECT COUNT(*) FROM band_counts").fetchone()[0]
    report_s, sql_s = time_report(target, Path(args.work) / "chain-report")
    cli_s = time_report_cli(args.db, Path(args.work) / "chain-report-cli")
    store_report_s, store_sql_s = time_report(target, Path(args.work) / "store-report", "store-0000")
    client_cpu_s = sum(part["cpu_s"] for part in parts)
    server_s = None if server_before is None or server_after is None else server_after - server_before
    return {
        "stores": args.stores, "lanes": args.lanes, "days": args.days, "concurrency": args.concurrency,
        "batch_rows": args.batch_rows,
        "central_rows": {"receipts": receipts, "receipt_items": items, "band_counts": counts},
        "generate_s": round(generate_s, 1),
        "first_store_sync": {"rows": parts[0]["first_rows"], "seconds": parts[0]["first_seconds"]},
        "sync_wall_s": round(wall_s, 2),
        "rows_per_s": round(total_rows / wall_s),
        "receipts_per_s": round(receipts / wall_s),
        "client_cpu_us_per_row": round(client_cpu_s / total_rows * 1e6, 1),
        "server_cpu_us_per_row": None if server_s is None else round(server_s / total_rows * 1e6, 1),
        "load_avg_1min": {"before_sync": round(load_before, 2), "after_sync": round(os.getloadavg()[0], 2)},
        "chain_report_s": round(report_s, 2),
        "chain_report_cli_s": round(cli_s, 2),
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


def time_report_cli(url: str, out: Path) -> float:
    """Seconds for `agetool analytics report --db URL --out DIR` in a new process: start-up included."""
    import subprocess

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "agetool.cli", "analytics", "report", "--db", url, "--out", str(out)],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=200)
    parser.add_argument("--lanes", type=int, default=10)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--receipts-per-lane-day", type=int, default=72)
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    parser.add_argument("--concurrency", type=int, default=1, help="Tills syncing at the same time (processes).")
    parser.add_argument("--work", default="/tmp/agetool-central-bench", help="Where the till files are written.")
    parser.add_argument("--db", help="Central postgresql:// URL (an empty database); default: a throwaway server.")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency: expected 1 or more")
    cluster = None
    if args.db is None:
        from agetool.benchmarks.pg_throwaway import ThrowawayCluster

        cluster = ThrowawayCluster(fsync=True, settings=SERVER_SETTINGS).init().start()
        args.db = cluster.url
    try:
        print(json.dumps(run(args, cluster.postmaster_pid() if cluster else None), indent=2))
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
