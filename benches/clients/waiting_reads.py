"""purchases-async's CPU per placed order while reads wait for orders that never come.

A read with `wait_for_order_id` holds its request open until the projection has the order.
This places orders at a steady rate from Python's grpcio and reads purchases-async's CPU
(/proc/<pid>/stat) over that time, once with no read waiting and once with N reads each
waiting for an order that does not exist (each fails with DEADLINE_EXCEEDED after its 3 s
deadline and is asked again at once), in turns. What a waiting read costs while it waits is
the difference: nothing, when only the batch that applies its order wakes it.

    pip install grpcio
    cargo run --release -p lab -- --data-dir D up --ephemeral-ports &   # then, once serving:
    cargo run --release -p lab -- --data-dir D seed
    python3 benches/clients/waiting_reads.py D [--waiting 60] [--rate 300] [--seconds 15] [--rounds 2]

N stays under purchases-async's cap on waiting reads (--max-waiting-reads, 64 by default).
Trace sampling is set to 0 on every service first, as `lab bench` does for its rounds.
"""

import argparse
import json
import os
import struct
import threading
import time
import uuid
from pathlib import Path

import grpc


def field(number, value):
    """A length-delimited protobuf field (every value here is shorter than 128 bytes)."""
    data = value.encode()
    return bytes([number << 3 | 2, len(data)]) + data


def uuid7_shaped():
    """A random id that passes the services' check for a UUIDv7 and names no order."""
    raw = bytearray(uuid.uuid4().bytes)
    raw[6] = 0x70 | (raw[6] & 0x0F)
    return str(uuid.UUID(bytes=bytes(raw)))


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hold_waiting_read(address, user, stop, outcomes):
    read = grpc.insecure_channel(address).unary_unary(
        "/purchases.v1.PurchaseService/ListUserPurchases"
    )
    while not stop.is_set():
        # user_id, page_size 10, wait_for_order_id
        request = field(1, user) + b"\x10\x0a" + field(4, uuid7_shaped())
        try:
            read(request, timeout=3)
            outcomes.append("OK")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)


def measure(args, services, pid, user, product, waiting):
    stop = threading.Event()
    outcomes = []
    readers = [
        threading.Thread(
            target=hold_waiting_read,
            args=(services["purchases-async"], user, stop, outcomes),
            daemon=True,
        )
        for _ in range(waiting)
    ]
    for reader in readers:
        reader.start()
    time.sleep(1.5)  # every read is waiting before the orders start
    place = grpc.insecure_channel(services["orders"]).unary_unary(
        "/orders.v1.OrderService/PlaceOrder"
    )
    request = field(1, user) + field(2, product) + b"\x18\x01"  # quantity 1
    place(request, timeout=5)
    orders = int(args.rate * args.seconds)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    calls = []
    for i in range(orders):
        delay = started + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        calls.append(place.future(request, timeout=5))
    errors = 0
    for call in calls:
        try:
            call.result()
        except grpc.RpcError:
            errors += 1
    time.sleep(0.5)  # the last orders' batches are applied
    cpu = cpu_seconds(pid) - cpu_before
    elapsed = time.monotonic() - started
    stop.set()
    for reader in readers:
        reader.join()
    refused = len(outcomes) - outcomes.count("DEADLINE_EXCEEDED")
    return cpu / orders * 1e6, 100 * cpu / elapsed, errors, refused


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--waiting", type=int, default=60)
    parser.add_argument("--rate", type=int, default=300, help="orders per second")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    lab = json.loads((args.data_dir / "lab.json").read_text())
    seed = json.loads((args.data_dir / "seed.json").read_text())
    for address in lab["endpoints"]["fault_admin"].values():
        set_sampling = grpc.insecure_channel(address).unary_unary(
            "/ops.v1.TelemetryAdmin/SetTraceSampling"
        )
        set_sampling(b"\x09" + struct.pack("<d", 0.0))  # field 1, a double
    services = lab["endpoints"]["services"]
    pid = lab["pids"]["purchases-async"]
    user = seed["users"][2]["microservices"]
    product = seed["sample_product"]
    print("round  waiting  cpu_us_per_order  cpu_pct  order_errors  other_read_outcomes")
    for round_ in range(1, args.rounds + 1):
        for waiting in (0, args.waiting):
            per_order, pct, errors, refused = measure(
                args, services, pid, user, product, waiting
            )
            print(
                f"{round_:5}  {waiting:7}  {per_order:16.1f}  {pct:7.1f}"
                f"  {errors:12}  {refused:19}"
            )


if __name__ == "__main__":
    main()
