"""ENVELOPE, BODY and BODYSTRUCTURE encoding from the mailstore's precomputed structures
(RFC 3501 §7.4.2, RFC 9051 §7.5.2) and INTERNALDATE from its DateTime."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from mailstack.message.structure import Address, BodyPart, DateTime, Envelope, Param

from .encoder import NIL, date_time, nil_or_list, nstring, paren_list, string


def internal_date(value: DateTime) -> bytes:
    zone = datetime.timezone(datetime.timedelta(minutes=value.utc_offset_minutes))
    return date_time(datetime.datetime.fromtimestamp(value.unix_seconds, tz=zone))


def _optional(message: Envelope | Address | BodyPart, field: str, utf8: bool) -> bytes:
    return nstring(getattr(message, field), utf8) if message.HasField(field) else NIL  # type: ignore[arg-type]


def _address_list(addresses: Iterable[Address], utf8: bool) -> bytes:
    # address-list = "(" 1*address ")" / nil
    # address = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"
    return (
        b"("
        + b"".join(paren_list(_optional(a, f, utf8) for f in ("name", "adl", "mailbox", "host")) for a in addresses)
        + b")"
        if addresses
        else NIL
    )


def envelope(env: Envelope, utf8: bool = False) -> bytes:
    """envelope = "(" env-date SP env-subject SP env-from SP env-sender SP env-reply-to SP env-to
    SP env-cc SP env-bcc SP env-in-reply-to SP env-message-id ")" """
    # RFC 3501 §7.4.2: absent Sender / Reply-To are given the value of From
    sender = env.sender or getattr(env, "from")
    reply_to = env.reply_to or getattr(env, "from")
    return paren_list(
        [
            _optional(env, "date", utf8),
            _optional(env, "subject", utf8),
            _address_list(getattr(env, "from"), utf8),
            _address_list(sender, utf8),
            _address_list(reply_to, utf8),
            _address_list(env.to, utf8),
            _address_list(env.cc, utf8),
            _address_list(env.bcc, utf8),
            _optional(env, "in_reply_to", utf8),
            _optional(env, "message_id", utf8),
        ]
    )


def _params(params: Iterable[Param], utf8: bool) -> bytes:
    # body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    return nil_or_list(string(p.name.upper(), utf8) + b" " + string(p.value, utf8) for p in params)


def _disposition(part: BodyPart, utf8: bool) -> bytes:
    # body-fld-dsp = "(" string SP body-fld-param ")" / nil
    if not part.has_disposition:
        return NIL
    return b"(" + string(part.disposition.type.upper(), utf8) + b" " + _params(part.disposition.params, utf8) + b")"


def _extension_tail(part: BodyPart, utf8: bool) -> bytes:
    # body-fld-dsp SP body-fld-lang SP body-fld-loc;  body-fld-lang = nstring / "(" string *(SP string) ")"
    language = nil_or_list(string(lang, utf8) for lang in part.language)
    return b" ".join([_disposition(part, utf8), language, _optional(part, "location", utf8)])


def body_structure(part: BodyPart, extensible: bool = True, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (extensible) or BODY (basic fields only) of a part, types upper-cased as
    Dovecot does ("TEXT" "PLAIN")."""
    media_type = (part.type or b"text").upper()
    subtype = (part.subtype or b"plain").upper()
    if media_type == b"MULTIPART" and part.parts:
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        # body-ext-mpart = body-fld-param [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]]
        out = b"".join(body_structure(p, extensible, utf8) for p in part.parts) + b" " + string(subtype, utf8)
        if extensible:
            out += b" " + _params(part.params, utf8) + b" " + _extension_tail(part, utf8)
        return b"(" + out + b")"
    # body-fields = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP body-fld-octets
    fields = [
        string(media_type, utf8),
        string(subtype, utf8),
        _params(part.params, utf8),
        _optional(part, "id", utf8),
        _optional(part, "description", utf8),
        string((part.encoding or b"7BIT").upper(), utf8),
        b"%d" % part.size,
    ]
    if media_type == b"MESSAGE" and subtype in (b"RFC822", b"GLOBAL") and len(part.parts) == 1:
        # body-type-msg = media-message SP body-fields SP envelope SP body SP body-fld-lines
        fields += [envelope(part.envelope, utf8), body_structure(part.parts[0], extensible, utf8), b"%d" % part.lines]
    elif media_type == b"TEXT":
        # body-type-text = media-text SP body-fields SP body-fld-lines
        fields.append(b"%d" % part.lines)
    if extensible:
        # body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]]
        fields += [_optional(part, "md5", utf8), _extension_tail(part, utf8)]
    return paren_list(fields)
