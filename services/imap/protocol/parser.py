"""Parse one framed command into a `Command` (RFC 3501 §6 / RFC 9051 §6 command syntax)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailstack.message.mailbox_name import decode_mailbox_name
from mailstack.message.mailbox_patterns import PatternTooLongError, check_lengths

from .commands import (
    Append,
    AppendMessage,
    Arguments,
    Authenticate,
    CatenatePart,
    Compress,
    CopyMove,
    Create,
    Enable,
    Fetch,
    Id,
    ListMailboxes,
    Login,
    Lsub,
    MailboxArgument,
    NoArguments,
    QresyncParameters,
    QuotaRoot,
    Rename,
    Search,
    Select,
    SequenceArgument,
    SetQuota,
    Status,
    Store,
)
from .events import Command, ParseError
from .fetch import parse_fetch_items
from .grammar import ATOM_CHARS, GrammarError, Reader
from .ordering import CONTEXT_RETURNS, optional_return, parse_cancelupdate, parse_sort, parse_thread
from .search import parse_search_keys
from .sequence import SequenceSet, parse_sequence_set

# status-att = "MESSAGES" / "UIDNEXT" / "UIDVALIDITY" / "UNSEEN" / "DELETED" / "SIZE" / "RECENT"
#            / "HIGHESTMODSEQ" (RFC 7162) / "APPENDLIMIT" (RFC 7889)
STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ", "APPENDLIMIT"}
    | {"MAILBOXID"}  # RFC 8474 §4.2
)
# use-attr (RFC 6154 §6)
USE_ATTRIBUTES = {a.lower(): a for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")}
LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURNS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
SEARCH_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})
_BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")

_NO_ARGUMENTS = NoArguments()


class ParseContext:
    """Per-command parsing state: the reader plus the mailbox-name mode (UTF8=ACCEPT)."""

    def __init__(self, data: bytes, utf8: bool, uid: bool = False) -> None:
        self.r = Reader(data)
        self.utf8 = utf8
        self.uid = uid
        self.invalid_mailbox = ""  # why a name that fits the grammar names no mailbox (Command)

    def mailbox(self) -> str:
        # mailbox = "INBOX" / astring
        return self.mailbox_name(self.r.astring())

    def mailbox_name(self, raw: bytes) -> str:
        """The name, or (not valid modified UTF-7 / UTF-8: no syntax error) a stand-in that is
        never used, with the reason kept for the command's NO."""
        try:
            return decode_mailbox_name(raw, self.utf8)
        except ValueError as e:
            self.invalid_mailbox = self.invalid_mailbox or f"invalid mailbox name: {e}"
            return raw.decode("latin-1")

    def pattern(self, raw: bytes) -> str | None:
        """A LIST pattern; None when it is not valid modified UTF-7 (then it matches nothing)."""
        try:
            return decode_mailbox_name(raw, self.utf8)
        except ValueError:
            return None

    def sequence_set(self) -> SequenceSet:
        return parse_sequence_set(self.r)


def no_arguments(c: ParseContext) -> Arguments:
    return _NO_ARGUMENTS


def authenticate(c: ParseContext) -> Arguments:
    # authenticate = "AUTHENTICATE" SP auth-type [SP (base64 / "=")]   (RFC 4959)
    r = c.r
    r.sp()
    mechanism = r.keyword()
    response = None
    if r.accept(b" "):
        response = r.take_while(_BASE64_CHARS)
        if not response:
            raise GrammarError("invalid initial response")
    return Authenticate(mechanism, response)


def login(c: ParseContext) -> Arguments:
    # login = "LOGIN" SP userid SP password
    c.r.sp()
    username = c.r.text_astring()
    c.r.sp()
    return Login(username, c.r.text_astring())


