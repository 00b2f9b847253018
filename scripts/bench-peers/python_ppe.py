#!/usr/bin/env python3
"""Python's concurrent.futures.ProcessPoolExecutor measured for scripts/bench.

One metric group per invocation, standard library only:

    python3 python_ppe.py GROUP --n N [--window W] [--bytes B]
        -> {"values": {"metric": x, ...}}  or  {"unsupported": "why"}
    python3 python_ppe.py info  -> {"info": {...}}

2 workers, fork context (forkserver where fork is refused: max_tasks_per_child).
"""

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time

WORKERS = 2


def add(a, b):
    return a + b


def sleep_s(s):
    time.sleep(s)
    return s


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


_PATTERN = bytes(range(256))


def blob(n):
    # The pattern of procpool's demo `bytes` task, produced per call like there.
    return (_PATTERN * (n // 256 + 1))[:n]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pool(**kw):
    kw.setdefault("mp_context", mp.get_context("fork"))
    return cf.ProcessPoolExecutor(max_workers=WORKERS, **kw)


def call(ex, a):
    v = ex.submit(add, a, 1).result()
    assert v == a + 1


def rtt(n, **_):
    with pool() as ex:
        for i in range(50):
            call(ex, i)
        # Timed in 10 chunks; the median of the chunk means, like the engine does.
        k = max(1, min(n, 10))
        means = []
        for c in range(k):
            chunk = range(c * n // k, (c + 1) * n // k)
            t = time.perf_counter()
            for i in chunk:
                call(ex, i)
            means.append((time.perf_counter() - t) * 1e6 / len(chunk))
        return {"rtt_us": statistics.median(means)}


def tput_strict(n, **_):
    # The executor queues ahead on its own (its call queue holds workers + 1 calls), so
    # the caller keeps exactly one task per worker in flight.
    with pool() as ex:
        for i in range(50):
            call(ex, i)
        t = time.perf_counter()
        pending = {ex.submit(add, i, 1) for i in range(min(WORKERS, n))}
        sent = len(pending)
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in done:
                f.result()
                if sent < n:
                    pending.add(ex.submit(add, sent, 1))
                    sent += 1
        return {"tput_strict_per_s": n / (time.perf_counter() - t)}


def tput_window(n, **_):
    # Everything submitted at once: the executor's own call queue is its window.
    with pool() as ex:
        for i in range(50):
            call(ex, i)
        t = time.perf_counter()
        futures = [ex.submit(add, i, 1) for i in range(n)]
        for i, f in enumerate(futures):
            assert f.result() == i + 1
        return {"tput_window_per_s": n / (time.perf_counter() - t)}


def spawn_ready(n, **_):
    total = 0.0
    for _ in range(n):
        t = time.perf_counter()
        ex = pool()
        call(ex, 1)
        total += time.perf_counter() - t
        ex.shutdown()
    return {"spawn_ready_ms": total * 1e3 / n}


def fresh_process(n, **_):
    # fork refuses max_tasks_per_child; forkserver forks each worker from a clean server.
    with pool(mp_context=mp.get_context("forkserver"), max_tasks_per_child=1) as ex:
        for i in range(WORKERS):
            call(ex, i)
        t = time.perf_counter()
        futures = [ex.submit(add, i, 1) for i in range(n)]
        for i, f in enumerate(futures):
            assert f.result() == i + 1
        return {"fresh_process_per_s": n / (time.perf_counter() - t)}


def crash(n, **_):
    total = 0.0
    for _ in range(n):
        # A crash breaks the whole executor: a new one each time.
        ex = pool()
        call(ex, 1)
        t = time.perf_counter()
        try:
            ex.submit(segfault).result()
            raise AssertionError("a segfault gave a result")
        except cf.process.BrokenProcessPool:
            pass
        total += time.perf_counter() - t
        ex.shutdown()
    return {"crash_detect_ms": total * 1e3 / n}


def blob_group(n, nbytes, **_):
    with pool() as ex:
        assert len(ex.submit(blob, nbytes).result()) == nbytes
        t = time.perf_counter()
        for _ in range(n):
            assert len(ex.submit(blob, nbytes).result()) == nbytes
        mib = nbytes * n / (1 << 20)
        return {"blob_mb_per_s": mib / (time.perf_counter() - t)}


def idle_rss(n, **_):
    with pool() as ex:
        a = ex.submit(sleep_s, 0.005)
        b = ex.submit(sleep_s, 0.005)
        a.result()
        b.result()
        time.sleep(0.02)
        pids = list(ex._processes.keys())
        kib = sum(rss_kib(p) for p in pids)
        return {"idle_worker_rss_mb": kib / len(pids) / 1024}


def queued(n, **_):
    ex = pool()
    call(ex, 1)
    blockers = [ex.submit(sleep_s, 600) for _ in range(WORKERS)]
    deadline = time.time() + 10
    while not all(f.running() for f in blockers) and time.time() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    before = rss_kib(os.getpid())
    futures = [ex.submit(add, i, 1) for i in range(n)]
    time.sleep(0.1)
    after = rss_kib(os.getpid())
    for p in list(ex._processes.values()):
        p.kill()
    out = {"values": {"queued_task_bytes": (after - before) * 1024 / n}}
    print(json.dumps(out), flush=True)
    del futures
    # Skip the interpreter's teardown of a broken executor with n pending futures.
    os._exit(0)


UNSUPPORTED = {
    "cancel": "a running future cannot be cancelled (Future.cancel() returns False once "
    "it runs) and the executor has no per-task kill",
}

GROUPS = {
    "rtt": rtt,
    "tput_strict": tput_strict,
    "tput_window": tput_window,
    "spawn_ready": spawn_ready,
    "fresh_process": fresh_process,
    "crash": crash,
    "blob": blob_group,
    "idle_rss": idle_rss,
    "queued": queued,
}


def main(argv):
    group = argv[1] if len(argv) > 1 else ""
    opts = {}
    rest = argv[2:]
    for key, value in zip(rest[::2], rest[1::2]):
        opts[key.lstrip("-")] = int(value)
    n = max(1, opts.get("n", 1))
    if group == "info":
        print(json.dumps({"info": {"python": sys.version.split()[0]}}))
    elif group in UNSUPPORTED:
        print(json.dumps({"unsupported": UNSUPPORTED[group]}))
    elif group in GROUPS:
        values = GROUPS[group](n, nbytes=opts.get("bytes", 10 << 20), window=opts.get("window", 32))
        print(json.dumps({"values": values}))
    else:
        print(f"python_ppe.py: unknown group {group!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
