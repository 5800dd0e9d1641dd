"""What keeps the server standing: API keys, a request rate per key, a bounded amount of model work and a
deadline per request. Each answers with the HTTP status a client can act on (401/403, 429 and 503 with
Retry-After, 504)."""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import HTTPException, Request


class Admission:
    """Counts the inputs admitted to the model's work (being decoded, waiting or in a model call) and refuses a
    request that would take the count over `limit` (503 with Retry-After), so a flood costs the server bounded
    memory and time. Work a request started is counted until it ends, even when the request gave up on it (a
    thread cannot be stopped). Only the event loop touches the count: no lock."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise HTTPException(
                503,
                f"server busy: {self.used} inputs in flight and the queue holds {self.limit}; retry",
                headers={"Retry-After": "1"},
            )
        self.used += n

    def give_when_done(self, n: int, job: asyncio.Future) -> None:
        def give(done: asyncio.Future) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: an abandoned job's error is not logged as unhandled
            self.used -= n

        job.add_done_callback(give)


class RateLimiter:
    """A token bucket per client (API key, or address without auth): `rate` requests per second on average,
    up to `burst` at once. Returns the seconds to wait when a request is over the limit, else 0."""

    MAX_CLIENTS = 10_000  # without auth the clients are addresses: the table is bounded

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst or max(1, int(2 * rate))
        self.buckets: dict[str, tuple[float, float]] = {}

    def wait(self, client: str) -> float:
        now = time.monotonic()
        tokens, last = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.buckets) >= self.MAX_CLIENTS:
            self.buckets.pop(next(iter(self.buckets)))  # the least recently seen
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate


MIN_KEY_CHARS = 16
MAKE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def key_problem(key: str) -> str:
    """Why `key` cannot guard the server ("" when it can). Failed attempts are not rate-limited, so a short
    key is guessed by trying them all; and an HTTP header is read as Latin-1, so a key with a character
    outside printable ASCII never matches what a client sends (every request was 403)."""
    if not all("!" <= c <= "~" for c in key):
        return "has a character outside printable ASCII (or a space), which no HTTP client can send as typed"
    if len(key) < MIN_KEY_CHARS:
        return f"is {len(key)} characters long, quickly guessed: use {MIN_KEY_CHARS} or more"
    return ""


class Access:
    """API keys (Bearer) and, when a rate is set, a request rate per key (per address without auth). Its two
    methods are FastAPI dependencies: `authorize` for the card, metrics and docs; `authorize_and_limit` for
    the model's endpoints."""

    def __init__(self, api_keys: list[str], insecure_no_auth: bool, rate_limit: float, rate_burst: int):
        self.api_keys, self.open = api_keys, insecure_no_auth
        self.rate = rate_limit
        self.limiter = RateLimiter(rate_limit, rate_burst) if rate_limit > 0 else None

    def authorize(self, request: Request) -> None:
        if self.open:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise HTTPException(
                401, "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )
        # compare against every key, always, in constant time per key
        if not any([hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys]):
            raise HTTPException(403, "invalid API key")

    def authorize_and_limit(self, request: Request) -> None:
        """A valid key, then the key's request rate (429 above it)."""
        self.authorize(request)
        if self.limiter is not None:
            client = request.headers.get("authorization", "") if not self.open else ""
            client = client or (request.client.host if request.client else "unknown")
            wait = self.limiter.wait(client)
            if wait > 0:
                raise HTTPException(
                    429,
                    f"rate limit: {self.rate:g} requests/s per key; retry in {wait:.1f} s",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )


async def within_deadline(work, seconds: float):
    """`work`'s result, or 504 after `seconds` (work queued for the model is then dropped, not computed)."""
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise HTTPException(504, f"not answered within the {seconds:g} s deadline") from None
