"""Exact evaluation metrics and each rank's Prometheus /metrics."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("rectrain.metrics")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties). NaN if one class is absent."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average 1-based rank of each run of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], s_sorted.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    u_statistic = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


class RankMetrics:
    """Prometheus metrics of one rank, in a private registry, served on /metrics."""

    def __init__(self, rank: int, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        rank_label = {"rank": str(rank)}
        self.samples = Counter("rectrain_trainer_samples_total", "Training samples processed by this rank.", ["rank"], registry=self.registry).labels(**rank_label)
        self.sps = Gauge("rectrain_trainer_samples_per_second", "Recent training throughput of this rank.", ["rank"], registry=self.registry).labels(**rank_label)
        self.step = Gauge("rectrain_trainer_step", "Global optimizer steps done.", ["rank"], registry=self.registry).labels(**rank_label)
        self.loss = Gauge("rectrain_trainer_loss", "Recent training loss.", ["rank"], registry=self.registry).labels(**rank_label)
        self.data_wait = Counter("rectrain_trainer_data_wait_seconds_total", "Time the training loop waited for input batches.", ["rank"], registry=self.registry).labels(**rank_label)
        self.auc = Gauge("rectrain_trainer_eval_auc", "Latest held-out ROC AUC.", ["rank"], registry=self.registry).labels(**rank_label)
        self.gpu_mem = Gauge("rectrain_trainer_gpu_memory_bytes", "CUDA memory allocated by this rank.", ["rank"], registry=self.registry).labels(**rank_label)
        self.rows_skipped = Gauge("rectrain_trainer_rows_skipped", "Malformed input rows skipped.", ["rank"], registry=self.registry).labels(**rank_label)
        self.server = None
        self.port = None
        if port:
            from prometheus_client import start_http_server

            try:
                self.server, _thread = start_http_server(port, registry=self.registry)
                self.port = self.server.server_address[1]
            except OSError as e:
                log.warning("Prometheus /metrics not served: port %d: %s", port, e)

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