def select(c: ParseContext) -> Arguments:
    # select = "SELECT" SP mailbox [select-params]
    # select-params = SP "(" select-param *(SP select-param) ")"
    # select-param = "CONDSTORE" / "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #                [SP seq-match-data] ")"      (RFC 7162 §7)
    # seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    r = c.r
    r.sp()
    mailbox = c.mailbox()
    condstore = False
    qresync: QresyncParameters | None = None
    if r.accept(b" "):

        def param() -> str:
            nonlocal condstore, qresync
            name = r.keyword()
            if name == "CONDSTORE":
                condstore = True
            elif name == "QRESYNC" and qresync is None:
                r.sp()
                r.expect(b"(")
                uidvalidity = r.nz_number()
                r.sp()
                modseq = r.number64()
                known_uids = seq = uids = None
                if r.accept(b" ") and not r.peek_is(b"("):
                    known_uids = parse_sequence_set(r, allow_saved=False)
                    r.accept(b" ")
                if r.accept(b"("):
                    seq = parse_sequence_set(r, allow_saved=False)
                    r.sp()
                    uids = parse_sequence_set(r, allow_saved=False)
                    r.expect(b")")
                r.expect(b")")
                qresync = QresyncParameters(uidvalidity, modseq, known_uids, seq, uids)
            else:
                raise GrammarError(f"unknown select parameter {name}")
            return name

        if not r.sequence(param):
            raise GrammarError("empty select parameters")
    return Select(mailbox, condstore, qresync)


def mailbox_only(c: ParseContext) -> Arguments:
    c.r.sp()
    return MailboxArgument(c.mailbox())


def create(c: ParseContext) -> Arguments:
    # create = "CREATE" SP mailbox [create-params]
    # create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"    (RFC 6154 §6)
    r = c.r
    r.sp()
    mailbox = c.mailbox()
    uses: list[str] = []
    if r.accept(b" "):

        def param() -> None:
            if r.keyword() != "USE":
                raise GrammarError("unknown CREATE parameter")
            r.sp()
            for flag in r.flag_list():
                if not flag.startswith("\\"):
                    raise GrammarError(f"a special-use attribute starts with a backslash: {flag}")
                # an unknown "\atom" is valid syntax: the handler answers NO [USEATTR] (RFC 6154 §3)
                uses.append(USE_ATTRIBUTES.get(flag.lower(), flag))

        if not r.sequence(param):
            raise GrammarError("empty CREATE parameters")
    return Create(mailbox, tuple(uses))


def rename(c: ParseContext) -> Arguments:
    # rename = "RENAME" SP mailbox SP mailbox
    c.r.sp()
    old = c.mailbox()
    c.r.sp()
    return Rename(old, c.mailbox())


def _status_items(r: Reader) -> tuple[str, ...]:
    # "(" status-att *(SP status-att) ")"
    def item() -> str:
        name = r.keyword()
        if name not in STATUS_ITEMS:
            raise GrammarError(f"unknown status item {name}")
        return name

    items = r.sequence(item)
    if not items:
        raise GrammarError("empty status item list")
    return items


def _list_selection(r: Reader) -> frozenset[str]:
    # list-select-opts = "(" [list-select-opt *(SP list-select-opt)] ")"   (RFC 5258 §6)
    selection = frozenset(r.sequence(r.keyword))
    if not selection <= LIST_SELECTION:
        raise GrammarError("unknown LIST selection option")
    if "RECURSIVEMATCH" in selection and not selection & {"SUBSCRIBED", "SPECIAL-USE"}:
        raise GrammarError("RECURSIVEMATCH needs another selection option")
    r.sp()
    return selection


def _list_returns(r: Reader) -> tuple[frozenset[str], tuple[str, ...] | None]:
    # list-return-opts = "RETURN" SP "(" [return-option *(SP return-option)] ")"
    # status-option = "STATUS" SP "(" status-att *(SP status-att) ")"     (RFC 5819)
    if r.keyword() != "RETURN":
        raise GrammarError("expected RETURN")
    r.sp()
    returns: set[str] = set()
    status: tuple[str, ...] | None = None

    def option() -> None:
        nonlocal status
        name = r.keyword()
        if name == "STATUS" and status is None:
            r.sp()
            status = _status_items(r)
        elif name in LIST_RETURNS:
            returns.add(name)
        else:
            raise GrammarError(f"unknown LIST return option {name}")

    r.sequence(option)
    return frozenset(returns), status


