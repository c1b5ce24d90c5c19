"""One request in flight against a running lab, from a client that is not the project's own.

Python's grpcio (gRPC's C core) calls echo (grpc.health.v1 Check on purchases-async),
purchases-async and purchases-sync one after another, in rounds, and prints each round's p50s
and the ratios the bench's aims read: async / echo and sync / (3 x echo), each against the
echo of its own round. Requests are encoded by hand, so nothing is generated from the protos.

    pip install grpcio
    cargo run --release -p lab -- --data-dir D up --ephemeral-ports &   # then, once serving:
    cargo run --release -p lab -- --data-dir D seed
    python3 benches/clients/one_in_flight.py D [--rounds 3] [--calls 3000] [--page-size 10]

Trace sampling is set to 0 on every service first, as `lab bench` does for its rounds.
"""

import argparse
import json
import statistics
import struct
import time
from pathlib import Path

import grpc


def p50_us(call, body, calls):
    call(body)  # the connection and its settings are behind us before timing
    latencies = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call(body)
        latencies.append(time.perf_counter_ns() - started)
    return statistics.median(latencies) / 1000


def list_request(user_id, page_size):
    user = user_id.encode()
    # field 1 (user_id, length-delimited), field 2 (page_size, varint below 128)
    return b"\x0a" + bytes([len(user)]) + user + b"\x10" + bytes([page_size])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--page-size", type=int, default=10, choices=range(1, 128))
    args = parser.parse_args()
    endpoints = json.loads((args.data_dir / "lab.json").read_text())["endpoints"]
    seed = json.loads((args.data_dir / "seed.json").read_text())
    for address in endpoints["fault_admin"].values():
        set_sampling = grpc.insecure_channel(address).unary_unary(
            "/ops.v1.TelemetryAdmin/SetTraceSampling"
        )
        set_sampling(b"\x09" + struct.pack("<d", 0.0))  # field 1, a double
    services = endpoints["services"]
    user = seed["users"][2]["microservices"]
    request = list_request(user, args.page_size)
    method = "/purchases.v1.PurchaseService/ListUserPurchases"
    asynchronous = grpc.insecure_channel(services["purchases-async"])
    echo = asynchronous.unary_unary("/grpc.health.v1.Health/Check")
    read_async = asynchronous.unary_unary(method)
    read_sync = grpc.insecure_channel(services["purchases-sync"]).unary_unary(method)
    print("round  echo_us  async_us  sync_us  async/echo  sync/(3 x echo)")
    for round_ in range(1, args.rounds + 1):
        echo_us = p50_us(echo, b"", args.calls)
        async_us = p50_us(read_async, request, args.calls)
        sync_us = p50_us(read_sync, request, args.calls // 2)
        print(
            f"{round_:5}  {echo_us:7.0f}  {async_us:8.0f}  {sync_us:7.0f}"
            f"  {async_us / echo_us:10.2f}  {sync_us / (3 * echo_us):15.2f}"
        )


if __name__ == "__main__":
    main()
