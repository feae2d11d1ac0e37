"""Run the local DigitalOcean-compatible API server: ``python -m swarmlab.doserver --port N``."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from swarmlab.doserver import DOServer, Faults, ServerConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swarmlab.doserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0 picks a free one)")
    parser.add_argument("--token", action="append", help="accepted API token (repeatable)")
    parser.add_argument("--droplet-limit", type=int, default=25, help="the account's droplet_limit")
    parser.add_argument("--time-scale", type=float, default=1.0, help="API seconds per real second")
    parser.add_argument(
        "--active-delay",
        type=float,
        default=30.0,
        help="API seconds from create until a droplet is active",
    )
    parser.add_argument(
        "--active-jitter",
        type=float,
        default=0.0,
        help="up to this many extra API seconds per droplet",
    )
    parser.add_argument(
        "--delete-delay",
        type=float,
        default=3.0,
        help="API seconds from delete until a droplet leaves the listings",
    )
    parser.add_argument(
        "--ssh-key",
        action="append",
        default=[],
        metavar="PUBKEY_FILE",
        help="OpenSSH public key file registered on the account (repeatable)",
    )
    parser.add_argument("--fault-429", type=float, default=0.0, help="fraction of requests that get a 429 response")
    parser.add_argument("--fault-500", type=float, default=0.0, help="fraction of requests that get a 500 response")
    parser.add_argument(
        "--drop-after-create",
        type=float,
        default=0.0,
        help="fraction of accepted creates whose connection is dropped",
    )
    parser.add_argument("--slow-rate", type=float, default=0.0, help="fraction of responses delayed")
    parser.add_argument("--slow-seconds", type=float, default=0.0, help="real seconds a delayed response waits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    args = parser.parse_args(argv)

    keys = []
    for path in args.ssh_key:
        with open(path) as file:
            keys.append((path, file.read().strip()))
    config = ServerConfig(
        host=args.host,
        port=args.port,
        tokens=tuple(args.token or ["doserver-token"]),
        droplet_limit=args.droplet_limit,
        time_scale=args.time_scale,
        active_delay=args.active_delay,
        active_jitter=args.active_jitter,
        delete_delay=args.delete_delay,
        ssh_public_keys=tuple(keys),
        faults=Faults(
            rate_429=args.fault_429,
            rate_500=args.fault_500,
            drop_after_create=args.drop_after_create,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            seed=args.seed,
        ),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with DOServer(config) as server:
        print(f"DIGITALOCEAN_END_POINT={server.end_point}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
