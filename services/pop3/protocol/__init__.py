"""Pure POP3 protocol layer: bytes in, commands out; responses in, bytes out.
No I/O here (no asyncio, grpc, redis or sockets): the session decides, the server reads and writes."""

from .encoder import CRLF, TERMINATOR, BodyLineLimit, DotStuffer, err, multiline, ok
from .events import NEED_DATA, Command, Event, LineTooLong, NeedData
from .receiver import CommandReceiver
from .sasl import SaslError, decode_plain

__all__ = [
    "CRLF",
    "NEED_DATA",
    "TERMINATOR",
    "BodyLineLimit",
    "Command",
    "CommandReceiver",
    "DotStuffer",
    "Event",
    "LineTooLong",
    "NeedData",
    "SaslError",
    "decode_plain",
    "err",
    "multiline",
    "ok",
]
