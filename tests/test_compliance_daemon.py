"""Cashier compliance against the real daemon: `agetool serve` in a subprocess on 127.0.0.1 with the
shipped age model, YuNet and still image sources that make the decision known (a 4-year-old's face:
ID required; an 80-year-old's: not; an empty till: no face). The POS calls /check or not, posts
receipts with and without restricted items, with `performed`, `not_performed` or nothing, retries
them, the daemon is killed and started again. Every outcome is stored once, violations are emitted
once (JSON lines and webhook) and counted in Prometheus, the chain verifies until a row is deleted or
edited, and the report's totals are what was posted."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from agetool.edge_runtime.compliance import pseudonymise
from agetool.paths import default_model_path
from conftest import YUNET
from test_receipts_daemon import Serve
from test_runtime_daemon import AGETOOL, IMAGE_MAGIC, free_port, wait_for
from test_runtime_units import paste_on_canvas

KEY_ENV = "AGETOOL_TEST_CASHIER_KEY"
KEY = "compliance-test-key-2f9c41"
CHILD_CHIP, ELDER_CHIP = "000004.jpg", "000000.jpg"  # UTKFace: age 4 (model says ~3.5), 80 (~77)
BEER = {"sku": "B1", "category": "alcohol", "quantity": 6}
BREAD = {"sku": "BR", "category": "bakery", "quantity": 1}
CIGARETTES = {"sku": "C1", "category": "Tobacco", "quantity": 1}


@dataclass(frozen=True)
class Sale:
    lane: str
    items: list[dict[str, Any]]
    fields: dict[str, str]
    call_check: bool
    outcome: str

    def body(self, receipt_id: str) -> dict[str, Any]:
        return {"receipt_id": receipt_id, "total": 12.5, "items": self.items, **self.fields}


BEFORE_CRASH = {
    "K1": Sale("lane-kid", [BEER, BREAD], {"cashier_id": "tom-0042", "id_check": "performed"}, True, "checked"),
    "K2": Sale("lane-kid", [BEER], {"cashier_id": "tom-0042", "id_check": "not_performed"}, False, "violation"),
    "K3": Sale("lane-kid", [BEER], {"cashier_id": "zoe-0107"}, True, "violation"),  # nothing recorded
    "K4": Sale("lane-kid", [BREAD], {"cashier_id": "tom-0042", "id_check": "not_performed"}, False, "not_restricted"),
    "L1": Sale("lane-kid", [BEER], {}, False, "violation"),  # a POS that sends neither new field
    "E1": Sale("lane-elder", [{**BEER, "category": "ALCOHOL"}], {"cashier_id": "zoe-0107"}, True, "not_required"),
    "N1": Sale("lane-empty", [CIGARETTES], {"cashier_id": "tom-0042", "id_check": "performed"}, True, "no_face"),
}
AFTER_RESTART = {
    "K5": Sale("lane-kid", [BEER], {"cashier_id": "zoe-0107", "id_check": "performed"}, True, "checked"),
}
ALL_SALES = {**BEFORE_CRASH, **AFTER_RESTART}


class _Receiver(http.server.BaseHTTPRequestHandler):
    events: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        type(self).events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


@dataclass
class Run:
    work: Path
    db: Path
    first: dict[str, dict[str, Any]]
    retried: dict[str, dict[str, Any]]
    checks: dict[str, dict[str, Any]]
    conflict: httpx.Response
    metrics: list[str]
    webhook: list[dict[str, Any]]
    exit_codes: list[int]
    logs: str


def config_yaml(sources: Path, work: Path, port: int, hook: str) -> str:
    lanes = "".join(f"  - name: {name}\n    source: {sources / (name + '.png')}\n    fps: 3\n"
                    for name in ("lane-kid", "lane-elder", "lane-empty"))
    return f"""\
lanes:
{lanes}model:
  path: {default_model_path()}
  providers: cpu
  intra_op_threads: 1
detector:
  path: {YUNET}
tracking:
  track_timeout_s: 10
api:
  port: {port}
events:
  jsonl: {work}/events.jsonl
  webhook_url: {hook}
  webhook_backoff_s: 0.05
analytics:
  sqlite_path: {work}/state/analytics.sqlite
  flush_interval_s: 1
compliance:
  cashier_key: ${{{KEY_ENV}}}
