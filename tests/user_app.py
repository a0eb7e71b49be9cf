"""An application whose users sign in with ``?user=NAME``: for tests that need users on
``tornws serve --app tests.user_app:make_app`` (a real application reads its session)."""

import tornado.web

import tornws


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        tornws.routes(user_loader=lambda handler: handler.get_query_argument("user", None))
    )


#: The ticket secret of :func:`make_ticket_app` (tests mint with it directly).
TICKET_SECRET = "the ticket secret of the tests"


def make_ticket_app() -> tornado.web.Application:
    """/live taking tickets signed with :data:`TICKET_SECRET`."""
    from tornws.auth import Tickets

    return tornado.web.Application(tornws.routes(tickets=Tickets(TICKET_SECRET)))
