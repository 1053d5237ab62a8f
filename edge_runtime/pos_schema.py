"""The receipt the POS sends to POST /v1/lanes/{lane}/receipts, and its validation.

Backward compatible: `cashier_id` and `id_check` are optional, and a receipt without them has the
same digest as before they existed, so a retry of an old receipt is still recognised as one."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema,
)

from agetool.errors import AgetoolError
from agetool.validation import describe, dotted

ID_CHECK_PERFORMED = "performed"
ID_CHECK_NOT_PERFORMED = "not_performed"

# The schema /openapi.json publishes and the validation below must agree (schemathesis checks it):
# names are 1-64 characters with at least one that is not ASCII whitespace, trimmed of ASCII
# whitespace when stored; a number is a JSON number, never a string or a boolean.
ASCII_WHITESPACE = " \t\n\r\f\v"
NOT_BLANK_PATTERN = r"[^ \t\n\r\f\v]"
TOTAL_SCHEMA = {"type": "number", "minimum": 0, "maximum": 10_000_000, "multipleOf": 0.01}


def _trimmed_not_blank(value: str) -> str:
    trimmed = value.strip(ASCII_WHITESPACE)
    if not trimmed:
        raise ValueError("expected some text, got only whitespace")
    return trimmed


def _json_number(value: Any) -> Any:
    if isinstance(value, (str, bool)):
        raise ValueError("expected a JSON number")
    # repr is the shortest text that reads back as this float: 12.3 stays 12.3, not 12.2999...
    return Decimal(repr(value)) if isinstance(value, float) else value


ItemName = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_trimmed_not_blank),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64, "pattern": NOT_BLANK_PATTERN}),
]
Total = Annotated[Decimal, BeforeValidator(_json_number), WithJsonSchema(TOTAL_SCHEMA)]


class ReceiptItem(BaseModel):
    """One line of the receipt."""

    model_config = ConfigDict(extra="forbid")

    sku: ItemName = Field(description="The POS's article number.")
    category: ItemName = Field(description="Product category (reports group by it).")
    quantity: float = Field(gt=0, le=100000, allow_inf_nan=False, strict=True, description="Units (or kg) bought.")


class ReceiptIn(BaseModel):
    """POST /v1/lanes/{lane}/receipts body."""

    model_config = ConfigDict(extra="forbid")

    receipt_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/#-]{0,127}$",
        description="The POS's unique receipt id (1-128 of A-Z a-z 0-9 _ . : / # -); posting it again is a no-op.",
    )
    total: Total = Field(ge=0, le=10_000_000, max_digits=12, decimal_places=2,
                         description="Receipt total in the till's currency: a JSON number with at most 2 decimals.")
    items: list[ReceiptItem] | None = Field(None, max_length=2000, description="Item lines (optional).")
    cashier_id: ItemName | None = Field(
        None,
        description="The POS's code of the cashier who rang the sale (optional); stored only as a keyed "
        "pseudonym (compliance.cashier_key), never in clear.",
    )
    id_check: Literal["performed", "not_performed"] | None = Field(
        None, description="What the cashier recorded at the till for a restricted sale: 'performed' or "
        "'not_performed' (optional; absent counts as not performed when the rule asked for ID).",
    )

    @property
    def total_cents(self) -> int:
        return int(self.total * 100)

    def body_sha256(self, lane: str) -> str:
        """A digest of what this receipt says, to tell a retry (same) from a clash (different)."""
        canonical: dict[str, object] = {
            "lane": lane,
            "receipt_id": self.receipt_id,
            "total_cents": self.total_cents,
            "items": [[i.sku, i.category, i.quantity] for i in self.items or []],
        }
        # Only when sent: receipts without them keep the digest they had before these fields existed.
        if self.cashier_id is not None:
            canonical["cashier_id"] = self.cashier_id
        if self.id_check is not None:
            canonical["id_check"] = self.id_check
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class InvalidReceipt(AgetoolError):
    """The API turns this into 422."""


def parse_receipt(body: bytes) -> ReceiptIn:
    """Validate a request body; InvalidReceipt names the first bad field in one line."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int() of a 5,000-digit number
        raise InvalidReceipt(f"body: not valid JSON ({exc})") from None
    except RecursionError:  # '[' * 1000: a receipt nests 3 deep, nothing legitimate gets near this
        raise InvalidReceipt("body: JSON nested too deeply to be a receipt") from None
    if not isinstance(data, dict):
        raise InvalidReceipt("body: expected a JSON object with receipt_id, total and optional items")
    try:
        return ReceiptIn.model_validate(data)
    except ValidationError as exc:
        raise InvalidReceipt(describe(exc, lambda loc: dotted(loc) or "body")) from None
