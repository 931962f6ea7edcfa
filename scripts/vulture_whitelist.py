"""Names vulture (scripts/deadcode.sh) cannot see being used: each is called by a framework, by name.

A name that is really dead does not belong here: remove the code instead."""

# ruff: noqa: B018, F821  (a list of names for vulture, never run)
from __future__ import annotations

# Found by name by their frameworks (see scripts/deadcode.sh --ignore-names for the families:
# aiosmtpd's handle_*/smtp_*/auth_*, the POP3 session's _cmd_* dispatch, gRPC's intercept_*).
_.get_description  # opentelemetry Sampler interface (services/common/telemetry.py)
line_length_limit  # aiosmtpd.smtp.SMTP reads it (services/smtp/protocol.py)
_.command_size_limits  # aiosmtpd.smtp.SMTP reads it (services/smtp/protocol.py)
_.datagram_received  # asyncio.DatagramProtocol (tests/unit/test_outbound_units.py)
_.nameservers  # dns.resolver.Resolver reads it (tests/unit/test_outbound_units.py)

# The parsed IMAP grammar keeps what the client sent, used or not (services/imap/protocol/).
known_sequence_set  # QRESYNC seq-match (RFC 7162 §3.2.5)
known_uid_set
entry_name  # SEARCH MODSEQ entry-name (RFC 7162 §3.1.5)
older  # SEARCH OLDER/YOUNGER (RFC 5032)

# pytest: fixtures requested by parameter name, classes the CLI test loads from a string, markers.
lax_umask
StandInMailstore
CrashingFrontend
_.__test__

# hypothesis: RuleBasedStateMachine calls teardown() after each run.
_.teardown

# socketserver reads it: the DNS test server's handler threads do not keep the test process alive.
daemon_threads
# aiosmtpd: the greeting's text after the host name (LMTP says so in it; services/smtp/lmtp.py).
_.__ident__
# gRPC calls a servicer's methods by the proto's RPC names (tests/fixtures/otlp_receiver.py).
_.Export

# pytest: a fixture applied by @pytest.mark.usefixtures (tests/integration/test_s3_client.py).
aws_env
