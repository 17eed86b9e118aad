"""The rate-limit layer's client: one model's line and buckets in Redis, driven by the Lua
scripts in ratelimit/lua/ (loaded once per process, called by SHA).

A limited model's requests take a ticket at submission (`enqueue`); tickets order the line. A worker may start only the
head of the line, and only when every bucket holds the head's estimated cost and a concurrency
slot is free (`acquire`). When the head must wait, exactly one wake-up task is scheduled with a
countdown equal to the exact deficit divided by the refill rate; tasks for requests behind the
head are parked (acknowledged, no message kept): each start, cancellation and settlement wakes
the next head, and every worker's periodic `watch` re-wakes a line whose wake-up was lost.
After the call, `settle` returns the slot and refunds or charges the difference between the
reservation and the real usage.

A model group's line serves several deployments (`configure_group`): each has its own quota,
buckets and slots, the head goes to one that can take it now (by the group's policy), and a
deployment that fails cools down (see ratelimit/lua/_lib.lua and settle.lua).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import redis
from redis.exceptions import NoScriptError

from balancer_project.redis_conn import get_redis, registered_script

LUA_DIR = Path(__file__).parent / "lua"
KEY_NAMES = (
    "cfg",
    "b",
    "line",
    "cost",
    "dl",
    "fly",
    "res",
    "wake",
    "seq",
    "sum",
    "stats",
    "hs",
    "lag",
    "grants",
    "hdr",
)
T = TypeVar("T")


def line_keys(line: str) -> list[str]:
    """Redis keys of one model's line; the {hash tag} keeps them on one Cluster slot."""
    return [f"rl:{{{line}}}:{name}" for name in KEY_NAMES]


# Scripts that act on no line: they get only the budget functions, not the line's prelude.
_LINELESS = frozenset({"budget"})


@functools.cache
def _source(name: str) -> str:
    parts = ["_primary", "_budget", name] if name in _LINELESS else ["_primary", "_lib", "_budget", name]
    return "\n".join((LUA_DIR / f"{part}.lua").read_text() for part in parts)


def _script(client: redis.Redis, name: str) -> Any:
    return registered_script(client, f"ratelimit/{name}", lambda: _source(name))


def _eval(name: str, line: str, *args: Any, extra_keys: list[str] | None = None) -> Any:
    client = get_redis()
    keys = line_keys(line) + (extra_keys or []) if line else list(extra_keys or [])
    return _script(client, name)(keys=keys, args=[str(a) for a in args], client=client)


def _call(name: str, line: str, *args: Any, extra_keys: list[str] | None = None) -> list[str]:
    return list(_eval(name, line, *args, extra_keys=extra_keys))


@dataclass(frozen=True)
class Wake:
    """A wake-up the caller must publish for the line's head, `countdown` seconds from now; the
    task brings `at` back to acquire, which so knows it is the pending wake-up being served."""

    countdown: float
    at: str = ""


def _wake(flag: str, seconds: str, at: str) -> Wake | None:
    return Wake(float(seconds), at) if flag == "1" else None


# The deployment of a grant that no deployment of its line may take any more.
NO_DEPLOYMENT = "-"


class SettleMode(StrEnum):
    """How settle.lua settles a reservation."""

    USAGE = "usage"  # charge the real usage
    REFUND = "refund"  # never processed upstream: everything back
    TOKENS = "tokens"  # refused upstream: the request counted, its tokens back
    KEEP = "keep"  # outcome unknown (a 5xx): the whole reservation stands


class GrantOutcome(StrEnum):
    """What acquire.lua said of a request (see its header)."""

    GO = "go"
    WAIT = "wait"
    PARKED = "parked"
    GONE = "gone"


