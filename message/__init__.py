"""mailstack.message: the protocol-neutral message library every service uses (ADR 0013).

Pure functions and types over message bytes and names, no I/O beyond what a caller hands in:
- structure: the ENVELOPE / BODYSTRUCTURE / section / date types (message.proto's messages)
- headers, addresses: header blocks and fields; address headers as IMAP address structures
- mime: MIME parameters and the walker that finds ENVELOPE, BODYSTRUCTURE and byte offsets (parse_message)
- line_endings: every stored line ends in CRLF (to_crlf, ADR 0020)
- body_parts, sections, transfer_encoding: part lookup, BODY[section] byte ranges, BINARY decoding
- encoded_words: RFC 2047 header decoding and charsets
- compose, dsn, dkim_sign: building, reporting on and signing outgoing messages
- names, mailbox_name, mailbox_patterns: mailbox names (rules, modified UTF-7, LIST wildcards)
- flags: the IMAP system flags

May import the standard library, third-party mail libraries and mailstack.v1.message_pb2; never a
service, storage or the gRPC API module (tests/unit/message/test_purity.py checks it).
"""
