"""A worker with no event loop (a Django view, a Celery task, cron) publishes through Redis
to the tornws processes serving it (tornws serve --broker redis://127.0.0.1:6379/0).

python examples/worker.py redis://127.0.0.1:6379/0 orders '{"item": "tea"}'
"""

import json
import sys

from tornws import Publisher


def notify(redis_url, channel, data):
    with Publisher(redis_url) as publisher:
        position = publisher.publish(channel, data)  # numbered like the servers' own
        publisher.publish("#ann", {"your order": data})  # every connection of user ann
    return position


if __name__ == "__main__":
    print(notify(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