@dataclass(frozen=True)
class Grant:
    """acquire's answer (see acquire.lua). deployment: where a GO goes on a group's line ("" on
    any other line, NO_DEPLOYMENT when none may take it)."""

    outcome: GrantOutcome
    request_id: str
    wake: Wake | None
    expired: list[str] = field(default_factory=list)
    deployment: str = ""

    @classmethod
    def decode(cls, r: list[str]) -> Grant:
        outcome, request_id, publish, countdown, deployment, at, *expired = r
        return cls(GrantOutcome(outcome), request_id, _wake(publish, countdown, at), expired, deployment)


@dataclass(frozen=True)
class Settled:
    """settle's answer: whether this call settled the reservation (False: it was settled
    already), the request's ticket in line, and the wake-up to publish."""

    settled: bool
    ticket: float | None
    wake: Wake | None

    @classmethod
    def decode(cls, r: list[str]) -> Settled:
        settled, publish, countdown, ticket, at = r
        return cls(settled == "1", float(ticket) if ticket else None, _wake(publish, countdown, at))


@dataclass(frozen=True)
class Retry:
    """An attempt that failed transiently goes back to its own place in line, to start no sooner
    than `in_seconds` from now; `max_wait`: what is left of its deadline (None: none)."""

    in_seconds: float
    max_wait: float | None = None


@dataclass(frozen=True)
class Throttled:
    """A provider's 429: its bucket is short. `hold`: seconds it asked us to wait (None: it did
    not say); `remaining`: what its headers say is left, by bucket (req, tok, in, out)."""

    hold: float | None = None
    remaining: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """What an attempt showed of its deployment (used on a group's line). fault: "ok", "auth"
    (its key refused), "down" (unreachable), "error" (5xx, timeout); latency: seconds of the
    upstream call (None: unknown)."""

    fault: str
    latency: float | None = None


def budget_key(scope: str, period: int) -> str:
    """The hash of one budget period: `scope` is the line of the key or group it belongs to (its
    hash tag), `period` the period's start (seconds since 1970)."""
    return f"rl:{{{scope}}}:budget:{period}"


@dataclass(frozen=True)
class Budgets:
    """What a request reserves at admission: `amount` micro-dollars from each of `keys` (budget
    periods, budget_key), whose hard maximums are `limits` (micro-dollars) and whose hashes are
    kept `ttls` seconds."""

    keys: list[str]
    limits: list[int]
    ttls: list[int]
    amount: int

    def args(self) -> list[Any]:
        out: list[Any] = [self.amount, len(self.keys)]
        for limit, ttl in zip(self.limits, self.ttls, strict=True):
            out += [limit, ttl]
        return out


class BudgetRefused(Exception):
    """A budget could not take a request's worst case: `index` (into Budgets.keys) says which;
    `left`: micro-dollars it had left."""

    def __init__(self, index: int, left: int) -> None:
        super().__init__(f"budget {index} has {left} micro-dollars left")
        self.index, self.left = index, left


class BudgetUnknown(Exception):
    """A budget period Redis does not hold (never seen, or lost with its data): build it from the
    database (budget_init) and ask again. `index` into Budgets.keys."""

    def __init__(self, index: int) -> None:
        super().__init__(f"budget {index} is not built")
        self.index = index


class LineLost(Exception):
    """A line the caller's registry gives a quota has no configuration in Redis: Redis lost its
    data. Write the line again (configure it from the database, then restore) and ask again;
    until then anything let in would go unlimited."""

    def __init__(self, line: str) -> None:
        super().__init__(f"Redis holds no configuration of line {line}")
        self.line = line


def _budget_refusal(kind: str, index: str, left: str) -> Exception:
    if kind == "unknown":
        return BudgetUnknown(int(index) - 1)
    return BudgetRefused(int(index) - 1, int(float(left)))


def budget_reserve(request_id: str, budgets: Budgets) -> None:
    """Reserve for a request that joins no line (enqueue reserves for the others). Raises
    BudgetRefused or BudgetUnknown."""
    r = _call("budget", "", "reserve", request_id, *budgets.args(), extra_keys=budgets.keys)
    if r[0] != "ok":
        raise _budget_refusal(*r)


