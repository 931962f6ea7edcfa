"""Checks of inbound mail on the MX port (never on submission): sender authentication (SPF, DKIM,
DMARC, ARC), DNS blocklists and greylisting. See docs/adr/0033-inbound-sender-authentication.md."""
