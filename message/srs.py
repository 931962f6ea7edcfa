"""The Sender Rewriting Scheme (SRS0 with an HMAC and a day stamp) for forwarded mail, over srslib.

A forwarded message leaves with the envelope sender SRS0=HHHH=TT=orig-domain=orig-local@our-domain:
SPF is checked against our domain, and a bounce to that address comes back to us and is sent on
to the original sender once the hash (keyed by the secret) and the day stamp (21 days) check out.
"""

from __future__ import annotations

import srslib

MAX_AGE_DAYS = 21  # the SRS paper's default


class Srs:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("srs_secret is empty")
        self._srs = srslib.SRS(secret, validity_days=MAX_AGE_DAYS)

    def forward(self, sender: str, domain: str) -> str:
        """The SRS address for `sender` at our `domain`; the null sender stays null (a bounce is
        never bounced), and an SRS address of ours is rewritten again by srslib (SRS1 rules)."""
        if not sender:
            return ""
        try:
            return str(self._srs.forward(sender, domain))
        except srslib.Error as err:
            raise ValueError(str(err)) from None

    def reverse(self, address: str) -> str | None:
        """The original sender of one of our SRS addresses; None when it is none, forged or expired."""
        try:
            if not srslib.SRS.is_srs_address(address, strict=True):
                return None
            return str(self._srs.reverse(address))
        except srslib.Error:
            return None
