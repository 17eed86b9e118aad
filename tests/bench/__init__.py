"""Benchmarks (`make bench`): start the real stack in a scratch directory and measure it.

Scenario `budget` (the spend issue's): the per-request cost of a client key with a budget
against one without, in one stack (1 web + 2 workers, the throughput scenario's load, 8 s a
run), three runs each, interleaved with the order alternating: on a model without a quota and on
one with a quota. Reported: medians of completions per second, p50, CPU ms and Redis commands
per request.

    python -m tests.bench budget

Scenario `cost`: a model group of a cheap deployment (600 requests a minute) and a dear one
(1,200 a minute) at fake upstreams enforcing those limits, requests sent steadily for 30 s at 8 a
second (the cheap one alone could take them) and at 25 (it cannot), under the `capacity` policy
and then `cost`. Reported: what they cost, how they spread, how long all took, upstream 429s.

    python -m tests.bench cost

Scenario `tiers` (the tiers issue's): one deployment (20 requests a second realtime, at a fake
upstream enforcing it, offering flex and provider batches at half price), time 30 times faster
than a provider's (an hour is 120 s). First a steady interactive load alone (2 a second, 60 s);
then the same load while N batch-class requests with a 1-hour deadline and N with a 24-hour one
are submitted at once. Reported per group: tiers used, deadlines missed, cost against the same
usage at realtime prices; the interactive queue wait alone and beside them; provider 429s on
every tier.

    python -m tests.bench tiers [--requests 1000]

Scenario `pool` (the pipeline issue's choice of Celery pool): N requests submitted at once to a
mock model whose every call takes `latency` seconds, once with the threads pool and once with
gevent, each worker with concurrency N. Reported: wall time until all N succeeded, requests per
second, errors, and the worker's peak resident memory. The better pool is the default in settings.

    python -m tests.bench pool [--requests 500] [--latency 1.0]

Scenario `ratelimit` (the rate-limit issue's targets): the full stack in front of a fake upstream
(over HTTP on 127.0.0.1) that enforces the same limits and answers 429 above them. For a model
whose binding limit is requests per minute, and one whose binding limit is tokens per minute,
N requests are submitted one after another (so submission order is ticket order) far faster than
the limit allows, and each is then awaited. Reported: utilisation of the binding limit over the
run (used / (bucket + rate x duration), target >= 95%), upstream 429s (target 0), order
inversions in the limiter's grant log and at the upstream (target 0), wake-up tasks per request,
and p50/p99 of the grant lag: the time from the moment the head of the line could start (its
cost fit the buckets) to the moment it was granted (target <= 50 ms).

    python -m tests.bench ratelimit [--requests 400]

Scenario `strict` (the edges issue's own): N clients of the official openai SDK, started 20 per
second, each waiting for its answer, on a model limited to 120 requests per minute (a minute's
bucket, full at the start), against a fake upstream enforcing the same bucket strictly.
Reported: answers, run time against the ideal, upstream 429s (target 0), utilisation and
upstream-order inversions.

    python -m tests.bench strict [--requests 400]

Scenario `stream`: the extra time a streamed chunk takes from the upstream to the client through
the balancer (web, Redis stream, worker), on an otherwise idle machine. The fake upstream stamps
every chunk with the time it sent it (CLOCK_MONOTONIC, one clock for all processes); the client
notes when it arrives, once straight from the fake upstream and once through the balancer.

    python -m tests.bench stream [--requests 20]

Scenario `waiting`: N clients at once on the OpenAI-compatible endpoint of one web process, all
held open while their requests wait their turn (a mock model that runs 50 at a time, 1 s each).
Reported: errors, and the web process's peak resident memory.

    python -m tests.bench waiting [--requests 2000]

The next five (the performance issue's) drive the OpenAI-compatible endpoint with a lean
keep-alive HTTP client (tests/loadgen.py) against a lean fake upstream in its own process
(tests/fast_upstream.py), so that nearly all the CPU of a run is the balancer's.

Scenario `overhead`: open loop at 50 and 200 requests per second for 10 s each through
`POST /v1/chat/completions` (fake upstream answering after 20 ms), against the same requests
sent to the fake upstream directly: the latency the balancer adds, p50 and p99 (1 web, 1 worker).

Scenario `throughput`: closed loop, 64 clients sending back to back for 15 s (fake upstream
latency 20 ms), 1 web + 2 workers by default: completions per second and errors, and the cost
of one completion: CPU milliseconds of every process (web, workers, Redis, the fake upstream, the
load generator), Redis commands (INFO commandstats, commands inside Lua scripts included) and
database statements (counted by every process, BALANCER_QUERY_COUNT_DIR).

Scenario `concurrency`: 6,000 clients at once on one web process against a model allowed 1,000
concurrent calls (2 workers of 510 threads): 1,000 calls are held at the upstream until 5,000
more wait in line, the moment memory is read; then everything runs, 2 s per call. Reported:
in flight, waiting, answered, errors, resident memory of every balancer process (web, workers,
Redis) at that moment and at the peak, and how long `GET /health` took (one probe every 100 ms)
while the 5,000 connected.

Scenario `isolation`: 150 calls of 5 s to each of 1, 2 or 3 models at once on one worker of 100
threads, then 20 requests to another model one after the other: one slow model with each
model's share of the worker's threads unbounded (BALANCER_WORKER_MODEL_SHARE=1) and at the
default 0.5; two and three with the reserve for the other models off
(BALANCER_WORKER_RESERVED_SHARE=0) and at the default 0.2; in turns: the other model's time, and
the worker's CPU while the floods are served.

Scenario `scaleout`: 1 web + 1 worker against 2 + 2: unlimited throughput (128 clients), then a
model limited to 9,000 requests per minute (150/s, 1 s burst): its completions per second, and
the limit checked on the limiter's grant log (Redis time) and on the upstream's arrival log.

Scenario `floor`: what the stack's own parts cost on this machine, each alone, before any of the
balancer's work: a plain Django view through uvicorn (`GET /health`), a Celery publish and the
worker's delivery of a no-op task, one `openai` SDK call and the fake upstream's answer to it.
Their sum is the least one completion can cost here; compare it with `throughput`'s table.

    python -m tests.bench overhead
    python -m tests.bench throughput [--webs 1] [--workers 2]
    python -m tests.bench concurrency
    python -m tests.bench scaleout
    python -m tests.bench floor
    python -m tests.bench isolation
"""

from __future__ import annotations

from tests.bench.common import Stack, print_table, stack

__all__ = ["Stack", "print_table", "stack"]
