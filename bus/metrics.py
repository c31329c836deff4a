"""Each stage's counters on a Prometheus ``/metrics`` endpoint (``--metrics-port``).

Why an HTTP endpoint rather than a status topic: the pipeline is watched precisely when the
bus may be the thing that is broken (a hub restart, a stage that stopped reading), and
Prometheus notices a stage that no longer answers a scrape (``up == 0``) by itself; Grafana
reads Prometheus directly.

The counters are not duplicated into Prometheus objects on the hot path: a stage hands
:meth:`StageMetrics.watch` a function returning a :class:`Snapshot` of what it already
counts, and the collector reads it at scrape time (in the HTTP server's thread; a snapshot
is a few dict copies). Only latency is observed as it happens, into a histogram.
Every series carries ``stage``; a restarted stage starts its counters at 0, which Prometheus
reads as a counter reset (``rate``/``increase`` handle it) and ``process_start_time_seconds``
shows.

=============================================  =====================================================
series                                         meaning
=============================================  =====================================================
``m3sense_messages_total``                     bus messages the stage took in
``m3sense_malformed_total{kind}``              messages dropped as malformed, by kind
``m3sense_gaps_total``                         messages missing by sequence number (bus gaps)
``m3sense_upstream_restarts_total``            publishers heard coming back as a new incarnation
``m3sense_drops_total{kind}``                  what the stage itself refused or dropped, by kind
``m3sense_published_total``                    messages (or records, for the store) it put out
``m3sense_queue_depth``                        preprocess: bytes buffered; infer: windows waiting for a
                                               batch; store: records not yet in the sink
``m3sense_lost_windows_total{device}``         store: windows that never reached it (bus_gap rows)
``m3sense_latency_seconds`` (histogram)        time to handle one message (a batch, for infer)
=============================================  =====================================================
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from common.argtypes import port

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class Snapshot:
    """What a stage counts, read at scrape time."""

    messages: int = 0
    malformed: Mapping[str, int] = field(default_factory=dict)
    gaps: int = 0
    upstream_restarts: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)
    published: int = 0
    queue_depth: int = 0
    lost_windows: Mapping[str, int] = field(default_factory=dict)


def bus_snapshot(stats: Any, **more: Any) -> Snapshot:
    """A snapshot from a subscriber's :class:`bus.BusStats` plus the stage's own fields."""
    return Snapshot(
        messages=stats.received,
        malformed=dict(stats.malformed),
        gaps=stats.gaps,
        upstream_restarts=stats.restarts,
        **more,
    )


class StageMetrics:
    """One stage's registry: ``watch`` a snapshot function, ``observe`` latencies, ``serve`` HTTP."""

    def __init__(self, stage: str) -> None:
        from prometheus_client import CollectorRegistry, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.stage = stage
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_start_time_seconds: a restart shows
        self._latency = Histogram(
            "m3sense_latency_seconds",
            "time to handle one message (infer: one batch)",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        ).labels(stage)
        self._source: Callable[[], Snapshot] | None = None
        self.registry.register(self)

    def watch(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def observe(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def timer(self) -> _Timer:
        return _Timer(self)

    def describe(self) -> list:
        return []  # the families are built at scrape time; nothing to check at registration

    def _snapshot(self) -> Snapshot | None:
        if self._source is None:
            return None
        for _ in range(3):  # the stage's loop may change a dict while this thread copies it
            try:
                return self._source()
            except RuntimeError:
                continue
        return None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot()
        if snap is None:
            return
        stage = self.stage

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=["stage"])
            fam.add_metric([stage], value)
            return fam

        def by(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=["stage", label])
            for key, value in sorted(values.items()):
                fam.add_metric([stage, str(key)], value)
            return fam

        yield counter("m3sense_messages", "bus messages taken in", snap.messages)
        yield by("m3sense_malformed", "messages dropped as malformed, by kind", "kind", snap.malformed)
        yield counter("m3sense_gaps", "messages missing by sequence number", snap.gaps)
        yield counter(
            "m3sense_upstream_restarts", "publishers heard restarting (new incarnation)", snap.upstream_restarts
        )
        yield by("m3sense_drops", "what the stage refused or dropped itself, by kind", "kind", snap.drops)
        yield counter("m3sense_published", "messages (store: records) put out", snap.published)
        depth = GaugeMetricFamily("m3sense_queue_depth", "work waiting inside the stage", labels=["stage"])
        depth.add_metric([stage], snap.queue_depth)
        yield depth
        if snap.lost_windows or stage == "store":
            yield by("m3sense_lost_windows", "windows that never reached the store", "device", snap.lost_windows)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP endpoint in a daemon thread; returns the address it listens on."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        host_, port_ = server.server_address[:2]  # an IPv6 address has two more fields
        return str(host_), int(port_)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()


class _Timer:
    __slots__ = ("_m", "_t")

    def __init__(self, metrics: StageMetrics) -> None:
        self._m = metrics

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self._m.observe(time.perf_counter() - self._t)


def add_metrics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve the stage's counters for Prometheus on http://HOST:PORT/metrics (0: any free port)",
    )
    p.add_argument(
        "--metrics-host",
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"address of the metrics endpoint (default {DEFAULT_HOST}: this host only)",
    )


def start_metrics(args: argparse.Namespace, stage: str) -> StageMetrics | None:
    """The stage's metrics, serving if ``--metrics-port`` was given (None otherwise); says where on stderr."""
    import sys

    from common.errors import UserError

    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    if not 0 <= port <= 65535:
        raise UserError(f"--metrics-port {port}: a port is 0 to 65535")
    metrics = StageMetrics(stage)
    try:
        host, bound = metrics.serve(args.metrics_host, port)
    except OSError as exc:
        why = exc.strerror or exc
        raise UserError(f"--metrics-port {port}: cannot listen on {args.metrics_host} ({why})") from None
    try:
        wide = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        wide = True
    if wide:
        print(
            f"{stage}: warning: metrics on {host} are readable from the network (no authentication)",
            file=sys.stderr,
            flush=True,
        )
    print(f"{stage}: metrics on http://{host}:{bound}/metrics", file=sys.stderr, flush=True)
    return metrics
