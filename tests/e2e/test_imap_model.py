"""A randomized multi-session checker (hypothesis stateful testing, issue 15): four raw-socket IMAP
sessions on one account and three mailboxes do APPEND (random flags, new keywords too), STORE
(+FLAGS/-FLAGS/FLAGS, .SILENT, UNCHANGEDSINCE, UID STORE), COPY, MOVE, EXPUNGE, UID EXPUNGE, SEARCH,
FETCH (UID FLAGS [MODSEQ]), NOOP and SELECT/EXAMINE at random (the QRESYNC session also comes
back with SELECT ... (QRESYNC (uidvalidity modseq)), RFC 7162 §3.2.5). Session 1 has CONDSTORE enabled, session
2 QRESYNC, sessions 0 and 3 neither (until a FETCH MODSEQ or UNCHANGEDSINCE enables CONDSTORE).

After every command, for the session that ran it (tests/fixtures/imap_model.py names each rule):
- every keyword a FETCH shows is in the session's latest `* FLAGS` (RFC 3501 §7.2.6);
- EXISTS/EXPUNGE/VANISHED keep its sequence number -> UID map consistent: EXISTS never shrinks the
  view, an EXPUNGEd/VANISHED UID is really gone, EXPUNGE/VANISHED never come during FETCH, STORE or
  SEARCH (RFC 3501 §7.4.1), a UID learnt from FETCH fits between its neighbours and was assigned;
  after NOOP the view is exactly the mailbox and the flags it was told are exactly the true ones;
- UIDs only grow: APPENDUID/COPYUID UIDs above every UID ever assigned in that mailbox, UIDNEXT
  above them and never lower than before, UIDVALIDITY stable;
- a message's MODSEQ never goes below what any session was shown, HIGHESTMODSEQ never below an
  earlier one or a message's MODSEQ; a CONDSTORE-enabling command sends OK [HIGHESTMODSEQ];
- STORE (not .SILENT) and FETCH show the true flags; SEARCH matches the true flags; COPY/MOVE copy
  exactly the addressed messages that exist, MOVE expunges them from the session at once.

The truth is exact because the test drives every session itself, one command at a time: the model
applies each command's effect when its tagged OK arrives, with the UIDs the server assigned
(APPENDUID, COPYUID) and the messages a conditional STORE skipped (MODIFIED). Where an answer
leaves the outcome open (NO to a STORE/COPY/MOVE that addressed a message another session had
expunged), the truth is re-read by a separate observer session (EXAMINE, UID FETCH 1:* FLAGS); the
rule `observe` compares the model with that observer at random points. After each command the
session learns the UIDs of messages announced by EXISTS with `FETCH n:m (UID FLAGS)`, as clients do.
A session may be answered from its own view until it syncs: flags another session changed since its
last NOOP may still be shown, searched and expunged as it last saw them (RFC 3501 leaves the moment
to the server; Dovecot works so). FETCH/STORE/SEARCH checks skip such messages, an EXPUNGE that may
have seen them re-reads the truth (and checks nothing without \\Deleted went), and the NOOP check
holds every session to the exact truth. HIGHESTMODSEQ outside SELECT is checked per session.

Runs:
  .venv/bin/python -m pytest -q tests/e2e/test_imap_model.py                      # CI budget
  MAILSTACK_MODEL_STEPS=5000 .venv/bin/python -m pytest -q tests/e2e/test_imap_model.py   # longer
  MAILSTACK_MODEL_SEED=123 ...                                                    # replay a run
  MAILSTACK_MODEL_SHRINK=0 ...    # report failures unshrunk (shrinking takes up to five minutes)
  MAILSTACK_MODEL_TRANSCRIPT=400 ...  # lines of the interleaved transcript shown on failure (40)
  MAILSTACK_MODEL_TARGET=127.0.0.1:23143 MAILSTACK_MODEL_USER=u20 MAILSTACK_MODEL_PASSWORD=Secret123 \\
  MAILSTACK_MODEL_AVOID=selfmove ...  # against another server (the reference Dovecot: must pass;
      its Maildir gives a message MOVEd into its own mailbox a second new UID now and then, logging
      "Expunged message reappeared", hence selfmove off). Only the run's own mailboxes are touched.
  MAILSTACK_MODEL_AVOID=keywords,condstore,selfmove ...  # skip a check/command while its defect is open:
      keywords = FLAGS before new keywords, condstore = OK [HIGHESTMODSEQ] from the first
      CONDSTORE-enabling command, selfmove = MOVE into the selected mailbox (issue 15 defects 1, 9, 11)
The seed is printed on failure; the test database is off, so a seed replays the same run.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, initialize, precondition, rule

from tests.fixtures import imap_model as m
from tests.fixtures.imap_server import PASSWORD, imap_env
from tests.fixtures.imap_wire import Completion, Wire, format_set, parse_set

pytestmark = pytest.mark.slow

MODES = ("plain", "condstore", "qresync", "plain")
KEYWORDS = ("$label1", "work", "todo")
NEW = "<new>"  # replaced by a keyword never used before in the run
CRITERIA = ("ALL", "DELETED", "UNDELETED", "SEEN", "UNFLAGGED", "KEYWORD work", "UNKEYWORD todo", "KEYWORD $label1")
STEPS_PER_EXAMPLE = 60
CI_STEPS = 1200
AVOID = set(filter(None, os.environ.get("MAILSTACK_MODEL_AVOID", "").split(",")))

sessions = st.integers(0, len(MODES) - 1)
boxes = st.integers(0, 2)
picks = st.lists(st.integers(0, 10_000), min_size=1, max_size=3)
flag_lists = st.lists(st.sampled_from([*m.SYSTEM_FLAGS, *KEYWORDS, NEW]), max_size=3, unique=True)
_runs = itertools.count(1)


@dataclass
class Target:
    host: str
    port: int
    password: str
    account: Callable[[], str]


class ImapModel(RuleBasedStateMachine):
    target: Target

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[m.Session] = []
        self.names: list[str] = []
        self.fresh = itertools.count(1)
        self.wires: list[Wire] = []
        self.transcript: list[str] = []

    def connect(self, user: str, name: str) -> Wire:
        wire = Wire(self.target.host, self.target.port, name, shared=self.transcript)
        self.wires.append(wire)
        assert wire.command(f'LOGIN "{user}" "{self.target.password}"').status == "OK"
        return wire

    @initialize()
    def setup(self) -> None:
        user = self.target.account()
        run = f"mc{os.getpid()}x{next(_runs)}"
        self.names = [f"{run}{c}" for c in "abc"]
        observer = self.connect(user, "obs")
        for name in self.names:
            assert observer.command(f"CREATE {name}").status == "OK"
        self.model = m.Model(self.names, observer, AVOID)
        for name in self.names:  # a few messages to start with, so that early steps have work
            for flags in ((), ("\\Seen",), ("$label1", "\\Flagged")):
                self.put(observer, name, frozenset(flags))
        for i, mode in enumerate(MODES):
            s = m.Session(self.connect(user, f"s{i}"))
            if mode != "plain":
                assert s.wire.command(f"ENABLE {mode.upper()}").status == "OK"
                s.condstore, s.qresync = True, mode == "qresync"
            self.sessions.append(s)
            self.model.sessions.append(s)
            self.open(s, self.names[i % 2], readonly=False)

    def teardown(self) -> None:
        if self.wires:
            observer = self.wires[0]
            try:
                if self.model.observed:
                    observer.command("UNSELECT")
                for name in self.names:
                    observer.command(f"DELETE {name}")  # the run's own mailboxes only
            finally:
                for wire in self.wires:
                    wire.close()

    # ------------------------------------------------------------------ helpers

    def open(self, s: m.Session, name: str, readonly: bool, extra: str = "") -> None:
        done, ctx = self.model.run(s, f"{'EXAMINE' if readonly else 'SELECT'} {name}{extra}", target=name)
        if done.status != "OK":
            self.model.fail(m.CommandFailed, s, f"SELECT {name}: {done.text}")
        self.model.switch_if_pending(ctx)
        s.readonly = readonly
        if s.condstore and not ctx.highestmodseq:
            self.model.fail(
                m.ProtocolWrong, s, "SELECT in a CONDSTORE session without HIGHESTMODSEQ (RFC 7162 §3.1.2.1)"
            )
        self.after(s, ctx)

    def after(self, s: m.Session, ctx: m.Context) -> None:
        self.model.verify(ctx)
        self.model.settle(s)

    def flags(self, chosen: list[str]) -> frozenset[str]:
        return frozenset(m.canon(f"kw{next(self.fresh)}" if f == NEW else f) for f in chosen)

    def targets(self, s: m.Session, chosen: list[int]) -> tuple[list[int], list[int]]:
        seqs = sorted({p % len(s.view) + 1 for p in chosen})
        return seqs, m.seqs_to_uids(s, seqs)

    def box(self, s: m.Session) -> m.MailboxTruth:
        assert s.mailbox is not None
        return self.model.boxes[s.mailbox]

    def enabling(self, s: m.Session, ctx: m.Context, was: bool) -> None:
        if not was and not ctx.highestmodseq and "condstore" not in AVOID:
            self.model.fail(
                m.ProtocolWrong, s, "first CONDSTORE-enabling command without OK [HIGHESTMODSEQ] (RFC 7162 §3.1)"
            )

    # ------------------------------------------------------------------ rules

    @rule(i=sessions, b=boxes, readonly=st.booleans(), resync=st.booleans())
    def select(self, i: int, b: int, readonly: bool, resync: bool) -> None:
        s, name = self.sessions[i], self.names[b]
        box = self.model.boxes[name]
        known = s.remembered.get(name) if s.qresync and resync and name != s.mailbox else None
        # RFC 7162 §3.2.5: what changed since the session left: VANISHED (EARLIER) and FETCH during SELECT
        extra = f" (QRESYNC ({box.uidvalidity} {known}))" if known and box.uidvalidity else ""
        self.open(s, name, readonly, extra)

    @rule(b=boxes)
    def qresync_select(self, b: int) -> None:
        """The QRESYNC session comes back to a mailbox it left (more often than `select` does so)."""
        self.select(MODES.index("qresync"), b, readonly=False, resync=True)

    @rule(i=sessions, b=boxes, chosen=flag_lists)
    def append(self, i: int, b: int, chosen: list[str]) -> None:
        s, name = self.sessions[i], self.names[b]
        flags = self.flags(chosen)
        done, ctx = self.model.run(s, f"APPEND {name} ({' '.join(sorted(flags))})", literal=self.body())
        self.appended(s, name, flags, done)
        self.after(s, ctx)

    @rule(i=sessions, chosen=flag_lists)
    def append_here(self, i: int, chosen: list[str]) -> None:
        """APPEND into the session's own mailbox (EXISTS and new keywords during the command)."""
        s = self.sessions[i]
        if s.mailbox is not None:
            self.append(i, self.names.index(s.mailbox), chosen)

    def body(self) -> bytes:
        return f"From: a@example.test\r\nSubject: m{next(self.fresh)}\r\n\r\nbody\r\n".encode()

    def put(self, wire: Wire, name: str, flags: frozenset[str]) -> None:
        self.appended(None, name, flags, wire.command(f"APPEND {name} ({' '.join(sorted(flags))})", self.body()))

    def appended(self, s: m.Session | None, name: str, flags: frozenset[str], done: Completion) -> None:
        if done.status != "OK" or done.code != "APPENDUID":
            self.model.fail(m.CommandFailed, s, f"APPEND: {done.status} {done.code} {done.text}")
        validity, uid = (int(x) for x in done.code_args.split())
        box = self.model.boxes[name]
        self.model.mailbox_number(s, box, "UIDVALIDITY", validity)
        self.model.new_uid(s, box, uid)
        box.messages[uid] = flags

    @precondition(lambda self: any(s.view and not s.readonly for s in self.sessions))
    @rule(
        i=sessions,
        chosen=picks,
        op=st.sampled_from(["+FLAGS", "-FLAGS", "FLAGS"]),
        flag_names=flag_lists,
        silent=st.booleans(),
        cond=st.sampled_from([None, None, "known", "one"]),
        uid=st.booleans(),
    )
    def store(
        self, i: int, chosen: list[int], op: str, flag_names: list[str], silent: bool, cond: str | None, uid: bool
    ) -> None:
        s = self.sessions[i]
        if not s.view or s.readonly:
            return
        seqs, uids = self.targets(s, chosen)
        flags, box = self.flags(flag_names), self.box(s)
        since = None
        if cond is not None:
            since = 1 if cond == "one" else max([1, *(s.modseq.get(u, 0) for u in uids)])
        was = s.condstore
        s.condstore |= since is not None
        text = m.store_text(uid, format_set(uids if uid else seqs), op, silent, flags, since)
        view_before = list(s.view)
        done, ctx = self.model.run(s, text, no_expunge=not uid)
        if since is not None:
            self.enabling(s, ctx, was)
        if done.status == "NO":
            self.refused(s, text, done.text, uids)
            self.refresh(s, uids)
            return
        modified = parse_set(done.code_args) if done.code == "MODIFIED" else []
        skipped = set(modified if uid else (view_before[n - 1] for n in modified))
        if not skipped <= set(uids):
            self.model.fail(m.ProtocolWrong, s, f"MODIFIED {modified} names messages not addressed")
        for u in uids:
            if u in skipped or u not in box.messages:
                continue
            box.messages[u] = m.apply_store(op, box.messages[u], flags)
            self.model.touched(s, box.name, [u])
            # without .SILENT the session must know the new flags: shown, or unchanged (RFC 3501 §6.4.6)
            if not silent and u in s.view and u not in s.dirty and s.flags.get(u) != box.messages[u]:
                self.model.fail(
                    m.FlagsWrong, s, f"after STORE the session has UID {u} {s.flags.get(u)}, true {box.messages[u]}"
                )
            if u in s.view:
                s.flags[u] = m.apply_store(op, s.flags.get(u, frozenset()), flags)
        self.after(s, ctx)

    @precondition(lambda self: any(s.view and not s.readonly for s in self.sessions))
    @rule(i=sessions, chosen=picks, uid=st.booleans())
    def delete(self, i: int, chosen: list[int], uid: bool) -> None:
        """\\Deleted more often than a random STORE sets it, so that EXPUNGE has work."""
        self.store(i, chosen, "+FLAGS", ["\\Deleted"], True, None, uid)

    def refused(self, s: m.Session, text: str, why: str, uids: list[int]) -> None:
        """NO is acceptable only when another session expunged an addressed message (RFC 3501 §7.4.1)."""
        if all(u in self.box(s).messages for u in uids):
            self.model.fail(m.CommandFailed, s, f"{text} refused though every addressed message exists: {why}")

    def refresh(self, s: m.Session, uids: list[int]) -> None:
        """After a NO the outcome is open: the truth is re-read, the session re-fetches (as clients do)."""
        assert s.mailbox is not None
        self.model.resync(s.mailbox)
        if uids:
            self.after(s, self.model.run(s, f"UID FETCH {format_set(uids)} (UID FLAGS)")[1])
        else:
            self.model.settle(s)

    @precondition(lambda self: any(s.view for s in self.sessions))
    @rule(i=sessions, chosen=picks, b=boxes, uid=st.booleans(), move=st.booleans())
    def copy(self, i: int, chosen: list[int], b: int, uid: bool, move: bool) -> None:
        s, dest_name = self.sessions[i], self.names[b]
        if not s.view or (move and s.readonly) or (move and "selfmove" in AVOID and dest_name == s.mailbox):
            return
        seqs, uids = self.targets(s, chosen)
        src, dest = self.box(s), self.model.boxes[dest_name]
        verb = "MOVE" if move else "COPY"
        done, ctx = self.model.run(s, f"{'UID ' if uid else ''}{verb} {format_set(uids if uid else seqs)} {dest_name}")
        if done.status == "NO":
            self.refused(s, verb, done.text, uids)
            self.model.resync(dest_name)
            self.refresh(s, uids)
            return
        pairs = self.copied(s, ctx.copyuid or (done.code_args if done.code == "COPYUID" else None), uids, dest)
        unknown = False
        for old, new in sorted(pairs, key=lambda p: p[1]):
            self.model.new_uid(s, dest, new)
            if old in src.messages:
                dest.messages[new] = src.messages[old]
            else:
                unknown = True
        if move:
            for old, _ in pairs:
                src.messages.pop(old, None)
            if still := [old for old, _ in pairs if old in s.view]:
                self.model.fail(
                    m.SequenceMapWrong, s, f"MOVE did not expunge UIDs {still} from the session (RFC 6851 §3.3)"
                )
        if unknown:
            self.model.resync(dest_name)
        self.after(s, ctx)

    def copied(self, s: m.Session, copyuid: str | None, uids: list[int], dest: m.MailboxTruth) -> list[tuple[int, int]]:
        """(source UID, new UID) pairs of COPYUID (RFC 4315 §3): exactly the addressed messages that exist."""
        existing = [u for u in uids if u in self.box(s).messages]
        if copyuid is None:
            if existing:
                self.model.fail(m.CommandFailed, s, f"COPY/MOVE OK without COPYUID for existing UIDs {existing}")
            return []
        validity, src_set, dst_set = copyuid.split()
        pairs = list(zip(parse_set(src_set), parse_set(dst_set), strict=False))
        if len(parse_set(src_set)) != len(parse_set(dst_set)) or not {p[0] for p in pairs} <= set(uids):
            self.model.fail(m.CopyWrong, s, f"COPYUID {copyuid} for addressed UIDs {uids}")
        if missing := set(existing) - {p[0] for p in pairs}:
            self.model.fail(m.CopyWrong, s, f"COPY/MOVE left out existing UIDs {sorted(missing)}")
        self.model.mailbox_number(s, dest, "UIDVALIDITY", int(validity))
        return pairs

    @precondition(lambda self: any(not s.readonly for s in self.sessions))
    @rule(i=sessions, uid=st.booleans(), chosen=picks)
    def expunge(self, i: int, uid: bool, chosen: list[int]) -> None:
        s = self.sessions[i]
        if s.readonly or (uid and not s.view):
            return
        box = self.box(s)
        deleted = {u for u, f in box.messages.items() if "\\Deleted" in f}
        # \Deleted as the session sees it, if other sessions changed it since (Dovecot expunges by the session's view)
        stale = {u for u in s.dirty if u in s.view and "\\Deleted" in s.flags.get(u, frozenset())}
        text = "EXPUNGE"
        if uid:
            _, uids = self.targets(s, chosen)
            deleted, stale = deleted & set(uids), stale & set(uids)
            text = f"UID EXPUNGE {format_set(uids)}"
        definite = {u for u in deleted if u in s.view and u not in s.dirty}
        before = set(box.messages)
        done, ctx = self.model.run(s, text)
        if done.status != "OK":
            self.model.fail(m.CommandFailed, s, f"{text}: {done.text}")
        if deleted - definite or stale:
            self.expunged_maybe(s, text, definite, deleted | stale)
        for u in definite:
            box.messages.pop(u, None)
        if still := sorted((before - set(box.messages)) & set(s.view)):
            self.model.fail(m.SequenceMapWrong, s, f"{text} did not announce the expunge of UIDs {still}")
        self.after(s, ctx)

    def expunged_maybe(self, s: m.Session, text: str, definite: set[int], allowed: set[int]) -> None:
        """Some messages' \\Deleted changed in other sessions: what went is read back, and checked."""
        box = self.box(s)
        before = set(box.messages)
        self.model.resync(box.name)
        if wrong := sorted((before - set(box.messages)) - allowed):
            self.model.fail(m.SequenceMapWrong, s, f"{text} removed UIDs {wrong} that had no \\Deleted")
        if kept := sorted(definite & set(box.messages)):
            self.model.fail(m.SequenceMapWrong, s, f"{text} kept UIDs {kept} marked \\Deleted")

    @precondition(lambda self: any(s.mailbox for s in self.sessions))
    @rule(i=sessions, criterion=st.sampled_from(CRITERIA), uid=st.booleans())
    def search(self, i: int, criterion: str, uid: bool) -> None:
        s = self.sessions[i]
        done, ctx = self.model.run(s, f"{'UID ' if uid else ''}SEARCH {criterion}", no_expunge=not uid)
        if done.status != "OK" or ctx.search is None:
            self.model.fail(m.CommandFailed, s, f"SEARCH {criterion}: {done.status} {done.text}")
        assert ctx.search is not None
        box, test = self.box(s), m.predicate(criterion)
        found, view = set(ctx.search), ctx.search_view
        if uid:
            known = [u for u in view if u is not None]
            newest = max(known, default=0)
            if strays := [u for u in found if u not in view and not (None in view and u > newest)]:
                self.model.fail(m.UnknownMessage, s, f"UID SEARCH returned UIDs the session does not know: {strays}")
            numbered = [(u, u) for u in known]
        else:
            if strays := [n for n in found if n > len(view)]:
                self.model.fail(m.UnknownMessage, s, f"SEARCH returned {strays} beyond {len(view)} messages")
            numbered = [(n, u) for n, u in enumerate(view, 1) if u is not None]
        # a session not yet told of another's flag change may be searched as it was (Dovecot does)
        wrong = [
            k for k, u in numbered if u in box.messages and u not in s.dirty and (k in found) != test(box.messages[u])
        ]
        if wrong:
            self.model.fail(m.SearchWrong, s, f"SEARCH {criterion} wrong about {wrong} (found {sorted(found)})")
        self.after(s, ctx)

    @precondition(lambda self: any(s.view for s in self.sessions))
    @rule(i=sessions, chosen=picks, uid=st.booleans(), modseq=st.booleans())
    def fetch(self, i: int, chosen: list[int], uid: bool, modseq: bool) -> None:
        s = self.sessions[i]
        if not s.view:
            return
        seqs, uids = self.targets(s, chosen)
        was = s.condstore
        s.condstore |= modseq
        items = "UID FLAGS MODSEQ" if modseq else "UID FLAGS"
        done, ctx = self.model.run(
            s, f"{'UID ' if uid else ''}FETCH {format_set(uids if uid else seqs)} ({items})", no_expunge=not uid
        )
        if modseq:
            self.enabling(s, ctx, was)
        box = self.box(s)
        if done.status == "OK":
            for u in uids:
                if u in box.messages and u in s.view and u not in s.dirty and ctx.fetched.get(u) != box.messages[u]:
                    self.model.fail(
                        m.FlagsWrong, s, f"FETCH shows UID {u} FLAGS {ctx.fetched.get(u)}, true {box.messages[u]}"
                    )
        self.after(s, ctx)

    @rule(i=sessions)
    def noop(self, i: int) -> None:
        s = self.sessions[i]
        _, ctx = self.model.run(s, "NOOP")
        self.after(s, ctx)
        if s.mailbox is not None:
            self.model.check_synced(s)

    @rule(b=boxes)
    def observe(self, b: int) -> None:
        self.model.compare(self.names[b])


