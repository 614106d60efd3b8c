"""Operator metrics (Prometheus). Low cardinality: no job names in labels; per-job numbers live in
the RecTrainJob status and in the trainer's own /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rectrain_api import job as api


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.created = Counter("rectrain_jobs_created", "RecTrainJobs the operator started.", ["namespace"], registry=r)
        self.finished = Counter(
            "rectrain_jobs_finished", "RecTrainJobs that finished, by result (succeeded|failed).", ["namespace", "result"], registry=r
        )
        self.restarts = Counter(
            "rectrain_job_restarts", "Gang restarts, by cause (preemption|failure).", ["namespace", "cause"], registry=r
        )
        self.jobs = Gauge("rectrain_jobs", "RecTrainJobs by phase (from the last full resync).", ["phase"], registry=r)
        self.time_to_running = Histogram(
            "rectrain_job_time_to_running_seconds",
            "Seconds from a RecTrainJob's creation until all its ranks first ran.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.reconcile = Histogram(
            "rectrain_reconcile_seconds",
            "Duration of one reconcile of one RecTrainJob.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        for phase in api.PHASES:
            self.jobs.labels(phase=phase).set(0)

    def set_phases(self, jobs: list[dict]) -> None:
        counts = {p: 0 for p in api.PHASES}
        for j in jobs:
            phase = (j.get("status") or {}).get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.jobs.labels(phase=phase).set(n)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        return start_http_server(port, addr=addr, registry=self.registry)
