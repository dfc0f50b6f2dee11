"""Celery baseline for genq's fleet benchmark: the usual Python setup measured end to end.

RabbitMQ broker, Redis result backend, acks_late, prefetch 64 (2 prefork processes x a
multiplier of 32), a no-op task. Publishes N tasks, runs them in a worker started here, fetches
every result with Celery's fastest read (one ResultSet joined natively: the Redis backend reads
the results in bulk as they land, not one blocking get() at a time), and prints one JSON line:
publish rate, end-to-end jobs/s, p50/p99 latency.
Queue and result keys are private to the run (a random queue name), and removed after.
Run through scripts/celery-bench.sh, which installs Celery into a venv.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from celery import Celery
from celery.result import ResultSet


def make_app(amqp_url, redis_url, queue):
    app = Celery("genq_celery_bench", broker=amqp_url, backend=redis_url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=32,
        task_default_queue=queue,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )

    @app.task(name="genq_celery_bench.noop")
    def noop(i):
        return {"i": i, "finished": time.time()}

    return app, noop


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round((len(sorted_values) - 1) * p)))
    return sorted_values[k]


def worker_ready(log_path, timeout):
    until = time.time() + timeout
    while time.time() < until:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            if "ready." in f.read():
                return True
        time.sleep(0.2)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--queue", default="")
    args = ap.parse_args()

    if args.worker:
        app, _ = make_app(args.amqp_url, args.redis_url, args.queue)
        app.worker_main(["worker", "--pool=prefork", f"--concurrency={args.concurrency}",
                         "--loglevel=INFO", "-Q", args.queue, "-n", f"{args.queue}@%h",
                         "--without-gossip", "--without-mingle", "--without-heartbeat"])
        return

    queue = f"genq-celery-bench-{uuid.uuid4().hex[:8]}"
    app, noop = make_app(args.amqp_url, args.redis_url, queue)
    log = tempfile.NamedTemporaryFile(prefix="celery-bench-", suffix=".log", delete=False)
    worker = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", "--queue", queue,
         "--amqp-url", args.amqp_url, "--redis-url", args.redis_url,
         "--concurrency", str(args.concurrency)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        if not worker_ready(log.name, 120):
            raise SystemExit(f"celery worker did not start; see {log.name}")
        started = time.time()
        sent = []
        for i in range(args.jobs):
            sent.append((time.time(), noop.apply_async((i,), queue=queue)))
        published = time.time()
        values = ResultSet([r for _, r in sent]).join_native(timeout=600)
        finished = time.time()
        latencies = [max(0.0, value["finished"] - t0) for (t0, _), value in zip(sent, values)]
        for _, r in sent:
            r.forget()
        latencies.sort()
        wall = finished - started
        print(json.dumps({
            "system": "celery",
            "celery_version": __import__("celery").__version__,
            "jobs": args.jobs,
            "processes": args.concurrency,
            "prefetch": 32 * args.concurrency,
            "read": "ResultSet.join_native",
            "publish_jobs_per_s": args.jobs / max(1e-9, published - started),
            "jobs_per_s": args.jobs / max(1e-9, wall),
            "seconds": wall,
            "p50_latency_ms": 1000 * percentile(latencies, 0.50),
            "p99_latency_ms": 1000 * percentile(latencies, 0.99),
        }), flush=True)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        with app.connection_for_write() as conn:
            try:
                conn.default_channel.queue_delete(queue)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
        os.unlink(log.name)


if __name__ == "__main__":
    main()
