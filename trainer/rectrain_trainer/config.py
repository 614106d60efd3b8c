"""Loading the trainer configuration and the torch.distributed environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from rectrain_api.trainer_config import TRAINER_CONFIG_ENV, TrainerConfig
from rectrain_api.validation import check_trainer, schema_messages


class ConfigError(ValueError):
    """A bad configuration; the message names the offending field(s)."""


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    return _invalid(schema_messages(e, prefix))


def _invalid(messages: list[str]) -> str:
    return "invalid trainer configuration:\n  " + "\n  ".join(messages)


def parse_config(data) -> TrainerConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("invalid trainer configuration: expected a mapping (the spec.trainer section)")
    # A whole RecTrainJob manifest is accepted too: its spec.trainer section is used.
    if data.get("kind") == "RecTrainJob":
        data = (data.get("spec") or {}).get("trainer") or {}
    try:
        cfg = TrainerConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    check_config(cfg)
    return cfg


def check_config(cfg: TrainerConfig) -> None:
    """Cross-field rules the field types alone cannot express: the same rules the operator and
    `kubectl rectrain submit` apply to spec.trainer (rectrain_api.validation)."""
    messages = check_trainer(cfg)
    if messages:
        raise ConfigError(_invalid(messages))


def load_config_file(path: str | Path) -> TrainerConfig:
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from None
    return parse_config(data)


def load_config_env(env=os.environ) -> TrainerConfig:
    raw = env.get(TRAINER_CONFIG_ENV)
    if raw is None:
        return parse_config({})
    try:
        data = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"{TRAINER_CONFIG_ENV}: not valid JSON: {e}") from None
    return parse_config(data)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(env=os.environ) -> DistEnv:
    """The standard torch.distributed env (torchrun, PyTorchJob-style pods, or a plain process)."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ConfigError(f"bad torch.distributed environment: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torch.distributed environment: RANK={rank} WORLD_SIZE={world}")
    if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise ConfigError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT")
    return DistEnv(rank, world, local)