def _settings(steps: int) -> settings:
    return settings(
        max_examples=max(1, -(-steps // STEPS_PER_EXAMPLE)),
        stateful_step_count=STEPS_PER_EXAMPLE,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        phases=list(Phase) if os.environ.get("MAILSTACK_MODEL_SHRINK", "1") != "0" else [Phase.generate],
    )


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    where = os.environ.get("MAILSTACK_MODEL_TARGET")
    if where:
        host, _, port = where.rpartition(":")
        user = os.environ.get("MAILSTACK_MODEL_USER", "u20")
        yield Target(host, int(port), os.environ.get("MAILSTACK_MODEL_PASSWORD", "Secret123"), lambda: user)
        return
    with imap_env(Path(tmp_path_factory.mktemp("imap-model"))) as env:
        yield Target("127.0.0.1", env.port(), PASSWORD, env.new_account)


@pytest.mark.timeout(1200)  # a failure shrinks for up to five minutes
def test_sessions_agree_with_the_model(target: Target) -> None:
    ImapModel.target = target
    steps = int(os.environ.get("MAILSTACK_MODEL_STEPS") or CI_STEPS)
    chosen_seed = int(os.environ.get("MAILSTACK_MODEL_SEED") or random.SystemRandom().randrange(2**32))
    test = hypothesis_seed(chosen_seed)(get_state_machine_test(ImapModel, settings=_settings(steps)))
    try:
        test()
    except BaseException as e:
        e.add_note(f"replay: MAILSTACK_MODEL_SEED={chosen_seed} MAILSTACK_MODEL_STEPS={steps}")
        raise