def budget_settle_in(pipe: Any, request_id: str, keys: list[str], charge: int) -> Pending[bool]:
    """Settle a request's reservations in `keys` for `charge` micro-dollars, as one more command
    of the caller's pipeline (a repeated settlement does nothing)."""
    return Pending(pipe, "budget", "", ["settle", request_id, charge], lambda r: r[0] == 1, keys=keys)


def budget_init(key: str, *, spent: int, reserved: dict[str, int], ttl: int) -> bool:
    """Build a budget period from the database's figures (`reserved`: request id -> micro-dollars
    of those still open), unless another process built it meanwhile. Whether this call did."""
    args: list[Any] = ["init", spent, ttl]
    for request_id, amount in reserved.items():
        args += [request_id, amount]
    return int(_eval("budget", "", *args, extra_keys=[key])[0]) == 1


@dataclass(frozen=True)
class BudgetFigures:
    """One budget period as Redis holds it (micro-dollars); `built`: False when Redis has none."""

    spent: int
    reserved: int
    open: int
    built: bool


def budget_read(keys: list[str]) -> list[BudgetFigures]:
    if not keys:
        return []
    rows = _eval("budget", "", "read", extra_keys=keys)
    return [BudgetFigures(int(a), int(b), int(c), d == "1") for a, b, c, d in rows]


def budget_open(key: str) -> list[str]:
    """The requests holding a reservation of a budget period."""
    return [str(x) for x in _call("budget", "", "open", extra_keys=[key])]


def enqueue(
    line: str,
    request_id: str,
    *,
    input_tokens: int,
    output_tokens: int,
    max_wait: float | None = None,
    ticket: int | None = None,
    deployments: list[str] | None = None,
    flow: str = "",
    weight: float = 1,
    priority: int = 1,
    place: float | None = None,
    absent: bool = False,
    configured: bool = False,
    budgets: Budgets | None = None,
) -> tuple[int, int]:
    """Take a place in line: by its arrival `ticket` (any integer that orders arrivals, e.g. the
    arrival time in microseconds; without one, after everyone, by the line's counter) on a fifo
    line, or by its `flow`'s start tag (weighted by `weight`) on a fair one; in its `priority`
    class (0 interactive, 1 default, 2 batch). `place`: the place it had (a score settle or
    enqueue returned), to go back to. `max_wait`: it leaves the line as expired after that many
    seconds. `deployments`: on a group's line, the only ones it may go to (None: any). With
    `absent`, only if it neither waits in the line nor holds a reservation of it (checked and
    done in one step). `configured`: the caller's registry gives the line a quota (raises
    LineLost, nothing done, where Redis holds no configuration of it). `budgets`: what a
    request's first entry reserves in the same step (raises BudgetRefused or BudgetUnknown,
    nothing done). Returns (place, position); position -1 when `absent` found it there."""
    r = _call(
        "enqueue",
        line,
        request_id,
        input_tokens,
        output_tokens,
        "" if max_wait is None else f"{max(max_wait, 0):.6f}",
        "" if ticket is None else ticket,
        "|".join(deployments or ()),
        flow,
        weight,
        priority,
        "" if place is None else f"{place:.17g}",
        "1" if absent else "",
        "1" if configured else "",
        *(budgets.args() if budgets else [""]),
        extra_keys=budgets.keys if budgets else None,
    )
    if r[1] == "-2":
        raise _budget_refusal(*r[2:5])
    if r[1] == "-3":
        raise LineLost(line)
    return int(float(r[0] or 0)), int(r[1])


def take(
    line: str,
    request_id: str,
    *,
    input_tokens: int,
    output_tokens: int,
    lease_seconds: float,
    configured: bool = False,
) -> float | None:
    """Take the cost now without joining the line: None when taken (settle it later like a
    grant), else the seconds until the buckets would hold it. `configured`: as enqueue's."""
    r = _call("take", line, request_id, input_tokens, output_tokens, lease_seconds, "1" if configured else "")
    if r[0] == "-3":
        raise LineLost(line)
    return None if r[0] == "1" else float(r[1])


