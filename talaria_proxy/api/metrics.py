"""Prometheus metrics of the proxy (`GET /metrics`), in a registry owned by one app.

Request-level series (updated by the serving layer when a request ends):
    talaria_requests_total{endpoint,status}         finished HTTP generations by outcome
    talaria_prompt_tokens_total                     prompt tokens of accepted requests
    talaria_completion_tokens_total                 tokens generated for clients (incl. cancelled)
    talaria_time_to_first_token_seconds             arrival -> first generated token (histogram)
    talaria_request_duration_seconds                arrival -> last token (histogram)

Engine-level series (read from the engine and the MaskedLinearClient at scrape time):
    talaria_num_requests_running / _waiting         sequences decoding / queued (n > 1 counts n)
    talaria_cloud_call_seconds                      summary: _count = cloud calls, _sum = round-trip time
    talaria_cloud_rows_total, talaria_cloud_bytes_{sent,received}_total, talaria_mask_seconds_total
    talaria_engine_steps_total, talaria_engine_step_seconds_total

Only counts and timings: no label ever carries prompt or completion text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _EngineCollector:
    """Reads the engine's live state and the cloud-call counters when Prometheus scrapes."""

    def __init__(self, runtime):
        self.runtime = runtime

    def describe(self):
        return []  # families are built per scrape; nothing to pre-register

    def collect(self):
        engine, linear = self.runtime.engine, self.runtime.linear.stats
        yield GaugeMetricFamily("talaria_num_requests_running", "Sequences currently decoding or prefilling.",
                                value=engine.num_running)
        yield GaugeMetricFamily("talaria_num_requests_waiting", "Sequences queued for a free batch slot.",
                                value=engine.num_waiting)
        yield SummaryMetricFamily("talaria_cloud_call_seconds",
                                  "Round trip of masked linear calls to the cloud (serialise, send, GEMM, receive).",
                                  count_value=linear.calls, sum_value=linear.cloud_seconds)
        yield CounterMetricFamily("talaria_cloud_rows", "Rows sent to the cloud in linear calls.", value=linear.rows)
        yield CounterMetricFamily("talaria_cloud_bytes_sent", "Masked tensor payload sent to the cloud.",
                                  value=linear.bytes_sent)
        yield CounterMetricFamily("talaria_cloud_bytes_received", "Tensor payload received from the cloud.",
                                  value=linear.bytes_received)
        yield CounterMetricFamily("talaria_mask_seconds", "CVM time spent masking and unmasking.",
                                  value=linear.mask_seconds)
        yield CounterMetricFamily("talaria_engine_steps", "Batched model steps run.", value=engine.stats.steps)
        yield CounterMetricFamily("talaria_engine_step_seconds", "Wall time inside model steps.",
                                  value=engine.stats.step_seconds)


class ProxyMetrics:
    def __init__(self, runtime):
        self.registry = CollectorRegistry()
        self.requests = Counter("talaria_requests", "Finished generation requests by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("talaria_prompt_tokens", "Prompt tokens of accepted requests.",
                                     registry=self.registry)
        self.completion_tokens = Counter("talaria_completion_tokens", "Tokens generated for clients.",
                                         registry=self.registry)
        self.time_to_first_token = Histogram("talaria_time_to_first_token_seconds",
                                             "Time from request arrival to the first generated token.",
                                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.request_duration = Histogram("talaria_request_duration_seconds",
                                          "Time from request arrival to the end of generation.",
                                          buckets=_DURATION_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(runtime))
        if getattr(runtime, "pads", None) is not None:  # the pad scheme's pool (talaria_proxy/pads/metrics.py)
            from talaria_proxy.pads.metrics import PadCollector

            self.registry.register(PadCollector(runtime.pads))

    def observe_request(self, endpoint: str, status: int, prompt_tokens: int, completion_tokens: int,
                        ttft: float | None, duration: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        if ttft is not None:
            self.time_to_first_token.observe(ttft)
        self.request_duration.observe(duration)

    def render(self) -> bytes:
        return generate_latest(self.registry)
