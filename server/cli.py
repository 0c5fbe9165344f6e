"""`inkwell-serve`: the command line of the HTTP server, derived from `ServerSettings`' fields.

    inkwell-serve                                   # inkwell-tiny and inkwell-tiny-int4 on 127.0.0.1:8000
    inkwell-serve --model fp=inkwell-tiny --model q=path/to/int4 --port 8080 --api-key KEY

Without `--model` it serves the embedded `inkwell-tiny` and `inkwell-tiny-int4`; if they are not installed
it stops with a message naming what is missing and how to serve another model instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

from .settings import DEFAULT_MODELS, ServerSettings, parse_model_spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inkwell-serve", description="Serve diffusion LLMs (FP and int4) "
                                     "over an OpenAI-compatible streaming API.")
    for f in dataclasses.fields(ServerSettings):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kwargs = {"help": meta.pop("help"), "dest": f.name, "default": None, **meta}
        if isinstance(f.default, tuple):
            kwargs["action"] = "append"
        else:
            kwargs["type"] = _scalar_type(f.name)
            kwargs["help"] += f" (default: {f.default})" if f.default is not None else ""
        parser.add_argument(flag, **kwargs)
    return parser


def _scalar_type(name: str) -> type:
    """int, float or str from the field's annotation (`int | None` -> int)."""
    hint = typing.get_type_hints(ServerSettings)[name]
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if kinds[0] in (int, float) else str


def settings_from_args(argv: list[str] | None) -> ServerSettings:
    args = vars(build_parser().parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    if "models" in given:
        given["models"] = tuple(parse_model_spec(spec) for spec in given["models"])
    if "cors_origins" in given:
        given["cors_origins"] = tuple(given["cors_origins"])
    if "api_key" not in given and os.environ.get("INKWELL_API_KEY"):
        given["api_key"] = os.environ["INKWELL_API_KEY"]
    return ServerSettings(**given)


def check_default_models(settings: ServerSettings) -> str | None:
    """A message when the default models are requested but not installed, else None."""
    if settings.models != DEFAULT_MODELS:
        return None
    from inkwell.engine.loader import resolve_model_path

    missing = []
    for _, source in settings.models:
        try:
            resolve_model_path(source)
        except (FileNotFoundError, ValueError):
            missing.append(source)
    if not missing:
        return None
    return (f"inkwell-serve: the default models {', '.join(missing)} are not installed in this package yet "
            "(inkwell-tiny is trained by recipes/ and its int4 version made by inkwell-quantize); serve "
            "another model with --model NAME=PATH_OR_NAME, e.g. --model llada=/path/to/checkpoint")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except ValueError as err:
        sys.stderr.write(f"inkwell-serve: {err}\n")
        return 2
    problem = check_default_models(settings)
    if problem:
        sys.stderr.write(problem + "\n")
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import serve
    from .engine_client import make_engine

    return serve(settings, make_engine)


if __name__ == "__main__":
    sys.exit(main())
