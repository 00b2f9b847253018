#!/usr/bin/env python3
"""Celery with a Redis broker and result backend, measured for `scripts/bench --broker`.

Run with the interpreter of its own virtual environment (scripts/bench creates it under
target/bench-peers/celery-venv), one metric group per invocation:

    python celery_peer.py GROUP --n N --redis-url URL
        -> {"values": {"metric": x, ...}}  or  {"unsupported": "why"}
    python celery_peer.py info  -> {"info": {...}}

Groups: broker_rtt, broker_tput, requeue_after_kill. Each invocation starts its own
Celery worker (prefork pool, concurrency 2, acks_late, prefetch multiplier 1: the
configuration Celery's docs give for tasks that must survive a worker crash) in a
process group of its own, and kills that group when done.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from celery import Celery

CONCURRENCY = 2
REDIS_URL = os.environ.get("CELERY_PEER_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="add")
def add(a, b):
    return a + b


class Worker:
    """A `celery worker` process group, killed (by its pgid) on exit."""

    def __init__(self, concurrency=CONCURRENCY, hostname="peer"):
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, CELERY_PEER_REDIS_URL=REDIS_URL, PYTHONPATH=here)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "celery_peer", "worker",
                "--pool", "prefork", "--concurrency", str(concurrency),
                "--hostname", f"{hostname}-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING",
            ],
            cwd=here, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def warm_up():
    # The first task also waits for the worker to be up and connected.
    for i in range(20):
        assert add.delay(i, 1).get(timeout=120) == i + 1


def broker_rtt(n, **_):
    with Worker():
        warm_up()
        k = max(1, min(n, 10))
        means = []
        for c in range(k):
            chunk = range(c * n // k, (c + 1) * n // k)
            t = time.perf_counter()
            for i in chunk:
                assert add.delay(i, 1).get(timeout=60) == i + 1
            means.append((time.perf_counter() - t) * 1e6 / len(chunk))
        return {"broker_rtt_us": statistics.median(means)}


def broker_tput(n, **_):
    with Worker():
        warm_up()
        t = time.perf_counter()
        results = [add.delay(i, 1) for i in range(n)]
        for i, r in enumerate(results):
            assert r.get(timeout=600) == i + 1
        return {"broker_tput_per_s": n / (time.perf_counter() - t)}


UNSUPPORTED = {
    "requeue_after_kill": "Celery on a Redis broker hands an unacknowledged task of a killed "
    "worker to another only after the broker's visibility_timeout (default 1 hour, which its "
    "docs say must exceed the longest task's run time, or long tasks run twice); it has no "
    "liveness signal that tells a dead worker from a slow task",
}

GROUPS = {"broker_rtt": broker_rtt, "broker_tput": broker_tput}

# The single-host groups the bench runs beside the broker set (for procpool's ratios).
LOCAL = ("rtt", "tput_strict", "tput_window", "spawn_ready", "fresh_process", "cancel",
         "crash", "blob", "idle_rss", "queued")
for _group in LOCAL:
    UNSUPPORTED[_group] = "a broker-backed queue: compared on the broker set only"


def main(argv):
    global REDIS_URL
    group = argv[1] if len(argv) > 1 else ""
    opts = {}
    rest = argv[2:]
    for key, value in zip(rest[::2], rest[1::2]):
        opts[key.lstrip("-")] = value
    if "redis-url" in opts:
        REDIS_URL = opts["redis-url"]
        app.conf.broker_url = REDIS_URL
        app.conf.result_backend = REDIS_URL
    n = max(1, int(opts.get("n", 1)))
    if group == "info":
        import celery
        import redis
        print(json.dumps({"info": {"celery": celery.__version__, "redis-py": redis.__version__}}))
    elif group in UNSUPPORTED:
        print(json.dumps({"unsupported": UNSUPPORTED[group]}))
    elif group in GROUPS:
        print(json.dumps({"values": GROUPS[group](n)}))
    else:
        print(f"celery_peer.py: unknown group {group!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