def list_mailboxes(c: ParseContext) -> Arguments:
    # list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]   (RFC 5258 §6)
    # mbox-or-pat = list-mailbox / patterns;  patterns = "(" list-mailbox *(SP list-mailbox) ")"
    r = c.r
    r.sp()
    extended = r.peek() == 0x28
    selection = _list_selection(r) if extended else frozenset()
    reference = c.mailbox()
    r.sp()
    if r.peek() == 0x28:
        extended = True
        raw_patterns = r.sequence(lambda: c.pattern(r.list_mailbox()))
        if not raw_patterns:
            raise GrammarError("empty pattern list")
    else:
        raw_patterns = (c.pattern(r.list_mailbox()),)
    patterns = tuple(p for p in raw_patterns if p is not None)  # an invalid one matches no name
    if not patterns:
        c.invalid_mailbox = c.invalid_mailbox or "invalid mailbox name in the pattern"
        patterns = ("",)
    returns: frozenset[str] = frozenset()
    status: tuple[str, ...] | None = None
    if r.accept(b" "):
        extended = True
        returns, status = _list_returns(r)
    _bounded(reference, patterns)
    return ListMailboxes(reference, patterns, selection, returns, status, extended)


def _bounded(reference: str, patterns: tuple[str, ...]) -> None:
    # The server matches reference + pattern (RFC 3501 §6.3.8); bounded so matching stays cheap.
    try:
        check_lengths(reference + p for p in patterns)
    except PatternTooLongError as e:
        raise GrammarError(str(e)) from None


def lsub(c: ParseContext) -> Arguments:
    # lsub = "LSUB" SP mailbox SP list-mailbox
    c.r.sp()
    reference = c.mailbox()
    c.r.sp()
    pattern = c.mailbox_name(c.r.list_mailbox())
    _bounded(reference, (pattern,))
    return Lsub(reference, pattern)


def status(c: ParseContext) -> Arguments:
    # status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    c.r.sp()
    mailbox = c.mailbox()
    c.r.sp()
    return Status(mailbox, _status_items(c.r))


def append(c: ParseContext) -> Arguments:
    # append = "APPEND" SP mailbox 1*append-message                       (RFC 3502 MULTIAPPEND)
    # append-message = append-opts SP append-data
    # append-opts = [SP flag-list] [SP date-time];  append-data = literal / literal8 (RFC 3516)
    #                                               / utf8-literal (RFC 6855 §4)
    r = c.r
    r.sp()
    mailbox = c.mailbox()
    messages: list[AppendMessage] = []
    while not messages or not r.at_end():
        r.sp()
        flags: tuple[str, ...] = ()
        date_time = None
        if r.peek() == 0x28:
            flags = r.flag_list()
            r.sp()
        if r.peek() == 0x22:
            date_time = r.date_time()
            r.sp()
        if r.peek_keyword(b"UTF8"):
            # utf8-literal = "UTF8" SP "(" literal8 ")": a message with UTF-8 headers (RFC 6855 §4)
            if not c.utf8:
                raise GrammarError("UTF8 APPEND data needs ENABLE UTF8=ACCEPT")
            r.keyword()
            r.sp()
            r.expect(b"(")
            if r.peek() != 0x7E:
                raise GrammarError("expected literal8 in UTF8 APPEND data")
            data = r.literal(allow_literal8=True)
            r.expect(b")")
            messages.append(AppendMessage(flags, date_time, data, True))
            continue
        if r.peek_keyword(b"CATENATE"):
            messages.append(AppendMessage(flags, date_time, b"", parts=_catenate(r)))
            continue
        binary = r.peek() == 0x7E
        if r.peek() not in (0x7B, 0x7E):
            raise GrammarError("expected message literal")
        messages.append(AppendMessage(flags, date_time, r.literal(allow_literal8=True), binary))
    return Append(mailbox, tuple(messages))


MAX_CATENATE_PARTS = 100  # per message; each URL is one read of the mailstore


def _cat_part(r: Reader) -> CatenatePart:
    # cat-part = text-literal / url;  text-literal = "TEXT" SP literal;  url = "URL" SP astring
    kind = r.keyword()
    r.sp()
    if kind == "TEXT":
        binary = r.peek() == 0x7E
        return CatenatePart(text=r.literal(allow_literal8=True), binary=binary)
    if kind == "URL":
        url = r.astring()
        if not url.isascii():
            raise GrammarError("a URL is US-ASCII")
        return CatenatePart(url=url.decode("ascii"))
    raise GrammarError(f"unknown CATENATE part {kind}")


