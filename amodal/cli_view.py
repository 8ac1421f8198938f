"""``amodal view tcp://HOST:PORT [--http HOST:PORT] [--http-token-file FILE] [--server-key F --client-cert F]``.

The live view of ``amodal run --http`` for an engine that runs elsewhere, built from its published results alone
(subscribing like any other client, CURVE keys when the engine requires them): every stream's state, fps,
latency (capture → published, on the engine's clocks) and drops, its results drawn over a neutral grey canvas
(results carry masks and boxes, not pictures), a scanner stream's latest bags (with what detached stages amend).  Sources cannot be added or removed
from here (``POST``/``DELETE /streams`` answer 501): that is the engine's own ``--http``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from amodal.engine.web import LiveView, web_settings
from amodal.schema import AmendmentMessage, FrameMessage, MetricsMessage, StatusMessage
from amodal.subscriber import Subscriber


def feed(view: LiveView, subscriber: Subscriber, stop: threading.Event) -> None:
    """Hand every message to the view's state until ``stop`` (or the view fails)."""
    state = view.state
    while not stop.is_set() and view.failure is None:
        message = subscriber.recv(0.2)
        if isinstance(message, FrameMessage):
            r = message.result
            state.on_results([None], [r], [(message.publish_time_ns - r.capture_time_ns) / 1e6])
        elif isinstance(message, AmendmentMessage):
            state.on_amendment(message.amendment)
        elif isinstance(message, StatusMessage):
            state.on_event(message.event)
        elif isinstance(message, MetricsMessage):
            state.on_metrics(message.metrics)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amodal view", description=__doc__.splitlines()[0])
    p.add_argument("endpoint", help="the engine's publish endpoint, e.g. tcp://10.0.0.7:5555")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="where to serve the page (default 127.0.0.1:8080)")
    p.add_argument("--http-token-file", metavar="FILE", help="bearer token; required when --http listens beyond loopback")
    p.add_argument("--http-max-fps", type=float, default=10.0, metavar="N",
                   help="draw and encode each watched stream at most N times a second (default 10)")
    p.add_argument("--stream", action="append", help="only this stream (repeatable); default all")
    p.add_argument("--bags", action="append", default=[], metavar="ID",
                   help="show this stream's latest bags (scanner streams; those of an xray pipeline are found alone)")
    p.add_argument("--server-key", help="CURVE: the engine's public certificate file")
    p.add_argument("--client-cert", help="CURVE: this client's secret certificate file")
    p.add_argument("--stall-s", type=float, default=10.0,
                   help="/health is unhealthy after this long without a message from the engine (default 10)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    view = LiveView(web_settings(args.http, args.http_token_file, max_fps=args.http_max_fps), source=args.endpoint, stall_s=args.stall_s)
    for stream_id in args.bags:
        view.state.mark_scanner(stream_id)
    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with Subscriber(args.endpoint, args.stream, status=True, metrics=True, amendments=True,
                    server_public_key=args.server_key, client_cert=args.client_cert) as subscriber:
        view.start()
        print(f"amodal view: results of {args.endpoint} at {view.url}/", file=sys.stderr, flush=True)
        try:
            feed(view, subscriber, stop)
        finally:
            view.close()
    if view.failure is not None:
        print(f"amodal view: error: the view failed: {view.failure!r}", file=sys.stderr)
        return 1
    return 0
