"""`ServerSettings`: every option of `inkwell-serve` in one frozen, validated dataclass.

The command line is derived from these fields (`cli.py`), so each default is declared once, here. With no
`--model`, the server serves the embedded `inkwell-tiny` and its FAIR-Calib int4 version
`inkwell-tiny-int4` side by side (DESIGN section 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODELS: tuple[tuple[str, str], ...] = (("inkwell-tiny", "inkwell-tiny"),
                                               ("inkwell-tiny-int4", "inkwell-tiny-int4"))


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServerSettings:
    models: tuple[tuple[str, str], ...] = _opt(
        DEFAULT_MODELS, "NAME=PATH_OR_NAME; repeat to serve several models (default: inkwell-tiny and "
        "inkwell-tiny-int4)", flag="--model", metavar="NAME=PATH_OR_NAME")
    device: str = _opt("cpu", "torch device the models run on (cpu, cuda, cuda:1, ...)")
    dtype: str | None = _opt(None, "weight/activation dtype (float32, bfloat16, float16); default: "
                             "float32 on CPU, the checkpoint's dtype on GPU")
    host: str = _opt("127.0.0.1", "interface to listen on")
    port: int = _opt(8000, "TCP port")
    api_key: str | None = _opt(None, "require 'Authorization: Bearer KEY' (default: $INKWELL_API_KEY)")
    max_batch: int = _opt(8, "rows the engine denoises together per model")
    max_queue: int = _opt(64, "rows waiting for a batch slot before requests get 429")
    max_tokens_per_batch: int | None = _opt(None, "positions one forward may compute (default: no limit)")
    request_timeout: float = _opt(600.0, "seconds a request may take before it gets 504")
    max_body_bytes: int = _opt(1 << 20, "largest accepted request body (larger: 413)")
    drain_timeout: float = _opt(30.0, "seconds running requests get to finish after SIGTERM")
    cors_origins: tuple[str, ...] = _opt((), "allow cross-origin requests from ORIGIN (repeatable; off by "
                                         "default)", flag="--cors-origin", metavar="ORIGIN")
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice); 1 is often fastest "
                               "on a busy small machine")
    log_level: str = _opt("info", "uvicorn log level")

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve at least one model (--model NAME=PATH_OR_NAME)")
        names = [name for name, _ in self.models]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"model names must be non-empty and unique, got {names}")
        for name in ("max_batch", "max_queue", "port"):
            if getattr(self, name) < 1 and not (name == "port" and getattr(self, name) == 0):
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1, got {self.max_tokens_per_batch}")
        for name in ("request_timeout", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")


def parse_model_spec(spec: str) -> tuple[str, str]:
    """'NAME=PATH_OR_NAME' -> (NAME, PATH_OR_NAME); a bare 'PATH_OR_NAME' is served under its own name."""
    name, sep, source = spec.partition("=")
    if not sep:
        return spec, spec
    if not name or not source:
        raise ValueError(f"--model expects NAME=PATH_OR_NAME, got {spec!r}")
    return name, source