"""


def write_sources(folder: Path, faces: Path) -> None:
    folder.mkdir(parents=True)
    for lane, chip in (("lane-kid", CHILD_CHIP), ("lane-elder", ELDER_CHIP)):
        face = cv2.resize(cv2.imread(str(faces / "final_files" / chip)), (200, 200))
        cv2.imwrite(str(folder / f"{lane}.png"), paste_on_canvas(face, 220, 140))
    cv2.imwrite(str(folder / "lane-empty.png"), np.full((480, 640, 3), 128, np.uint8))


def post_sale(client: httpx.Client, receipt_id: str, sale: Sale, checks: dict[str, dict[str, Any]]) -> httpx.Response:
    if sale.call_check:
        checks[receipt_id] = client.post(f"/v1/lanes/{sale.lane}/check").json()
    return client.post(f"/v1/lanes/{sale.lane}/receipts", json=sale.body(receipt_id))


def compliance_series(client: httpx.Client) -> list[str]:
    return sorted(line for line in client.get("/metrics").text.splitlines()
                  if line.startswith("agetool_compliance_outcomes_total{"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_faces) -> Run:
    if not YUNET.is_file():
        pytest.skip(f"YuNet model not found at {YUNET}")
    root = tmp_path_factory.mktemp("compliance")
    write_sources(root / "sources", shared_faces)
    work = root / "work"
    for sub in ("tmp", "home"):
        (work / sub).mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.events = []
    port = free_port()
    config = work / "agetool.yaml"
    config.write_text(config_yaml(root / "sources", work, port, f"http://127.0.0.1:{server.server_address[1]}/hook"))
    first: dict[str, dict[str, Any]] = {}
    retried: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    metrics: list[str] = []
    exit_codes: list[int] = []
    os.environ[KEY_ENV] = KEY  # the config names ${AGETOOL_TEST_CASHIER_KEY}; Serve passes os.environ on
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20.0) as client:
            serve = Serve(config, work, 1)
            try:
                serve.wait_ready(client)
                for lane in ("lane-kid", "lane-elder"):
                    wait_for(lambda lane=lane: client.get(f"/v1/lanes/{lane}/current").json()["track_id"] is not None,
                             60, f"a tracked face in {lane}")
                for receipt_id, sale in BEFORE_CRASH.items():
                    answer = post_sale(client, receipt_id, sale, checks)
                    assert answer.status_code == 201, answer.text
                    first[receipt_id] = answer.json()
                retried["K2"] = client.post("/v1/lanes/lane-kid/receipts", json=BEFORE_CRASH["K2"].body("K2")).json()
                # The cashier "fixing" a violation by posting the receipt again with a check: refused.
                conflict = client.post("/v1/lanes/lane-kid/receipts",
                                       json={**BEFORE_CRASH["K2"].body("K2"), "id_check": "performed"})
                metrics += compliance_series(client)
                wait_for(lambda: sum(e["event"] == "compliance_violation" for e in _Receiver.events) >= 3, 10,
                         "the violations at the webhook before the crash")
            finally:
                exit_codes.append(serve.stop(signal.SIGKILL))

            serve = Serve(config, work, 2)
            try:
                serve.wait_ready(client)
                wait_for(lambda: client.get("/v1/lanes/lane-kid/current").json()["track_id"] is not None,
                         60, "a tracked face in lane-kid after the restart")
                for receipt_id, sale in BEFORE_CRASH.items():  # the POS retries everything after the crash
                    answer = client.post(f"/v1/lanes/{sale.lane}/receipts", json=sale.body(receipt_id))
                    assert answer.status_code == 200, answer.text
                    retried[receipt_id] = answer.json()
                for receipt_id, sale in AFTER_RESTART.items():
                    answer = post_sale(client, receipt_id, sale, checks)
                    assert answer.status_code == 201, answer.text
                    first[receipt_id] = answer.json()
                metrics += ["-- after restart --"] + compliance_series(client)
            finally:
                exit_codes.append(serve.stop(signal.SIGTERM))
    finally:
        os.environ.pop(KEY_ENV, None)
        server.shutdown()
    logs = "".join(p.read_text() for p in sorted(work.glob("daemon-*.log")))
    return Run(work, work / "state" / "analytics.sqlite", first, retried, checks, conflict, metrics,
               list(_Receiver.events), exit_codes, logs)


def stored_rows(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM compliance ORDER BY seq")]
    assert len({r["receipt_id"] for r in rows}) == len(rows)
    return {r["receipt_id"]: r for r in rows}


def test_the_decision_is_known_from_the_faces(run):
    assert run.exit_codes == [-signal.SIGKILL, 0], run.logs
    assert "Traceback" not in run.logs
    kid, elder, empty = run.checks["K1"], run.checks["E1"], run.checks["N1"]
    assert kid["id_check_required"] and kid["reason"] == "lower_bound_below_threshold" and kid["age_years"] < 12
    assert not elder["id_check_required"] and elder["age_years"] > 60
    assert empty["id_check_required"] and empty["reason"] == "no_face_seen"


def test_each_receipt_gets_its_outcome_once_across_retries_and_a_restart(run):
    stored = stored_rows(run.db)
    assert {k: r["outcome"] for k, r in stored.items()} == {k: s.outcome for k, s in ALL_SALES.items()}
    assert [r["seq"] for r in stored.values()] == list(range(1, len(ALL_SALES) + 1))
    for receipt_id, sale in ALL_SALES.items():
        answer = run.first[receipt_id]["compliance"]
        row = stored[receipt_id]
        assert answer["outcome"] == sale.outcome == row["outcome"]
        assert answer["check_called"] is sale.call_check and row["check_called"] == int(sale.call_check)
        assert row["decision_source"] == ("check" if sale.call_check else "receipt")
        assert row["id_check"] == sale.fields.get("id_check", "not_recorded")
        code = sale.fields.get("cashier_id")
        expected_cashier = pseudonymise(KEY.encode(), code) if code and sale.outcome != "not_restricted" else None
        assert row["cashier"] == answer["cashier"] == expected_cashier
    assert stored["E1"]["restricted"] == "alcohol" and stored["N1"]["restricted"] == "tobacco"
    assert stored["K1"]["band"] == "0-12" and stored["N1"]["band"] == "unknown"
    # Retries (before and after the crash) answer what was stored the first time.
    for receipt_id, answer in run.retried.items():
        assert answer["created"] is False and answer["compliance"] == run.first[receipt_id]["compliance"]
    assert run.conflict.status_code == 409
    assert stored["K2"]["outcome"] == "violation" and stored["K2"]["id_check"] == "not_performed"


def test_violations_are_emitted_once_and_counted(run):
    violations = [k for k, s in ALL_SALES.items() if s.outcome == "violation"]
    lines = [json.loads(line) for line in (run.work / "events.jsonl").read_text().splitlines()]
    for events in (lines, run.webhook):
        emitted = [e for e in events if e["event"] == "compliance_violation"]
        assert sorted(e["receipt_id"] for e in emitted) == sorted(violations)  # not again for a retry
        for event in emitted:
            assert event["lane"] == "lane-kid" and event["outcome"] == "violation" and event["band"] == "0-12"
            assert event["cashier"] in (None, pseudonymise(KEY.encode(), "tom-0042"), pseudonymise(KEY.encode(), "zoe-0107"))
            assert "age_years" not in event and event["time"] > 0 and event["recorded_at_utc"].endswith("Z")
    before, after = " ".join(run.metrics).split("-- after restart --")
    assert 'agetool_compliance_outcomes_total{lane="lane-kid",outcome="violation"} 3.0' in before
    assert 'agetool_compliance_outcomes_total{lane="lane-kid",outcome="checked"} 1.0' in before
    assert 'agetool_compliance_outcomes_total{lane="lane-empty",outcome="no_face"} 1.0' in before
    assert 'agetool_compliance_outcomes_total{lane="lane-elder",outcome="not_required"} 1.0' in before
    assert 'agetool_compliance_outcomes_total{lane="lane-kid",outcome="not_restricted"} 1.0' in before
    # After the restart only the new receipt counts: the retries are not outcomes again.
    assert after.split() == ['agetool_compliance_outcomes_total{lane="lane-kid",outcome="checked"}', "1.0"]


def copy_db(db: Path, to: Path) -> Path:
    with sqlite3.connect(db) as source, sqlite3.connect(to) as target:
        source.backup(target)
    return to


def verify(db: Path) -> subprocess.CompletedProcess:
    return subprocess.run(AGETOOL + ["compliance", "verify", "--db", str(db)], capture_output=True, text=True)


def test_verify_passes_then_finds_a_deleted_or_edited_row(run, tmp_path):
    intact = verify(run.db)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert intact.stdout.startswith(f"compliance chain intact: {len(ALL_SALES)} row(s)")

    deleted = copy_db(run.db, tmp_path / "deleted.sqlite")
    with sqlite3.connect(deleted) as conn:
        seq = conn.execute("SELECT seq FROM compliance WHERE receipt_id = 'K2'").fetchone()[0]
        conn.execute("DELETE FROM compliance WHERE receipt_id = 'K2'")
    done = verify(deleted)
    assert done.returncode == 1 and f"broken at row {seq + 1} " in done.stdout and "missing" in done.stdout

    edited = copy_db(run.db, tmp_path / "edited.sqlite")
    with sqlite3.connect(edited) as conn:
        conn.execute("UPDATE compliance SET outcome = 'checked', id_check = 'performed' WHERE receipt_id = 'K3'")
        seq = conn.execute("SELECT seq FROM compliance WHERE receipt_id = 'K3'").fetchone()[0]
    done = verify(edited)
    assert done.returncode == 1 and done.stdout.startswith(f"compliance chain broken at row {seq} (receipt K3)")


def test_the_report_totals_match_what_was_posted(run, tmp_path):
    today = datetime.now(timezone.utc)
    since, until = (today - timedelta(days=1)).strftime("%Y-%m-%d"), (today + timedelta(days=1)).strftime("%Y-%m-%d")
    out = tmp_path / "report"
    done = subprocess.run(AGETOOL + ["compliance", "report", "--db", str(run.db), "--since", since, "--until", until,
                                     "--out", str(out), "--min-sales", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "compliance.json").read_text())
    expected = {o: sum(s.outcome == o for s in ALL_SALES.values())
                for o in ("checked", "not_required", "violation", "no_face", "not_restricted")}
    assert report["totals"] == expected
    assert report["restricted_sales"] == 7 and report["violation_rate"] == round(3 / 7, 4)
    assert report["check_not_called"] == 2  # K2 and L1: no /check before a restricted sale
    assert report["per_lane"]["lane-kid"]["totals"]["violation"] == 3
    assert sum(d["totals"]["violation"] for d in report["per_day"].values()) == 3
    per_cashier = report["per_cashier"]
    assert per_cashier[pseudonymise(KEY.encode(), "tom-0042")]["totals"] == {
        "checked": 1, "not_required": 0, "violation": 1, "no_face": 1, "not_restricted": 0}
    assert per_cashier["(not recorded)"]["totals"]["violation"] == 1  # L1
    assert report["chain"]["ok"] and report["chain"]["rows"] == len(ALL_SALES)
    markdown = (out / "report.md").read_text()
    assert "**Violation rate: 42.9 %** of 7 restricted sale(s)" in markdown
    assert re.search(r"\| c-[0-9a-f]{16} \| 3 \| 1 \|", markdown)
    # Ranked: the two cashiers with 3 restricted sales each; the sale without a cashier code is not.
    assert sorted(r["cashier"] for r in report["cashier_ranking"]) == sorted(
        pseudonymise(KEY.encode(), code) for code in ("tom-0042", "zoe-0107"))
    assert [r["cashier"] for r in report["cashier_unranked"]] == ["(not recorded)"]
    for chart in ("outcomes_per_day.png", "cashiers_by_violation_rate.png"):
        assert (out / chart).read_bytes().startswith(b"\x89PNG")


def test_no_cashier_code_no_exact_age_no_image_in_the_audit_trail(run):
    with sqlite3.connect(run.db) as conn:
        columns = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(compliance)")}
        values = conn.execute("SELECT * FROM compliance").fetchall()
    assert "REAL" not in columns.values() and not any("age" in c for c in columns)
    ages = {c["age_years"] for c in run.checks.values() if c["age_years"] is not None}
    for row in values:
        for value in row:
            assert not isinstance(value, (float, bytes)) and value not in ages
            assert not (isinstance(value, str) and value.encode().startswith(IMAGE_MAGIC))
    for path in run.db.parent.iterdir():
        raw = path.read_bytes()
        assert b"tom-0042" not in raw and b"zoe-0107" not in raw, path  # the cashier codes, in clear: nowhere
