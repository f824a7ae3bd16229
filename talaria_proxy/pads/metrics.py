"""Prometheus series of the pad pool (registered by the API's /metrics when the scheme is `pad`):

    talaria_pad_rows_available{op_kind}     pad rows ready, summed over the ops of a kind
    talaria_pad_target_rows                 rows the pool keeps per op
    talaria_pad_rows_produced_total{op_kind} / talaria_pad_rows_consumed_total{op_kind}
    talaria_pad_waits_total, talaria_pad_wait_seconds_total   online calls that had to wait for pads
    talaria_pad_source_errors_total, talaria_pad_unavailable_total (calls failed for lack of pads)
    talaria_pad_source_seconds_total        refill time spent in the source (dealer round trips, he work)
    talaria_pad_source_up                   0 while the source is failing
Counts only: nothing here depends on the text.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from talaria_proxy.pads.pool import PadPool


def _kind(op: str) -> str:
    return op.rpartition(".")[2]  # '3.qkv' -> 'qkv', 'lm_head' -> 'lm_head'


class PadCollector:
    def __init__(self, pool: PadPool):
        self.pool = pool

    def describe(self):
        return []

    def collect(self):
        pool, stats = self.pool, self.pool.stats
        by_kind: dict[str, list[int]] = {}
        for op in pool.ops:
            row = by_kind.setdefault(_kind(op), [0, 0, 0])
            row[0] += pool.available(op)
            row[1] += stats.produced_rows[op]
            row[2] += stats.consumed_rows[op]
        available = GaugeMetricFamily("talaria_pad_rows_available", "Pad rows ready, per op kind.", labels=["op_kind"])
        produced = CounterMetricFamily("talaria_pad_rows_produced", "Pad rows received from the source.", labels=["op_kind"])
        consumed = CounterMetricFamily("talaria_pad_rows_consumed", "Pad rows used by online calls.", labels=["op_kind"])
        for kind, (a, p, c) in by_kind.items():
            available.add_metric([kind], a)
            produced.add_metric([kind], p)
            consumed.add_metric([kind], c)
        yield available
        yield produced
        yield consumed
        yield GaugeMetricFamily("talaria_pad_target_rows", "Pad rows the pool keeps per op.", value=pool.target_rows)
        yield CounterMetricFamily("talaria_pad_waits", "Online calls that waited for pads.", value=stats.waits)
        yield CounterMetricFamily("talaria_pad_wait_seconds", "Time online calls waited for pads.",
                                  value=stats.wait_seconds)
        yield CounterMetricFamily("talaria_pad_source_errors", "Failed refills from the pad source.",
                                  value=stats.source_errors)
        yield CounterMetricFamily("talaria_pad_unavailable", "Online calls failed for lack of pads.",
                                  value=stats.unavailable)
        yield CounterMetricFamily("talaria_pad_source_seconds", "Refill time spent in the pad source.",
                                  value=stats.produce_seconds)
        yield GaugeMetricFamily("talaria_pad_source_up", "1 while the pad source answers, 0 while it fails.",
                                value=0 if pool.source_error is not None else 1)