def _catenate(r: Reader) -> tuple[CatenatePart, ...]:
    # append-data =/ "CATENATE" SP "(" cat-part *(SP cat-part) ")"   (RFC 4469 §5)
    r.keyword()
    r.sp()
    parts = r.sequence(lambda: _cat_part(r))
    if not parts:
        raise GrammarError("CATENATE needs at least one part")
    if len(parts) > MAX_CATENATE_PARTS:
        raise GrammarError(f"more than {MAX_CATENATE_PARTS} CATENATE parts")
    return parts


def uid_expunge(c: ParseContext) -> Arguments:
    if not c.uid:
        return _NO_ARGUMENTS
    c.r.sp()  # uid-expunge = "UID" SP "EXPUNGE" SP sequence-set   (RFC 4315 §4)
    return SequenceArgument(c.sequence_set())


def search(c: ParseContext) -> Arguments:
    # search = "SEARCH" [search-return-opts] SP search-program         (RFC 9051, RFC 4731)
    # search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    # search-program = ["CHARSET" SP charset SP] search-key *(SP search-key);  charset = atom / quoted
    r = c.r
    r.sp()
    returns, partial = optional_return(r, SEARCH_RETURNS | CONTEXT_RETURNS, "SEARCH")  # RFC 5267 §4
    charset = None
    if r.peek_keyword(b"CHARSET"):
        r.pos += 7
        r.sp()
        raw = r.quoted() if r.peek() == 0x22 else r.atom()
        charset = raw.decode("ascii", "replace").upper()
        r.sp()
    return Search(parse_search_keys(r), charset, returns, partial)


def sort(c: ParseContext) -> Arguments:
    # RFC 5256 §4, RFC 5267 §3 (protocol/ordering.py)
    return parse_sort(c.r)


def cancelupdate(c: ParseContext) -> Arguments:
    # RFC 5267 §4.3.5
    return parse_cancelupdate(c.r)


def thread(c: ParseContext) -> Arguments:
    # RFC 5256 §4
    return parse_thread(c.r)


def fetch(c: ParseContext) -> Arguments:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #         "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
    # fetch-modifier = "CHANGEDSINCE" SP mod-sequence-value / "VANISHED"   (RFC 7162 §7)
    r = c.r
    r.sp()
    sequence_set = c.sequence_set()
    r.sp()
    items = parse_fetch_items(r)
    changed_since: int | None = None
    vanished = False
    if r.accept(b" "):

        def modifier() -> None:
            nonlocal changed_since, vanished
            name = r.keyword()
            if name == "CHANGEDSINCE" and changed_since is None:
                r.sp()
                changed_since = r.number64()
            elif name == "VANISHED" and c.uid:
                vanished = True
            else:
                raise GrammarError(f"invalid FETCH modifier {name}")

        if not r.sequence(modifier):
            raise GrammarError("empty FETCH modifiers")
        if vanished and changed_since is None:
            raise GrammarError("VANISHED requires CHANGEDSINCE")  # RFC 7162 §3.2.6
    return Fetch(sequence_set, items, changed_since, vanished)


def store(c: ParseContext) -> Arguments:
    # store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags
    # store-modifier = "UNCHANGEDSINCE" SP mod-sequence-valzer               (RFC 7162 §7)
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    r = c.r
    r.sp()
    sequence_set = c.sequence_set()
    r.sp()
    unchanged_since: int | None = None
    if r.peek() == 0x28:

        def modifier() -> None:
            nonlocal unchanged_since
            if r.keyword() != "UNCHANGEDSINCE" or unchanged_since is not None:
                raise GrammarError("invalid STORE modifier")
            r.sp()
            unchanged_since = r.number64()

        if not r.sequence(modifier):
            raise GrammarError("empty STORE modifiers")
        r.sp()
    mode = ""
    if r.peek() in (0x2B, 0x2D):
        mode = chr(r.data[r.pos])
        r.pos += 1
    item = r.take_while(ATOM_CHARS).upper()
    if item not in (b"FLAGS", b"FLAGS.SILENT"):
        raise GrammarError("expected FLAGS or FLAGS.SILENT")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        collected = [r.flag()]
        while r.accept(b" "):
            collected.append(r.flag())
        flags = tuple(collected)
    return Store(sequence_set, mode, item == b"FLAGS.SILENT", flags, unchanged_since)