def restore(line: str, *, empty: bool, running: bool) -> int:
    """Start a line Redis lost, whose configuration was just written again (restore.lua): its
    buckets empty (`empty`: calls were made within a bucket's span) or full; with `running`
    (calls of it still run), its concurrency slots unknown until those calls renew theirs.
    Returns how many buckets started."""
    return int(_eval("restore", line, "1" if empty else "", "1" if running else ""))


def acquire(
    line: str,
    request_id: str | None,
    *,
    lease_seconds: float,
    token: str = "",
    wake_at: str = "",
    settling_seconds: float = 0.0,
) -> Grant:
    """Start `request_id` (None: whichever is head, for a wake-up task: `wake_at` is the `at` it
    was published with) if it may start now. `token`: the fencing token of the attempt the grant
    is for; only its settlement and renewals act on the reservation. `lease_seconds`: how long
    the slot is held unless renewed (renew_in). `settling_seconds`: on a line whose slots are
    renewed, how long a deployment with a concurrency limit takes nothing new after Redis may
    have lost some of its slots (a failover to a replica that lacked the last grants), while the
    calls still running put theirs back (renew_in)."""
    return Grant.decode(
        _call("acquire", line, request_id or "", lease_seconds, token, wake_at, settling_seconds)
    )


def _settle_args(
    request_id: str,
    mode: SettleMode,
    input_tokens: int,
    output_tokens: int,
    retry: Retry | None,
    throttled: Throttled | None,
    health: Health | None = None,
    token: str = "",
) -> list[Any]:
    args: list[Any] = [
        request_id,
        mode,
        input_tokens,
        output_tokens,
        "" if retry is None else f"{max(retry.in_seconds, 0):.6f}",
        "" if retry is None or retry.max_wait is None else f"{max(retry.max_wait, 0):.6f}",
        "1" if throttled is not None else "0",
        "" if throttled is None or throttled.hold is None else f"{throttled.hold:.6f}",
        "" if health is None else health.fault,
        "" if health is None or health.latency is None else f"{health.latency:.6f}",
        token,
    ]
    for name, value in (throttled.remaining if throttled else {}).items():
        args += [name, value]
    return args


def settle(
    line: str,
    request_id: str,
    *,
    mode: SettleMode,
    input_tokens: int = 0,
    output_tokens: int = 0,
    retry: Retry | None = None,
    throttled: Throttled | None = None,
    health: Health | None = None,
    token: str = "",
) -> Settled:
    """End an attempt (see settle.lua and SettleMode). Returns the concurrency
    slot. With `retry`, the request is back in its own place in the same step. With `token`,
    only if the reservation is that attempt's (a stale attempt changes nothing)."""
    args = _settle_args(request_id, mode, input_tokens, output_tokens, retry, throttled, health, token)
    return Settled.decode(_call("settle", line, *args))


class Pending(Generic[T]):
    """A script queued in the caller's pipeline; `result(replies)` decodes its reply once the
    pipeline ran (executed with raise_on_error=False)."""

    def __init__(
        self,
        pipe: Any,
        name: str,
        line: str,
        args: list[Any],
        decode: Callable[[Any], T],
        keys: list[str] | None = None,
    ) -> None:
        self.index = len(pipe)
        self.name, self.line, self.args, self.decode = name, line, args, decode
        self.extra_keys = keys
        keys = (line_keys(line) if line else []) + (keys or [])
        # EVALSHA alone: redis-py would otherwise ask SCRIPT EXISTS on every execute.
        pipe.evalsha(_script(get_redis(), name).sha, len(keys), *keys, *(str(a) for a in args))

    def result(self, replies: list[Any]) -> T:
        reply = replies[self.index]
        if isinstance(reply, NoScriptError):  # Redis restarted: run it again the usual way
            reply = _eval(self.name, self.line, *self.args, extra_keys=self.extra_keys)
        elif isinstance(reply, Exception):
            raise reply
        return self.decode(reply)


