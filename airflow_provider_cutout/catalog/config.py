"""``BatchConfig``: the batch operator's arguments that shape a run, validated once and frozen.

Arguments may arrive as rendered template strings (``"100"``, ``"0.05"``, ``"false"``, ``"None"``): numbers
are parsed from text, flags only from ``True``/``False`` (``None`` is false) or the texts ``"true"``/``"false"``
(any case), so ``"false"`` from run conf means false and a typo is refused instead of read as true. Every bad argument
is named in one error, with its value and the rule.
"""

from __future__ import annotations

import ast
import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from airflow_provider_cutout.exceptions import InvalidInputError
from airflow_provider_cutout.texts import format_validation_error

_NONE_TEXTS = ("none", "null")  # how a template renders a None; an empty text is refused, never "no limit"


def _flag(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be True or False (or the text 'true' or 'false', as a template renders them)")


def _optional_flag(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_TEXTS):
        return None
    return _flag(value)


def _keys_or_flag(value: Any) -> Any:
    """``resend_in_doubt``: a flag, or the keys of the items to resend (a list, or its rendered text)."""
    if isinstance(value, str) and value.strip().startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value.strip())
                break
            except (ValueError, SyntaxError):
                continue
    if isinstance(value, (list, tuple)):
        if not all(isinstance(key, str) and key for key in value):
            raise ValueError("must be True, False, or a list of item keys (strings)")
        return tuple(value)
    try:
        return _flag(value)
    except ValueError:
        raise ValueError("must be True, False (or the text 'true' or 'false', as a template renders them), or a "
                         "list of item keys") from None


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not True or False")
    if isinstance(value, str):
        text = value.strip()
        return None if text.lower() in _NONE_TEXTS else text
    return value


def _failures(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                value = None
    if not isinstance(value, (int, float)) or value < 0 or (isinstance(value, float) and value >= 1):
        raise ValueError("must be a count (0, 1, 2...) or a fraction below 1 (0.05)")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
OptionalFlag = Annotated[bool | None, BeforeValidator(_optional_flag)]
Number = BeforeValidator(_number)


class BatchConfig(BaseModel):
    """How one batch run behaves (the operator's docstring describes each argument)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: Annotated[int, Number, Field(ge=1, le=256)] = 8
    requests_per_second: Annotated[Annotated[float, Field(gt=0)] | None, Number] = None
    max_credits: Annotated[Annotated[int, Field(ge=0)] | None, Number] = None
    max_failures: Annotated[int | float, BeforeValidator(_failures)] = 0
    check_balance: Flag = False
    resend_in_doubt: Annotated[bool | tuple[str, ...], BeforeValidator(_keys_or_flag)] = False
    claim_wait_timeout: Annotated[float, Number, Field(gt=0)] = 1800.0
    heartbeat_timeout: Annotated[float, Number, Field(gt=0)] = 120.0
    progress_interval: Annotated[Annotated[float, Field(gt=0)] | None, Number] = 10.0  # None: no progress lines
    check_sources: OptionalFlag = None
    gallery: Flag = True
    gallery_link_expiry: Annotated[Annotated[int, Field(gt=0)] | None, Number] = None

    @classmethod
    def parse(cls, owner: str, **values: Any) -> BatchConfig:
        """Validate the arguments given (the others keep their defaults).

        :param owner: names the task in the error.
        :raises InvalidInputError: naming every bad argument, its value and the rule.
        """
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = format_validation_error(err, name_all=True)
            raise InvalidInputError(f"{owner}: {problems}") from None

    def resends(self, key: str) -> bool:
        """Whether ``resend_in_doubt`` consents to paying again for the item ``key``."""
        return key in self.resend_in_doubt if isinstance(self.resend_in_doubt, tuple) else self.resend_in_doubt

    def tolerates(self, failed: int, to_edit: int) -> bool:
        """Whether ``failed`` items known before anything is sent are left to ``max_failures`` (the others are
        edited) rather than failing the task at once; ``max_failures`` 0 is all-or-nothing."""
        return bool(self.max_failures) and failed <= self.failure_limit(to_edit)

    def failure_limit(self, to_edit: int) -> int:
        """How many failed items ``max_failures`` tolerates among ``to_edit``."""
        if isinstance(self.max_failures, float):
            return int(self.max_failures * to_edit)
        return int(self.max_failures)
