"""The risk appetite: every threshold, limit and rule level the enclave judges by, as data.

``risk_appetite.yaml`` (beside this module) holds the defaults and says why; a deployment overrides
any value through the service's traitlets configuration (``EnclaveService.risk_appetite``, a dict
merged over the defaults, or ``EnclaveService.risk_appetite_file``, a YAML file of its own), which
the hub writes for it (``configure_enclave_service(..., risk_appetite={...})``). Unknown sections
or keys are refused at start-up with their name, so a typo cannot silently keep a default.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

DEFAULT_FILE = Path(__file__).with_name("risk_appetite.yaml")


class RiskAppetiteError(ValueError):
    pass


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in out:
            raise RiskAppetiteError(
                f"unknown risk appetite setting {where}{k!r}; known: {', '.join(sorted(out))}"
            )
        free_form = k in ("id_shapes", "severities")
        if isinstance(out[k], dict) and isinstance(v, dict) and not free_form:
            out[k] = _merge(out[k], v, f"{where}{k}.")
        elif free_form and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load(overrides: dict | None = None, path: str | Path | None = None) -> dict:
    base = yaml.safe_load(DEFAULT_FILE.read_text())
    if path:
        base = _merge(base, yaml.safe_load(Path(path).read_text()) or {})
    return _merge(base, overrides or {})


@dataclasses.dataclass
class RiskAppetite:
    archive: object
    run: object
    output_volume: object
    outputs: object
    code: object

    @classmethod
    def from_config(cls, overrides: dict | None = None, path: str | Path | None = None) -> RiskAppetite:
        from .archive import ArchiveLimits
        from .code_checks import DEFAULT_CALL_RULES, CodeRules
        from .output_checks import OutputRules
        from .output_volume import OutputLimits
        from .runners import RunLimits

        data = load(overrides, path)
        out = dict(data["outputs"])
        out["allowed_suffixes"] = tuple(s.lower() for s in out["allowed_suffixes"])
        for level in out["severities"].values():
            _level(level)
        code = dict(data["code"])
        severities = code.pop("severities") or {}
        calls = tuple(
            dataclasses.replace(r, severity=_level(severities.get(r.name, r.severity)))
            for r in DEFAULT_CALL_RULES
        )
        unknown = set(severities) - {r.name for r in DEFAULT_CALL_RULES}
        if unknown:
            raise RiskAppetiteError(f"unknown code rule(s) {', '.join(sorted(unknown))}")
        for k in ("computed_targets", "system_roots"):
            code[k] = tuple(code[k])
        try:
            return cls(
                archive=ArchiveLimits(**data["archive"]),
                run=RunLimits(**data["run"]),
                output_volume=OutputLimits(**data["output_volume"]),
                outputs=OutputRules(**out),
                code=CodeRules(calls=calls, **code),
            )
        except TypeError as e:
            raise RiskAppetiteError(f"the risk appetite does not fit: {e}") from None


def _level(level: str) -> str:
    if level not in ("pass", "review", "fail"):
        raise RiskAppetiteError(f"level {level!r} must be pass, review or fail")
    return level
