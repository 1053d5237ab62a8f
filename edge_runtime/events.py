"""Events (decisions, lane online/offline, shoppers leaving) as JSON lines, and an optional webhook.

Events carry ages, bands and decisions only: never pixels. The webhook is fed from a bounded queue
by one background thread that retries with exponential backoff, so a slow POS never stalls capture."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

from agetool.edge_runtime.sources import mask_url

log = logging.getLogger(__name__)

WEBHOOK_QUEUE_SIZE = 1000


class EventSink:
    """Writes each event as one JSON line (stdout, a file, or nowhere) and queues it for the webhook."""

    def __init__(
        self,
        jsonl: str = "stdout",
        webhook_url: str | None = None,
        webhook_timeout_s: float = 2.0,
        webhook_max_retries: int = 5,
        webhook_backoff_s: float = 0.5,
    ) -> None:
        self._lock = threading.Lock()
        self._stream: TextIO | None
        self._owns_stream = False
        if jsonl == "off":
            self._stream = None
        elif jsonl == "stdout":
            self._stream = sys.stdout
        else:
            path = Path(jsonl).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = path.open("a", encoding="utf-8")
            self._owns_stream = True
        self.webhook = (
            WebhookSender(webhook_url, webhook_timeout_s, webhook_max_retries, webhook_backoff_s)
            if webhook_url
            else None
        )

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"event": kind, "time": time.time(), **fields}
        line = json.dumps(event, separators=(",", ":"), default=str)
        if self._stream is not None:
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        if self.webhook is not None:
            self.webhook.enqueue(event)
        return event

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()
        if self._owns_stream and self._stream is not None:
            self._stream.close()


class WebhookSender:
    """POSTs events to a URL from a background thread; retries with doubling backoff, then drops."""

    def __init__(self, url: str, timeout_s: float, max_retries: int, backoff_s: float) -> None:
        self.url = url
        self.safe_url = mask_url(url)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._queue: deque[dict[str, Any]] = deque(maxlen=WEBHOOK_QUEUE_SIZE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, event: dict[str, Any]) -> None:
        self._queue.append(event)
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                self._wake.wait(0.5)
                self._wake.clear()
                while self._queue:
                    event = self._queue.popleft()
                    self._deliver(client, event)
                if self._stop.is_set():
                    return

    def _deliver(self, client: Any, event: dict[str, Any]) -> bool:
        import httpx

        wait_s = self.backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                response = client.post(self.url, json=event)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning("webhook %s refused an event (HTTP %d)", self.safe_url, response.status_code)
                        self.failed += 1
                        return False
                    self.sent += 1
                    return True
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt == self.max_retries or self._stop.wait(wait_s):
                log.warning("webhook %s: event dropped after %d attempt(s) (%s)", self.safe_url, attempt + 1, problem)
                self.failed += 1
                return False
            wait_s *= 2.0
        return False
