"""`rectrain-train` and `rectrain-preprocess`.

rectrain-train                      config from env RECTRAIN_TRAINER_CONFIG (JSON of spec.trainer);
                                    what the operator's pods run
rectrain-train --config FILE        the same section from a YAML/JSON file (local runs; progress bar)

Rendezvous: the standard torch.distributed env (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
LOCAL_RANK), so it runs in pods, under torchrun, or as a plain process.
Status reporting (rank 0): when RECTRAIN_JOB_NAME and RECTRAIN_JOB_NAMESPACE are set, the
RecTrainJob's status.progress / status.metrics are patched (in-cluster credentials, else KUBECONFIG).

Exit codes (the contract with the operator, `rectrain_api.exit_codes`; docs/operator.md):
  0    done;
  2    invalid configuration, the message names the field: the operator fails the job at once
       (InvalidConfiguration), since no retry can fix it;
  143  stopped by SIGTERM after checkpointing: a preemption, on spot or not (resumed from the
       checkpoint, never counted against backoffLimit);
  1    any other error: an application failure, retried within backoffLimit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rectrain_api import exit_codes
from rectrain_api.trainer_config import JOB_NAME_ENV, JOB_NAMESPACE_ENV

from .config import ConfigError, dist_env, load_config_env, load_config_file

CONFIG_ERROR_EXIT_CODE = exit_codes.INVALID_CONFIG
PREEMPTED_EXIT_CODE = exit_codes.PREEMPTED
FINAL_REPORT_SECONDS = 60.0  # how long the last status update is retried at the end of a run
PREEMPTED_REPORT_SECONDS = 5.0  # ... and after a SIGTERM, within the pod's grace period


def _setup_logging(rank: int, level: str):
    fmt = f"%(asctime)s %(levelname)s rank={rank} %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)
    # Third-party chatter stays quiet.
    for noisy in ("kubernetes", "urllib3", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rectrain-train", description="Train a DLRM recommendation model (rectrain trainer).")
    p.add_argument("--config", help="YAML/JSON file holding a RecTrainJob's spec.trainer section (default: env RECTRAIN_TRAINER_CONFIG)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="tqdm progress bar on rank 0 (auto: on with --config when stderr is a terminal)")
    p.add_argument("--log-level", default=os.environ.get("RECTRAIN_LOG_LEVEL", "INFO"))
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    args = p.parse_args(argv)

    try:
        denv = dist_env()
        _setup_logging(denv.rank, args.log_level)
        cfg = load_config_file(args.config) if args.config else load_config_env()
    except (ConfigError, FileNotFoundError) as e:
        print(f"rectrain-train: {e}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    if args.check:
        print("configuration OK")
        return exit_codes.SUCCEEDED

    bar = args.progress == "on" or (args.progress == "auto" and args.config is not None and sys.stderr.isatty())

    import torch

    from .data import MalformedRowError
    from .train import DeviceUnavailable, Preempted, train

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # ranks sharing this host (torchrun)
    if "OMP_NUM_THREADS" not in os.environ and local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))

    reporter = None
    if denv.rank == 0 and os.environ.get(JOB_NAME_ENV) and os.environ.get(JOB_NAMESPACE_ENV):
        try:
            from .reporter import StatusReporter, connection

            reporter = StatusReporter(connection(), os.environ[JOB_NAME_ENV], os.environ[JOB_NAMESPACE_ENV],
                                      interval=cfg.reporting.progressIntervalSeconds)
        except Exception as e:  # no credentials at all: train anyway
            logging.getLogger("rectrain.reporter").warning("status reporting disabled: %s", e)
    # The final step and AUC are worth waiting for through an API server restart; a preempted rank
    # must leave within its grace period, and its next attempt reports again anyway.
    report_timeout = FINAL_REPORT_SECONDS
    try:
        train(cfg, denv, reporter=reporter, progress_bar=bar)
        return exit_codes.SUCCEEDED
    except Preempted as e:
        logging.getLogger("rectrain.train").warning("%s; exiting with %d (preempted)", e, PREEMPTED_EXIT_CODE)
        report_timeout = PREEMPTED_REPORT_SECONDS
        return PREEMPTED_EXIT_CODE
    except ConfigError as e:
        print(f"rectrain-train: {e}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    except (MalformedRowError, FileNotFoundError, DeviceUnavailable) as e:
        print(f"rectrain-train: {e}", file=sys.stderr)
        return exit_codes.FAILED
    finally:
        if reporter is not None:
            reporter.close(report_timeout)


def preprocess_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rectrain-preprocess",
                                description="Convert Criteo TSV files (plain or .gz) into rectrain's memory-mapped columnar format.")
    p.add_argument("inputs", nargs="+", help="TSV files or globs (Kaggle train.txt, 1TB day_N[.gz])")
    p.add_argument("-o", "--output", required=True, help="output dataset directory (must not hold a dataset)")
    p.add_argument("--malformed", choices=["error", "skip"], default="error",
                   help="error: stop at the first malformed row (file:line); skip: skip and count them")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(0, "INFO")
    from .data import MalformedRowError, preprocess

    try:
        meta = preprocess(args.inputs, args.output, args.malformed, progress=not args.no_progress)
    except (MalformedRowError, FileNotFoundError, FileExistsError) as e:
        print(f"rectrain-preprocess: {e}", file=sys.stderr)
        return 1
    print(f"wrote {meta['rows']} rows to {args.output} ({meta['rowsSkipped']} malformed rows skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
