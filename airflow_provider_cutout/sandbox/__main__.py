"""Command line of the sandbox: ``cutout-sandbox --port 8080``."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from airflow_provider_cutout.sandbox.server import SandboxServer
from airflow_provider_cutout.sandbox.state import SandboxConfig, SandboxState, check_rate_limit


def _latency(value: str) -> float | dict[str, float]:
    """``0.5`` for every model, or ``gpt-image-1=2,default=0.5`` per model."""
    if "=" not in value:
        return float(value)
    return {name.strip(): float(seconds) for name, seconds in (p.split("=", 1) for p in value.split(","))}


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(prog="cutout-sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one; default 8080)")
    parser.add_argument("--balance", type=int, default=1000, help="starting credits (default 1000)")
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any non-empty key)")
    parser.add_argument("--latency", type=_latency, default=0.0, help="seconds per edit, or model=s,default=s")
    parser.add_argument("--result-ttl", type=float, default=None, help="seconds a result URL lives")
    parser.add_argument("--images", default=None, help="a folder served under /images/")
    parser.add_argument("--charge-hung-up", action="store_true",
                        help="charge edits whose client hung up (default: cancel them, free)")
    parser.add_argument("--latency-only", action="store_true",
                        help="skip source fetching and image work: a tiny PNG after the latency")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="PER_SECOND",
                        help="the account's rate limit in edits per second; over it, 429 with Retry-After")
    parser.add_argument("--rate-burst", type=float, default=None, metavar="N",
                        help="edits that may come at once under --rate-limit (default: the rate, at least 1)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[SandboxConfig, argparse.Namespace]:
    """The sandbox's configuration from the command line, and the parsed options."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rate_limit, rate_burst = check_rate_limit(args.rate_limit, args.rate_burst)
    except ValueError as err:
        parser.error(str(err).replace("rate_limit", "--rate-limit").replace("rate_burst", "--rate-burst"))
    config = SandboxConfig(api_key=args.api_key, balance=args.balance, latency=args.latency,
                           result_ttl=args.result_ttl, images_dir=args.images,
                           charge_hung_up=args.charge_hung_up, latency_only=args.latency_only,
                           rate_limit=rate_limit, rate_burst=rate_burst)
    return config, args


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox until interrupted."""
    config, args = parse_config(argv)
    server = SandboxServer((args.host, args.port), SandboxState(config), verbose=args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    started = {"sandbox": server.base_url, "balance": args.balance}
    if config.rate_limit is not None:
        started.update(rate_limit=config.rate_limit, rate_burst=config.burst)
    print(json.dumps(started), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