def copy_move(c: ParseContext) -> Arguments:
    # copy = "COPY" SP sequence-set SP mailbox;  move = "MOVE" SP sequence-set SP mailbox (RFC 6851)
    c.r.sp()
    sequence_set = c.sequence_set()
    c.r.sp()
    return CopyMove(sequence_set, c.mailbox())


def id_parameters(c: ParseContext) -> Arguments:
    # id = "ID" SP id-params-list
    # id-params-list = "(" *(string SP nstring) ")" / nil       (RFC 2971 §4)
    r = c.r
    r.sp()
    if r.peek_keyword(b"NIL"):
        r.pos += 3
        return Id(None)

    def pair() -> tuple[str, str | None]:
        key = r.string().decode("utf-8", "replace")
        r.sp()
        value = r.nstring()
        return key, None if value is None else value.decode("utf-8", "replace")

    return Id(r.sequence(pair))


def enable(c: ParseContext) -> Arguments:
    # enable = "ENABLE" 1*(SP capability)   (RFC 5161)
    names: list[str] = []
    while not names or not c.r.at_end():
        c.r.sp()
        names.append(c.r.keyword())
    return Enable(tuple(names))


def compress(c: ParseContext) -> Arguments:
    # compress = "COMPRESS" SP algorithm;  algorithm = "DEFLATE"   (RFC 4978 §4)
    c.r.sp()
    mechanism = c.r.keyword()
    if mechanism != "DEFLATE":
        raise GrammarError(f"unknown compression mechanism {mechanism}")
    return Compress(mechanism)


def getquota(c: ParseContext) -> Arguments:
    # getquota = "GETQUOTA" SP quota-root-name;  quota-root-name = astring   (RFC 9208 §9)
    c.r.sp()
    return QuotaRoot(c.r.text_astring())


def setquota(c: ParseContext) -> Arguments:
    # setquota = "SETQUOTA" SP quota-root-name SP setquota-list
    # setquota-list = "(" [setquota-resource *(SP setquota-resource)] ")"
    # setquota-resource = resource-name SP resource-limit
    r = c.r
    r.sp()
    root = r.text_astring()
    r.sp()

    def resource() -> tuple[str, int]:
        name = r.keyword()
        r.sp()
        return name, r.number64()

    return SetQuota(root, r.sequence(resource))


ArgumentParser = Callable[[ParseContext], Arguments]


@dataclass(frozen=True, slots=True)
class Syntax:
    """How one command's arguments are parsed, and whether it has a UID form
    (command-uid = "UID" SP (copy / move / fetch / search / store / uid-expunge))."""

    parse: ArgumentParser
    uid: bool = False


# The command names and their syntax; derived from the command registry (registry.GRAMMAR), so the
# protocol layer knows no handler.
Grammar = Mapping[str, Syntax]


def parse_command(grammar: Grammar, data: bytes, utf8: bool = False) -> Command | ParseError:
    """Parse one command (without its final CRLF). `utf8`: mailbox names are UTF-8 (RFC 6855)."""
    # command = tag SP (command-any / command-auth / command-nonauth / command-select) CRLF
    context = ParseContext(data, utf8)
    r = context.r
    tag: str | None = None
    try:
        tag = r.tag()
        r.sp()
        name = r.keyword()
        if name == "UID":
            r.sp()
            name = r.keyword()
            syntax = grammar.get(name)
            if syntax is None or not syntax.uid:
                raise GrammarError(f"UID {name} is not a command")
            context.uid = True
        syntax = grammar.get(name)
        if syntax is None:
            raise GrammarError(f"unknown command {name}")
        args = syntax.parse(context)
        r.end()
    except GrammarError as e:
        return ParseError(tag, str(e)[:200])
    return Command(tag, name, args, context.uid, context.invalid_mailbox)
