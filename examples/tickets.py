"""Tickets: a signed-in browser gets a short-lived, single-use ticket over HTTP, then
opens the WebSocket with it (the browser WebSocket API cannot send headers).

python examples/tickets.py [PORT]
# log in at http://127.0.0.1:8765/login?name=ann, POST /ticket, then connect to
# ws://127.0.0.1:8765/chat/lobby?ticket=<ticket> within 30 seconds, once.
# Only ann may enter the room "staff", or use the /live channel "staff".
# /live (subprotocol tornws.v1) takes the same tickets: ws://…/live?ticket=<ticket>.
"""

import asyncio
import sys

import tornado.web

import tornws
from tornws.auth import TicketHandler, Tickets, log_request

SECRET = "change me: a long random string"


class BaseHandler(tornado.web.RequestHandler):
    def get_current_user(self):
        user = self.get_signed_cookie("user")
        return user.decode() if user else None


class LoginHandler(BaseHandler):
    def get(self):
        self.set_signed_cookie("user", self.get_query_argument("name"))
        self.write("signed in; now POST /ticket")


def staff_only(user, room):
    return room != "staff" or user == "ann"


def staff_channel(user, channel, action):
    """/live: every action on every channel, but "staff" is ann's alone."""
    return staff_only(user, channel) and tornws.allow_public(user, channel, action)


def make_app():
    tickets = Tickets(SECRET)  # 30 s, single use
    chat = {"tickets": tickets, "room_authorizer": staff_only}
    return tornado.web.Application(
        [
            (r"/login", LoginHandler),
            (
                r"/ticket",
                TicketHandler,
                {"tickets": tickets, "user_loader": BaseHandler.get_current_user},
            ),
            (r"/chat/([A-Za-z0-9_.~-]{1,64})", tornws.ChatHandler, chat),
            (r"/live", tornws.LiveHandler, {"tickets": tickets, "authorizer": staff_channel}),
        ],
        cookie_secret=SECRET,
        log_function=log_request,  # tickets never reach the access log
    )


async def main(port=8765):
    make_app().listen(port, "127.0.0.1")
    print(f"app on http://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