def settle_in(
    pipe: Any,
    line: str,
    request_id: str,
    *,
    mode: SettleMode,
    input_tokens: int = 0,
    output_tokens: int = 0,
    retry: Retry | None = None,
    throttled: Throttled | None = None,
    health: Health | None = None,
    token: str = "",
) -> Pending[Settled]:
    """`settle` as one more command of the caller's pipeline; `health`: what the attempt showed
    of its deployment (a group's line cools a failing one down)."""
    args = _settle_args(request_id, mode, input_tokens, output_tokens, retry, throttled, health, token)
    return Pending(pipe, "settle", line, args, lambda r: Settled.decode(list(r)))


def renew_in(
    pipe: Any, line: str, request_id: str, *, token: str, lease_seconds: float, deployment: str = "-"
) -> Pending[bool]:
    """Renew the lease of an attempt's slot for `lease_seconds` from now, as one more command of
    the caller's pipeline; its result is False when the reservation is another attempt's (this
    one has lost the request). `deployment`: the one its grant named ("" on a line without
    deployments); where Redis lost the grant (a failover to a replica that lacked it), the
    renewal puts the slot back there."""
    return Pending(
        pipe, "renew", line, [request_id, token, lease_seconds, deployment], lambda r: list(r)[0] == "1"
    )


def leave(line: str, request_id: str) -> tuple[bool, Wake | None]:
    left, publish, countdown, at = _call("leave", line, request_id)
    return left == "1", _wake(publish, countdown, at)


def watch(line: str, *, grace: float) -> tuple[Wake | None, list[str]]:
    publish, countdown, at, *expired = _call("watch", line, grace)
    return _wake(publish, countdown, at), expired


BUCKETS = ("requests", "tokens", "input_tokens", "output_tokens")


def _per_bucket(joined: str) -> dict[str, float | None]:
    return {name: (float(v) if v != "" else None) for name, v in zip(BUCKETS, joined.split(","), strict=True)}


@dataclass
class DeploymentStatus:
    """One deployment of a group's line: its slots in use, levels and limits in force (as in
    LineStatus), the seconds its cooldown has left (0: none), the failures in a row that caused
    it (strikes) and the last one's kind, its grants, and its recent latency (None: unmeasured)."""

    id: str
    in_flight: int
    levels: dict[str, float | None]
    limits_in_force: dict[str, float | None]
    cooling_seconds: float
    strikes: int
    fault: str
    granted: int
    latency_seconds: float | None

    @classmethod
    def decode(cls, entry: str) -> DeploymentStatus:
        dep, fly, levels, in_force, cool, strikes, fault, granted, latency = entry.split("|")
        return cls(
            dep,
            int(fly),
            _per_bucket(levels),
            _per_bucket(in_force),
            float(cool),
            int(strikes),
            fault,
            int(granted),
            float(latency) if latency else None,
        )


@dataclass
class FlowStatus:
    """One flow (client key) of a line: requests waiting now; over the last minute, its share of
    the tokens granted, its grants, and its wait in line (p50, max; seconds)."""

    flow: str
    waiting: int
    share: float
    granted: int
    wait_p50: float
    wait_max: float

    @classmethod
    def decode(cls, entry: str) -> FlowStatus:
        _, flow, waiting, share, granted, p50, most = entry.split("|")
        return cls(flow, int(waiting), float(share), int(granted), float(p50), float(most))


@dataclass
class LineStatus:
    waiting: int
    in_flight: int
    levels: dict[str, float | None]
    estimated_wait_seconds: float
    granted: int
    wakes: int
    expired: int
    limits_in_force: dict[str, float | None]
    deployments: list[DeploymentStatus] = field(default_factory=list)
    flows: list[FlowStatus] = field(default_factory=list)


