"""Command-line options generated from a parameter model.

Every leaf field of a pydantic model (nested stage configs included) becomes one
flag: ``--features.vector-size`` (``--features.vector_size`` is accepted too),
its help the field's description and default. Parsing gives the model itself,
validated by pydantic, so the command line, the Prefect form and ``--param``
read the same fields, defaults and limits. Bad input ends as one ``error:``
line and exit code 2.
"""

from __future__ import annotations

import argparse
import tomllib
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Any,
    Generic,
    Literal,
    NoReturn,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]
Model = TypeVar("Model", bound=BaseModel)


def project_version() -> str:
    """tweetflow's version: ``[project] version`` of pyproject.toml (read as
    text, nothing imported), else the installed package's, else 'unknown'."""
    try:
        with (ROOT / "pyproject.toml").open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError):
        from importlib import metadata

        try:
            return metadata.version("tweetflow")
        except metadata.PackageNotFoundError:
            return "unknown"


class VersionAction(argparse.Action):
    """``--version``: print tweetflow's version and exit; read only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: Any) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show tweetflow's version and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        """Print the version on stdout, exit 0."""
        print(f"tweetflow {project_version()}")
        parser.exit(0)


@dataclass(frozen=True)
class Setting:
    """One leaf field of a parameter model, at its dotted path."""

    path: tuple[str, ...]
    field: FieldInfo

    @property
    def dest(self) -> str:
        """The dotted name, as in ``features.vector_size``."""
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        """The flag: ``--features.vector-size``."""
        return "--" + ".".join(part.replace("_", "-") for part in self.path)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def settings(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every leaf field of ``model``, nested models walked in field order."""
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is None:
            yield Setting((*prefix, name), field)
        else:
            yield from settings(nested, (*prefix, name))


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _words(annotation: Any) -> list[str]:
    """The literal words among a field's alternatives (``Literal['auto']``)."""
    return [
        str(word)
        for alternative in _alternatives(annotation)
        if get_origin(alternative) is Literal
        for word in get_args(alternative)
    ]


def _number_or_words(kind: type, words: list[str]) -> Any:
    """An argparse type: a number, or one of the literal words."""

    def convert(text: str) -> Any:
        if text in words:
            return text
        try:
            return kind(text)
        except ValueError:
            choices = " or ".join(f"'{word}'" for word in words)
            raise argparse.ArgumentTypeError(
                f"must be {choices} or a number, not {text!r}"
            ) from None

    return convert


def _empty_is_none(text: str) -> str | None:
    return text or None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _help(field: FieldInfo) -> str:
    """The description and the default, escaped for argparse."""
    text = " ".join((field.description or "").split())
    if not field.is_required() and "(default:" not in text:
        text += f" (default: {_shown(field.get_default(call_default_factory=True))})"
    elif field.is_required():
        text += " (required)"
    return text.replace("%", "%%")


def _argument(setting: Setting) -> dict[str, Any]:
    """argparse keywords for one setting: action, type, choices, metavar."""
    annotation = setting.field.annotation
    alternatives = [a for a in _alternatives(annotation) if a is not type(None)]
    words = _words(annotation)
    kinds = [a for a in alternatives if get_origin(a) is not Literal]
    if kinds == [bool]:
        return {"action": argparse.BooleanOptionalAction}
    if not kinds:
        return {"choices": words, "metavar": "{" + ",".join(words) + "}"}
    kind = kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else str
    metavar = {int: "N", float: "X", str: "TEXT"}[kind]
    if words:
        return {
            "type": _number_or_words(kind, words),
            "metavar": "|".join([metavar, *words]),
        }
    if kind is str and type(None) in _alternatives(annotation):
        return {"type": _empty_is_none, "metavar": metavar}
    return {"type": kind, "metavar": metavar}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: ...`` (no usage dump) and exit with code 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class ModelParser(OneLineParser, Generic[Model]):
    """A parser generated from a parameter model; ``parse`` returns the model."""

    def __init__(
        self,
        model: type[Model],
        prog: str,
        description: str,
        aliases: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        required = [s for s in settings(model) if s.field.is_required()]
        usage = " ".join(
            ["%(prog)s", *(f"{s.flag} TEXT" for s in required), "[options]"]
        )
        super().__init__(
            prog=prog,
            usage=usage,
            description=description,
            epilog="Nested settings are --<group>.<field> (--features.vector-size "
            "150; --features.vector_size works too). Every option is a field of "
            f"{model.__name__} (flows/parameters.py), the model behind the Prefect "
            "form and `prefect deployment run --param`.",
            allow_abbrev=False,
        )
        self.model = model
        self.flags: dict[str, str] = {}
        self.add_argument("--version", action=VersionAction)
        groups: dict[str, argparse._ArgumentGroup] = {}
        for setting in settings(model):
            group: Any = self
            if len(setting.path) > 1:
                name = setting.path[0]
                if name not in groups:
                    groups[name] = self.add_argument_group(
                        name, model.model_fields[name].description
                    )
                group = groups[name]
            self._add(group, setting, (aliases or {}).get(setting.dest, ()))

    def _add(self, group: Any, setting: Setting, aliases: Sequence[str]) -> None:
        keywords = {"dest": setting.dest, "default": argparse.SUPPRESS}
        keywords |= _argument(setting)
        group.add_argument(
            setting.flag,
            *aliases,
            help=_help(setting.field),
            **keywords,
        )
        snake = "--" + setting.dest
        if snake != setting.flag:  # the same option, spelled as the field
            group.add_argument(snake, help=argparse.SUPPRESS, **keywords)
        self.flags[setting.dest] = setting.flag

    def parse(self, argv: Sequence[str] | None = None) -> Model:
        """The model from the command line; only the flags given are set."""
        given = vars(self.parse_args(argv))
        values: dict[str, Any] = {}
        for dest, value in given.items():
            *groups, name = dest.split(".")
            target = values
            for group in groups:
                target = target.setdefault(group, {})
            target[name] = value
        try:
            return self.model.model_validate(values)
        except ValidationError as exc:
            self.error(self.explain(exc))

    def explain(self, exc: ValidationError) -> str:
        """A validation error in the command line's words, on one line."""
        parts = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            where = next(
                (
                    self.flags[".".join(loc[:n])]
                    for n in range(len(loc), 0, -1)
                    if ".".join(loc[:n]) in self.flags
                ),
                f"--{'.'.join(loc).replace('_', '-')}.*" if loc else "",
            )
            message = error["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            if ".".join(loc) in self.flags and error["type"] != "missing":
                message += f", not {error['input']!r}"
            parts.append(f"argument {where}: {message}" if where else message)
        return "; ".join(parts)
