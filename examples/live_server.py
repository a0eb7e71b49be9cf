"""Live channels in your own Tornado application: ``/live`` with one authorization hook.

Run it and open a tornws.v1 client on ws://127.0.0.1:8765/live (``tornws client
ws://127.0.0.1:8765/live --subscribe news``); sign in by setting the signed ``user``
cookie (your application's login does that).
"""

import asyncio
import sys

import tornado.web

import tornws


def authorize(user, channel, action):
    """Anyone may read; only signed-in users publish; ``staff.*`` is for staff only."""
    if channel.startswith("staff."):
        return user == "admin"
    return action != "publish" or user is not None


def signed_in_user(handler):
    user = handler.get_signed_cookie("user")  # set by your login
    return user.decode() if user else None


def make_app():
    return tornado.web.Application(
        tornws.routes(
            live={"authorizer": authorize},
            user_loader=signed_in_user,
        ),
        cookie_secret="change me",
    )


async def main(port=8765):
    make_app().listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