@dataclass(frozen=True)
class Place:
    """Where a waiting request stands: `position` in its line (0: next) and the seconds until it
    may start, estimated from the costs ahead of it and the line's rates."""

    position: int
    estimated_wait_seconds: float


def place(line: str, request_id: str) -> Place | None:
    """`request_id`'s place in `line`, or None when it is not waiting there."""
    position, wait = _call("place", line, request_id)
    return None if position == "" else Place(int(position), float(wait))


def status(line: str, *, input_tokens: int, output_tokens: int) -> LineStatus:
    return _status_decode(_call("status", line, input_tokens, output_tokens))


def statuses(lines: list[tuple[str, int, int]]) -> list[LineStatus]:
    """`status` of many lines, each (line, input_tokens, output_tokens), in one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    pending = [Pending(pipe, "status", line, [i, o], _status_decode) for line, i, o in lines]
    replies = pipe.execute(raise_on_error=False) if pending else []
    return [p.result(replies) for p in pending]


def _status_decode(reply: Any) -> LineStatus:
    r = list(reply)
    return LineStatus(
        int(r[0]),
        int(r[1]),
        _per_bucket(r[2]),
        float(r[3]),
        int(r[4]),
        int(r[5]),
        int(r[6]),
        _per_bucket(r[7]),
        [DeploymentStatus.decode(e) for e in r[8:] if not e.startswith("f|")],
        sorted((FlowStatus.decode(e) for e in r[8:] if e.startswith("f|")), key=lambda f: f.flow),
    )


def adapt(line: str, reported: dict[str, float], deployment: str = "") -> int:
    """Tell the line the per-minute limits the provider reported (rpm, tpm, itpm, otpm) for
    `deployment` ("": the line's own); returns how many of them are now in force instead of the
    quota."""
    return int(_eval("adapt", line, *_adapt_args(reported, deployment))) if reported else 0


def adapt_in(pipe: Any, line: str, reported: dict[str, float], deployment: str = "") -> Pending[int]:
    """`adapt` as one more command of the caller's pipeline."""
    return Pending(pipe, "adapt", line, _adapt_args(reported, deployment), int)


def _adapt_args(reported: dict[str, float], deployment: str) -> list[Any]:
    args: list[Any] = [deployment]
    for name, value in reported.items():
        args += [name, value]
    return args


def configure(line: str, limits: dict[str, float] | None) -> None:
    """Write a model's quota where every process's scripts read it (None: unlimited)."""
    client = get_redis()
    cfg_key = line_keys(line)[0]
    pipe = client.pipeline()
    pipe.delete(cfg_key)
    if limits:
        pipe.hset(cfg_key, mapping={k: v for k, v in limits.items() if v is not None})
    pipe.execute()


def deployment_key(line: str, deployment: str, name: str) -> str:
    """A key of one deployment of a group's line (same hash tag as the line's; see _lib.lua)."""
    return f"rl:{{{line}}}:d:{deployment}:{name}"


def configure_group(
    line: str,
    *,
    deployments: dict[str, dict[str, float] | None],
    policy: str,
    cooldown: dict[str, float],
    scheduling: str = "fifo",
    aging: float = 30.0,
    max_countdown: float = 60.0,
) -> None:
    """Make `line` a group's line: its deployments (id → its quota's limits and weight;
    None or only a weight: unlimited), in order of preference on ties, the policy that picks
    among them, the cooldown rule (cool, cool_max seconds; fails in a row), its scheduling
    (fifo, or fair between flows) and the seconds after which a waiting request moves up a
    priority class; `max_countdown`: the longest a wake-up task waits (a longer wait is a chain of
    them). A deployment no longer listed takes no new requests."""
    client = get_redis()
    pipe = client.pipeline()
    cfg_key = line_keys(line)[0]
    pipe.delete(cfg_key)
    pipe.hset(
        cfg_key,
        mapping={
            "deps": ",".join(deployments),
            "policy": policy,
            "sched": scheduling,
            "aging": aging,
            "maxc": max_countdown,
            **{k: v for k, v in cooldown.items()},
        },
    )
    for dep, limits in deployments.items():
        key = deployment_key(line, dep, "cfg")
        pipe.delete(key)
        if limits:
            pipe.hset(key, mapping={k: v for k, v in limits.items() if v is not None})
    pipe.execute()


def members(line: str, count: int) -> list[str]:
    """The first `count` request ids waiting in `line`, head first."""
    found = get_redis().zrange(line_keys(line)[KEY_NAMES.index("line")], 0, count - 1)
    return [x for x in found if isinstance(x, str)]  # decoded replies


def holders(line: str, *, lease_ends_before: float) -> list[str]:
    """Requests holding a slot of `line` (a line without deployments) whose lease ends before
    `lease_ends_before` (Redis time, s)."""
    found = get_redis().zrangebyscore(line_keys(line)[KEY_NAMES.index("fly")], "-inf", lease_ends_before)
    return [x for x in found if isinstance(x, str)]  # decoded replies


def redis_now() -> float:
    seconds, micros = get_redis().time()
    return float(seconds + micros / 1e6)


def in_line(line: str, request_id: str) -> bool:
    return get_redis().zscore(line_keys(line)[KEY_NAMES.index("line")], request_id) is not None


def grant_lags(line: str, count: int = 10000) -> list[float]:
    """Recent delays between a head being able to start and being granted (s), newest first
    (the last five minutes, at most 10,000)."""
    raw: list[str] = get_redis().lrange(line_keys(line)[KEY_NAMES.index("lag")], 0, count - 1)  # type: ignore[assignment]
    return [float(x.partition("@")[0]) for x in raw]  # "lag@time"


def grants(line: str, count: int = 10000) -> list[tuple[int, float]]:
    """Recent grants as (ticket, Redis time), newest first."""
    return [(ticket, at) for kind, ticket, at in audit(line, count) if kind == "grant"]


def audit(line: str, count: int = 10000) -> list[tuple[str, int, float]]:
    """The line's recent grants and retry re-entries as (kind, ticket, Redis time), newest first;
    kind is "grant" or "reentry" (a retried request back in its own place)."""
    raw: list[str] = get_redis().lrange(line_keys(line)[KEY_NAMES.index("grants")], 0, count - 1)  # type: ignore[assignment]
    return [
        ("reentry", int(float(t[1:])), float(at))
        if t.startswith("r")
        else ("grant", int(float(t)), float(at))
        for t, _, at in (x.partition("@") for x in raw)
    ]


def grant_tickets(line: str, count: int = 10000) -> list[int]:
    """Tickets of the recent grants, newest first: in a strict FIFO line they only ever go down."""
    return [ticket for ticket, _ in grants(line, count)]


def forget(line: str, deployment: str = "") -> bool:
    """Delete every key of `line` (with `deployment`: only that deployment's keys of a group's
    line), unless requests wait in it or hold its slots: then nothing, and False. For a line
    whose model, group, quota or key is gone."""
    client = get_redis()
    keys = line_keys(line)
    if deployment:
        if client.zcard(deployment_key(line, deployment, "fly")):
            return False
        client.delete(*client.scan_iter(match=f"rl:{{{line}}}:d:{deployment}:*", count=1000))
        return True
    if client.zcard(keys[KEY_NAMES.index("line")]) or client.hlen(keys[KEY_NAMES.index("res")]):
        return False
    client.delete(*keys, *client.scan_iter(match=f"rl:{{{line}}}:*", count=1000))
    return True


def reset(line: str) -> None:
    """Forget a line entirely: every key under its hash tag, its deployments' and flows' too
    (tests and benchmarks)."""
    client = get_redis()
    client.delete(*line_keys(line), *client.scan_iter(match=f"rl:{{{line}}}:*"))
