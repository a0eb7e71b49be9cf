"""Embedding: tornws's routes inside an existing Tornado app, sharing its login.

python examples/embed.py [PORT]
# log in at http://127.0.0.1:8765/login?name=ann, then chat as ann on
# ws://127.0.0.1:8765/ws/chat/lobby (the signed cookie is the auth)
"""

import asyncio
import sys

import tornado.web

import tornws


class BaseHandler(tornado.web.RequestHandler):
    def get_current_user(self):
        user = self.get_signed_cookie("user")
        return user.decode() if user else None


class MainHandler(BaseHandler):
    def get(self):
        self.write(f"Hello, {self.current_user or 'stranger'}")


class LoginHandler(BaseHandler):
    def get(self):
        self.set_signed_cookie("user", self.get_query_argument("name"))
        self.redirect("/")


def make_app():
    app = tornado.web.Application(
        [(r"/", MainHandler), (r"/login", LoginHandler)],
        cookie_secret="change me: a long random string",
    )
    tornws.add_routes(app, "/ws", user_loader=BaseHandler.get_current_user)
    return app


async def main(port=8765):
    make_app().listen(port, "127.0.0.1")
    print(f"app on http://127.0.0.1:{port}/, WebSockets under /ws/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
