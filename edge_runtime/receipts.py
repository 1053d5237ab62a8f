"""POS receipts tagged with the shopper's age band: the names other modules and older code import.

The work is split along its seams: `migrations` (the file's schema), `pos_schema` (the body the
POS sends), `band_tag` (which band a receipt gets), `store` (the one writer) and `compliance` (the
cashier's ID check on restricted sales). Import from those in new code."""

from __future__ import annotations

from agetool.edge_runtime.band_tag import (
    BASIS_ESTIMATED,
    BASIS_NO_FACE,
    BASIS_UNSURE,
    CONFIDENCE_STEP,
    BandTag,
    band_share,
    tag_band,
)
from agetool.edge_runtime.migrations import (
    LATEST_SCHEMA_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION_TABLE,
    connect_readonly,
    has_table,
    migrate,
    open_db,
    schema_version,
    utc_seconds_iso,
)
from agetool.edge_runtime.pos_schema import InvalidReceipt, ReceiptIn, ReceiptItem, parse_receipt
from agetool.edge_runtime.store import (
    RECEIPT_COLUMNS,
    WRITE_TIMEOUT_S,
    AnalyticsStore,
    ReceiptConflict,
    StoredReceipt,
    StoredSale,
    StoreUnavailable,
    purge_older_than,
    read_receipts,
)

__all__ = [
    "BASIS_ESTIMATED", "BASIS_NO_FACE", "BASIS_UNSURE", "CONFIDENCE_STEP", "BandTag", "band_share", "tag_band",
    "LATEST_SCHEMA_VERSION", "MIGRATIONS", "SCHEMA_VERSION_TABLE", "connect_readonly", "has_table", "migrate",
    "open_db", "schema_version", "utc_seconds_iso", "InvalidReceipt", "ReceiptIn", "ReceiptItem", "parse_receipt",
    "RECEIPT_COLUMNS", "WRITE_TIMEOUT_S", "AnalyticsStore", "ReceiptConflict", "StoredReceipt", "StoredSale",
    "StoreUnavailable", "purge_older_than", "read_receipts",
]
