"""docs/trainer.md's field reference for `spec.trainer`, generated from the same schema as the CRD.

`rectrain-crd` rewrites only the part between the two markers below, so the prose around it is
hand-written and kept; `rectrain-crd --check` fails when that part differs from the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN GENERATED: `rectrain-crd` writes this part from api/rectrain_api/trainer_config.py; edit the models, not this text -->"
END = "<!-- END GENERATED -->"

# A file without the markers (a first run) starts from this.
_SKELETON = f"# Trainer configuration (`spec.trainer`)\n\n{BEGIN}\n{END}\n"


def default_path() -> Path:
    return Path(__file__).resolve().parents[2] / "docs" / "trainer.md"


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "object")
    if kind == "array":
        return f"list of {_type(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'])}"
    return kind


def _anchor(path: str) -> str:
    """GitHub's anchor of a `### `path`` heading: lower case, punctuation dropped."""
    return "#" + "".join(ch for ch in path.lower() if ch.isalnum() or ch in "-_")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(node: dict[str, Any], path: str) -> list[str]:
    from rectrain_api.crd import allowed_values, default_value

    rows = ["| Field | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
    for name, sub in node.get("properties", {}).items():
        kind = _type(sub)
        if "properties" in sub:
            kind = f"[object]({_anchor(f'{path}.{name}')})"
        default = default_value(sub)
        if default is not None:
            # A value as written in YAML is code; a description of one ("empty", "26 items of 100000") is not.
            default = _cell(default) if default == "empty" or " items of " in default else f"`{_cell(default)}`"
        else:
            default = "see its fields" if "properties" in sub else "unset"
        allowed = _cell(allowed_values(sub) or "any")
        rows.append(f"| `{name}` | {kind} | {default} | {allowed} | {_cell(sub.get('description', ''))} |")
    return rows


def _sections(node: dict[str, Any], path: str) -> list[str]:
    out = [f"### `{path}`", "", _cell(node.get("description", "")), "", *_rows(node, path), ""]
    for name, sub in node.get("properties", {}).items():
        if "properties" in sub:
            out += _sections(sub, f"{path}.{name}")
    return out


def generated_part() -> str:
    """The field reference of spec.trainer, section by section, from the CRD's own schema."""
    from rectrain_api import crd, job

    trainer = crd.model_schema(job.RecTrainJobSpec)["properties"]["trainer"]
    return "\n".join(_sections(trainer, "spec.trainer")).rstrip() + "\n"


def render(current: str | None) -> str:
    """`current` (the file as it is, or None) with its generated part replaced."""
    text = current if current and BEGIN in current and END in current else _SKELETON
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}\n\n{generated_part()}\n{END}{tail}"
