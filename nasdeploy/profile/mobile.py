"""The DARTS mobile setting: ImageNet at 224x224 with fewer than 600M mult-adds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MOBILE_MAC_LIMIT = 600_000_000
MOBILE_INPUT = (224, 224)


@dataclass(frozen=True)
class MobileVerdict:
    """Pass/fail against the mobile setting, with the margin to the limit (positive = headroom)."""

    applies: bool
    passed: bool | None
    limit_macs: int
    margin_macs: int | None
    margin_pct: float | None
    note: str

    def label(self) -> str:
        """Short text for tables, e.g. 'pass (70.1M under)' or 'FAIL (12.0M over)', or 'n/a'."""
        if not self.applies:
            return "n/a"
        assert self.margin_macs is not None
        side = "under" if self.margin_macs >= 0 else "over"
        return f"{'pass' if self.passed else 'FAIL'} ({abs(self.margin_macs) / 1e6:.1f}M {side})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"applies": self.applies, "passed": self.passed, "limit_macs": self.limit_macs,
                "margin_macs": self.margin_macs, "margin_pct": self.margin_pct, "note": self.note}


def mobile_verdict(macs: int, input_shape: tuple[int, ...]) -> MobileVerdict:
    """Judge per-sample MACs against the mobile setting; only 224x224 inputs are judged."""
    spatial = tuple(input_shape[-2:])
    if spatial != MOBILE_INPUT:
        return MobileVerdict(False, None, MOBILE_MAC_LIMIT, None, None,
                             f"the mobile setting is defined at 224x224 input; this profile uses {spatial[0]}x{spatial[-1]}")
    margin = MOBILE_MAC_LIMIT - macs
    return MobileVerdict(True, macs < MOBILE_MAC_LIMIT, MOBILE_MAC_LIMIT, margin, 100.0 * margin / MOBILE_MAC_LIMIT,
                         "ImageNet mobile setting: < 600M mult-adds at 224x224")
