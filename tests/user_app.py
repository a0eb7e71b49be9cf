"""An application whose users sign in with ``?user=NAME``: for tests that need users on
``tornws serve --app tests.user_app:make_app`` (a real application reads its session)."""

import tornado.web

import tornws


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        tornws.routes(user_loader=lambda handler: handler.get_query_argument("user", None))
    )
