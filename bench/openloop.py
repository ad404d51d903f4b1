"""Order POSTs from a separate process, open loop (fixed arrival rate) or closed loop.

Open loop: request i is due at start + i/rate whatever the server does, and its latency
counts from that due time, so a slow server cannot slow the clock (no coordinated
omission). Closed loop: `concurrency` buyers each post one order after another until
`count` orders are sent. Both are bounded by `count`, `max_in_flight` and `time_limit`.
Writes one record per request as JSON: due/sent wall times, latency, status, order id.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid

import httpx

ADDRESS = {
    "full_name": "Bench Buyer",
    "line1": "1 Loop Road",
    "city": "Localhost",
    "postal_code": "12345",
    "country": "GB",
}


def order_body(product_id: int) -> dict:
    return {
        "items": [{"product_id": product_id, "quantity": 1}],
        "shipping_address": ADDRESS,
        "payment": {"token": "tok_visa"},
    }


async def post_order(client: httpx.AsyncClient, token: str, product_id: int, due: float) -> dict:
    record = {"due": due, "sent": time.time(), "status": 0, "order_id": None}
    try:
        response = await client.post(
            "/api/v1/orders",
            json=order_body(product_id),
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
        )
        record["status"] = response.status_code
        if response.status_code == 202:
            record["order_id"] = response.json()["id"]
    except httpx.HTTPError as exc:
        record["error"] = type(exc).__name__
    record["latency_ms"] = (time.time() - due) * 1000
    return record


async def open_loop(args, client, tokens, products) -> list[dict]:
    tasks: list[asyncio.Task] = []
    in_flight = asyncio.Semaphore(args.max_in_flight)
    start = time.time() + 0.05
    deadline = time.monotonic() + args.time_limit

    async def one(i: int, due: float) -> dict:
        try:
            return await post_order(
                client, tokens[i % len(tokens)], products[i % len(products)], due
            )
        finally:
            in_flight.release()

    for i in range(args.count):
        due = start + i / args.rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() > deadline:
            break
        await in_flight.acquire()  # past max_in_flight the generator stops being open
        tasks.append(asyncio.create_task(one(i, due)))
    return list(await asyncio.gather(*tasks))


async def closed_loop(args, client, tokens, products) -> list[dict]:
    numbers = itertools.count()
    deadline = time.monotonic() + args.time_limit
    records: list[dict] = []

    async def buyer(b: int) -> None:
        while time.monotonic() < deadline:
            i = next(numbers)
            if i >= args.count:
                return
            records.append(
                await post_order(
                    client, tokens[b % len(tokens)], products[i % len(products)], time.time()
                )
            )

    await asyncio.gather(*(buyer(b) for b in range(args.concurrency)))
    return records


async def main(args) -> None:
    with open(args.tokens_file) as tokens_file:
        tokens = tokens_file.read().split()
    products = [int(p) for p in args.products.split(",")]
    if args.rate:
        # Open loop: each arrival is an independent client on a connection of its own, as
        # behind a load balancer. Reused keep-alive connections would stick to whichever
        # gunicorn process accepted them first and load the processes unevenly.
        limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=0)
    else:
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=30) as client:
        run = open_loop if args.rate else closed_loop
        records = await run(args, client, tokens, products)
    with open(args.out, "w") as out:
        json.dump(records, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens-file", required=True)
    parser.add_argument("--products", required=True, help="comma-separated product ids")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="orders/s; 0 = closed loop")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--out", required=True)
    asyncio.run(main(parser.parse_args()))
