"""The console's login: a one-time ticket becomes a session; tickets expire and are good once."""

from __future__ import annotations

from lattice.server.console import SESSION_SECONDS, TICKET_SECONDS, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_is_good_once():
    sessions = Sessions()
    ticket = sessions.ticket()
    session = sessions.redeem(ticket)
    assert session and sessions.valid(session)
    assert sessions.redeem(ticket) is None
    assert not sessions.valid("made-up") and not sessions.valid(None) and not sessions.valid(ticket)


def test_tickets_and_sessions_expire():
    clock = Clock()
    sessions = Sessions(clock)
    late = sessions.ticket()
    clock.now += TICKET_SECONDS + 1
    assert sessions.redeem(late) is None
    session = sessions.redeem(sessions.ticket())
    clock.now += SESSION_SECONDS + 1
    assert not sessions.valid(session)
