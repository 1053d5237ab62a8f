"""Receipts against the real daemon: `agetool serve` in a subprocess on 127.0.0.1 with real faces in
an image folder, the astronaut still, an empty till, YuNet and a real ONNX model. Post receipts,
crash it (SIGKILL), start it again, post the same ids again, stop it (SIGTERM): every receipt is
stored exactly once with the band it got first. Export, report and privacy checks run on that file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pandas as pd
import pytest

from agetool.contract import BAND_NAMES, UNKNOWN_BAND
from conftest import build_tiny_age_onnx
from test_runtime_daemon import AGETOOL, IMAGE_MAGIC, daemon_yaml, free_port, wait_for
from test_runtime_units import astronaut_bgr, make_face_canvas_folder

LANES = ("lane-a", "lane-b", "lane-empty")
CONFIDENCE_STEPS = {0.0, 0.25, 0.5, 0.75, 1.0}


def config_yaml(folder: Path, still: Path, blank: Path, model: Path, port: int, work: Path) -> str:
    empty_lane = f"  - name: lane-empty\n    source: {blank}\n    fps: 2\n"
    return daemon_yaml(folder, still, model, port, work, extra_lanes=empty_lane, track_timeout_s=5, capture="")


def body(index: int) -> dict[str, Any]:
    """Receipt R-000i; totals of 100 and more stay clear of any age the tiny model gives (5..65)."""
    categories = ["beer", "crisps", "bread", "wine"]
    items = [{"sku": f"SKU{index}{j}", "category": categories[(index + j) % 4], "quantity": j + 1}
             for j in range(index % 3 + 1)]
    return {"receipt_id": f"R-{index:04d}", "total": round(100 + index * 7.31, 2), "items": items}


def lane_of(index: int) -> str:
    return LANES[index % 3]


@dataclass
class DaemonRun:
    work: Path
    db: Path
    first: dict[str, dict[str, Any]]  # receipt_id -> the record answered when it was first posted
    retried: dict[str, dict[str, Any]]
    ages_seen: set[float]
    checks: list[dict[str, Any]]
    validation: dict[str, httpx.Response]
    exit_codes: list[int]
    logs: str


class Serve:
    """`agetool serve` in a subprocess, its log in a file."""

    def __init__(self, config: Path, work: Path, run: int) -> None:
        env = {**os.environ, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), "AGETOOL_DETECTOR": ""}
        self.log_path = work / f"daemon-{run}.log"
        with self.log_path.open("w") as log_file:
            self.proc = subprocess.Popen(AGETOOL + ["serve", "--config", str(config)], cwd=work, env=env,
                                         stdout=log_file, stderr=subprocess.STDOUT)

    def wait_ready(self, client: httpx.Client) -> None:
        def ready() -> bool:
            try:
                return client.get("/readyz").status_code == 200
            except httpx.TransportError:
                assert self.proc.poll() is None, self.log_path.read_text()
                return False

        wait_for(ready, 60, "/readyz ready")

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def tracked(client: httpx.Client, lane: str, ages: set[float]) -> bool:
    current = client.get(f"/v1/lanes/{lane}/current").json()
    if current["age_years"] is not None:
        ages.add(current["age_years"])
    return current["track_id"] is not None


@pytest.fixture(scope="module")
def daemon_run(tmp_path_factory, shared_faces) -> DaemonRun:
    root = tmp_path_factory.mktemp("receipts")
    folder = make_face_canvas_folder(root / "sources" / "lane-a", shared_faces, n_images=4)
    still, blank = root / "sources" / "astronaut.png", root / "sources" / "empty-till.png"
    cv2.imwrite(str(still), astronaut_bgr())
    cv2.imwrite(str(blank), np.full((480, 640, 3), 128, np.uint8))
    model = build_tiny_age_onnx(root / "tiny_age.onnx")
    work = root / "work"
    for sub in ("tmp", "home"):
        (work / sub).mkdir(parents=True)
    port = free_port()
    config = work / "agetool.yaml"
    config.write_text(config_yaml(folder, still, blank, model, port, work))
    first: dict[str, dict[str, Any]] = {}
    retried: dict[str, dict[str, Any]] = {}
    ages: set[float] = set()
    checks: list[dict[str, Any]] = []
    validation: dict[str, httpx.Response] = {}
    exit_codes: list[int] = []

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        serve = Serve(config, work, 1)
        try:
            serve.wait_ready(client)
            for lane in ("lane-a", "lane-b"):
                wait_for(lambda lane=lane: tracked(client, lane, ages), 20, f"a tracked face in {lane}")
            for index in range(1, 10):
                answer = client.post(f"/v1/lanes/{lane_of(index)}/receipts", json=body(index))
                assert answer.status_code == 201, answer.text
                first[body(index)["receipt_id"]] = answer.json()
                tracked(client, "lane-a", ages)
            checks.append(client.post("/v1/lanes/lane-b/check").json())
            validation["retry"] = client.post("/v1/lanes/lane-a/receipts", json=body(3))
            validation["clash"] = client.post("/v1/lanes/lane-a/receipts", json={**body(3), "total": 1.0})
            validation["other lane"] = client.post("/v1/lanes/lane-b/receipts", json=body(3))
            validation["no total"] = client.post("/v1/lanes/lane-a/receipts", json={"receipt_id": "X-1"})
            validation["bad quantity"] = client.post("/v1/lanes/lane-a/receipts", json={
                "receipt_id": "X-2", "total": 1, "items": [{"sku": "1", "category": "beer", "quantity": -1}]})
            validation["not json"] = client.post("/v1/lanes/lane-a/receipts", content=b"receipt=1",
                                                 headers={"Content-Type": "application/json"})
            validation["too big"] = client.post("/v1/lanes/lane-a/receipts", content=b"{" + b" " * 300_000 + b"}")
            validation["no lane"] = client.post("/v1/lanes/lane-z/receipts", json=body(1))
        finally:
            exit_codes.append(serve.stop(signal.SIGKILL))  # a crash: no flush, no goodbye

        serve = Serve(config, work, 2)
        try:
            serve.wait_ready(client)
            wait_for(lambda: tracked(client, "lane-b", ages), 20, "a tracked face in lane-b after the restart")
            for index in range(1, 10):
                answer = client.post(f"/v1/lanes/{lane_of(index)}/receipts", json=body(index))
                assert answer.status_code == 200, answer.text
                retried[body(index)["receipt_id"]] = answer.json()
            for index in range(10, 13):
                answer = client.post(f"/v1/lanes/{lane_of(index)}/receipts", json=body(index))
                assert answer.status_code == 201, answer.text
                first[body(index)["receipt_id"]] = answer.json()
            checks.append(client.post("/v1/lanes/lane-a/check").json())
            tracked(client, "lane-a", ages)
        finally:
            exit_codes.append(serve.stop(signal.SIGTERM))

    for line in (work / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("age_years") is not None:
            ages.add(float(event["age_years"]))
    ages.update(c["age_years"] for c in checks if c["age_years"] is not None)
    logs = "".join(p.read_text() for p in sorted(work.glob("daemon-*.log")))
    return DaemonRun(work, work / "state" / "analytics.sqlite", first, retried, ages, checks, validation,
                     exit_codes, logs)


def stored_receipts(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT receipt_id, lane, band, band_basis, band_confidence, total_cents, n_items, "
                            "recorded_at_utc FROM receipts").fetchall()
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids))
    return {row[0]: row[1:] for row in rows}


def test_every_receipt_is_stored_once_with_its_band_across_a_crash_and_a_restart(daemon_run):
    run = daemon_run
    assert run.exit_codes == [-signal.SIGKILL, 0], run.logs
    assert "Traceback" not in run.logs
    expected_ids = {f"R-{i:04d}" for i in range(1, 13)}
    assert set(run.first) == expected_ids
    stored = stored_receipts(run.db)
    assert set(stored) == expected_ids  # each exactly once: nothing lost to the crash, nothing doubled
    for receipt_id, record in run.first.items():
        index = int(receipt_id[2:])
        lane, band, basis, confidence, total_cents, n_items, recorded_at = stored[receipt_id]
        assert (lane, band, basis, confidence, recorded_at) == (
            record["lane"], record["band"], record["band_basis"], record["band_confidence"], record["recorded_at_utc"])
        assert lane == lane_of(index) and total_cents == round(body(index)["total"] * 100)
        assert n_items == len(body(index)["items"]) and record["total"] == body(index)["total"]
        if lane == "lane-empty":
            assert (band, basis, confidence) == (UNKNOWN_BAND, "no_face", None)
        elif basis == "estimated":
            assert band in BAND_NAMES and confidence >= 0.5
        elif basis == "unsure":
            assert band == UNKNOWN_BAND and confidence < 0.5
        else:
            assert (band, basis, confidence) == (UNKNOWN_BAND, "no_face", None)
    # The astronaut never moves: one steady estimate, so lane-b always names a band.
    assert all(r["band"] in BAND_NAMES for r in run.first.values() if r["lane"] == "lane-b")
    # The retries after the restart answered the record stored before the crash.
    for receipt_id, record in run.retried.items():
        assert {**record, "created": True} == run.first[receipt_id]
    with sqlite3.connect(run.db) as conn:
        n_items = conn.execute("SELECT COUNT(*) FROM receipt_items").fetchone()[0]
        counts = conn.execute("SELECT lane, band, shoppers FROM band_counts").fetchall()
    assert n_items == sum(len(body(i)["items"]) for i in range(1, 13))
    assert counts and {lane for lane, _, _ in counts} <= {"lane-a", "lane-b"}  # the SIGTERM flush
    assert all(c["band"] in BAND_NAMES for c in run.checks)  # the check answer carries the band


def test_the_api_refuses_bad_receipts_clearly(daemon_run):
    v = daemon_run.validation
    assert v["retry"].status_code == 200 and v["retry"].json()["created"] is False
    assert v["retry"].json()["receipt_id"] == "R-0003"
    for clash in ("clash", "other lane"):
        assert v[clash].status_code == 409
        assert "R-0003" in v[clash].json()["detail"] and v[clash].json()["stored"]["total"] == body(3)["total"]
    assert v["no total"].status_code == 422 and v["no total"].json()["detail"] == "total: Field required"
    assert v["bad quantity"].status_code == 422
    assert v["bad quantity"].json()["detail"].startswith("items.0.quantity: Input should be greater than 0")
    assert v["not json"].status_code == 422 and v["not json"].json()["detail"].startswith("body: not valid JSON")
    assert v["too big"].status_code == 413
    assert v["no lane"].status_code == 404
    assert not {"X-1", "X-2"} & set(stored_receipts(daemon_run.db))


def test_export_and_report_run_on_the_daemons_file(daemon_run, tmp_path):
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = tmp_path / "receipts.csv"
    done = subprocess.run(AGETOOL + ["analytics", "export", "--db", str(daemon_run.db), "--since", today,
                                     "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    assert sorted(frame["receipt_id"]) == sorted(daemon_run.first)
    assert dict(zip(frame["receipt_id"], frame["band"])) == {k: r["band"] for k, r in daemon_run.first.items()}
    done = subprocess.run(AGETOOL + ["analytics", "report", "--db", str(daemon_run.db), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Receipts and basket value per age band" in report and "| lane-a |" in report
    assert (tmp_path / "r" / "shoppers_by_hour.png").read_bytes().startswith(b"\x89PNG")


def test_no_image_and_no_exact_age_is_stored(daemon_run):
    run = daemon_run
    assert run.ages_seen, "the test saw no age estimate to look for"
    # Every file the daemon keeps its analytics in (the WAL too, if one is left).
    with sqlite3.connect(run.db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert set(tables) == {"band_counts", "receipts", "receipt_items", "schema_version", "compliance",
                               "compliance_purges", "sqlite_sequence"}
        real_columns = []
        for table in tables:
            columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
            for _cid, column, declared, *_ in columns:
                assert "age" not in column.lower(), (table, column)
                if declared.upper() == "REAL":
                    real_columns.append(f"{table}.{column}")
                for value, kind in conn.execute(f"SELECT {column}, typeof({column}) FROM {table}"):
                    assert kind != "blob", (table, column)
                    if isinstance(value, str):
                        assert not value.encode().startswith(IMAGE_MAGIC), (table, column)
                    if isinstance(value, float):
                        assert round(value, 2) not in run.ages_seen, (table, column, value)
        assert sorted(real_columns) == ["receipt_items.quantity", "receipts.band_confidence"]
        confidences = {r[0] for r in conn.execute("SELECT band_confidence FROM receipts WHERE band_confidence IS NOT NULL")}
        assert confidences <= CONFIDENCE_STEPS  # coarse: no way back to the exact age
    leftovers = [p for p in run.db.parent.iterdir() if p.name.startswith(run.db.name)]
    assert all(not p.read_bytes()[:16].startswith(IMAGE_MAGIC) for p in leftovers)
    assert [p for p in run.work.rglob("*.jpg")] == []
