"""Packaging (docs/DEPLOY.md): the Helm chart renders to consistent manifests (with `helm lint` and
`helm template` when helm is installed; else tests/helm_render.py, a Python renderer of the Go
template subset the chart uses) and its values pass values.schema.json; compose.yaml is
consistent (with `docker compose config` when available; else a schema of the subset it uses);
the Dockerfile and the systemd units name only real settings; the image's entrypoint turns
NAME_FILE into NAME."""

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from stratus.config import ENGINE_NAMES, SETTING_NAMES
from tests.helm_render import Fail, chart_values, render_chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "stratus"
SECRETS = {"adminKey": "sk-stratus-0123456789ab_" + "x" * 43, "auditKey": "ab" * 32}
# read by stratus itself, not settings: the first admin, the audit key, the master key, clients
NOT_SETTINGS = {"STRATUS_ADMIN_KEY", "STRATUS_AUDIT_KEY", "STRATUS_MASTER_KEY", "STRATUS_API_KEY",
                "STRATUS_KERNEL_CACHE", "STRATUS_CONFIG", "STRATUS_MODELS", "STRATUS_URL"}  # fmt: skip
SETTINGS = {f"STRATUS_{n.upper()}" for n in (*SETTING_NAMES, *ENGINE_NAMES)} | NOT_SETTINGS


def render(**values):
    return render_chart(CHART, {"secrets": SECRETS, **values})


def kinds(docs):
    out = {}
    for _, doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def env_of(container):
    return {e["name"]: e for e in container["env"]}


# -- Helm ------------------------------------------------------------------------------------------


def test_values_pass_the_charts_schema():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    jsonschema.validate(chart_values(CHART), schema)
    jsonschema.validate(chart_values(CHART, {"secrets": SECRETS}), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(chart_values(CHART, {"tls": {"mode": "plain"}}), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(chart_values(CHART, {"gateway": {"replicas": 0}}), schema)


def test_the_default_chart_renders_a_gateway_its_secret_service_and_volume():
    by_kind = kinds(render())
    assert set(by_kind) == {"Secret", "PersistentVolumeClaim", "Service", "Deployment"}
    (secret,) = by_kind["Secret"]
    assert base64.b64decode(secret["data"]["admin-key"]).decode() == SECRETS["adminKey"]
    assert base64.b64decode(secret["data"]["audit-key"]).decode() == SECRETS["auditKey"]
    (gateway,) = by_kind["Deployment"]
    pod = gateway["spec"]["template"]
    assert gateway["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (service,) = by_kind["Service"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"] == "http"
    env = env_of(container)
    assert env["STRATUS_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "admin-key",
    }
    assert env["STRATUS_TLS_SELF_SIGNED"]["value"] == "true" and "STRATUS_INSECURE_HTTP" not in env
    assert set(env) <= SETTINGS, set(env) - SETTINGS  # every variable is a setting stratus reads
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTPS"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts  # the only writable places
    claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == by_kind["PersistentVolumeClaim"][0]["metadata"]["name"]


def test_the_chart_refuses_what_would_not_work():
    with pytest.raises(Fail, match="adminKey"):
        render_chart(CHART, {})
    with pytest.raises(Fail, match="database.url"):
        render(gateway={"replicas": 2})
    workers = [{"name": "demo", "model": "demo=/models/demo"}]
    with pytest.raises(Fail, match="self-signed"):
        render(workers=workers, secrets={**SECRETS, "clusterSecret": "c" * 32})
    with pytest.raises(Fail, match="bearerTokenSecret"):
        render(serviceMonitor={"enabled": True})


def test_workers_register_with_the_gateway_service():
    docs = render(
        tls={"mode": "proxy"},
        workers=[{"name": "demo", "model": "demo=/models/demo", "replicas": 2}],
        secrets={**SECRETS, "clusterSecret": "c" * 32},
        database={"url": "postgresql://s:p@db:5432/stratus"},
        gateway={"replicas": 2, "models": {}, "localModels": False, "env": {}},
    )
    deployments = {d["metadata"]["name"]: d for d in kinds(docs)["Deployment"]}
    service = kinds(docs)["Service"][0]["metadata"]["name"]
    worker = deployments[f"{service}-worker-demo"]
    assert worker["spec"]["replicas"] == 2
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--gateway") + 1] == f"http://{service}:8000"
    assert args[args.index("--model") + 1] == "demo=/models/demo" and "--insecure-http" in args
    assert args[args.index("--advertise-url") + 1] == "http://$(POD_IP):8100"
    gateway_env = env_of(deployments[service]["spec"]["template"]["spec"]["containers"][0])
    assert gateway_env["STRATUS_INSECURE_HTTP"]["value"] == "true"
    assert gateway_env["STRATUS_LOCAL_MODELS"]["value"] == "false"
    secret = kinds(docs)["Secret"][0]
    assert {"cluster-secret", "database-url"} <= set(secret["data"])


def test_the_service_monitor_scrapes_the_gateways_metrics():
    docs = render(serviceMonitor={"enabled": True, "bearerTokenSecret": {"name": "prom-key", "key": "token"}})
    (monitor,) = kinds(docs)["ServiceMonitor"]
    (service,) = kinds(docs)["Service"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert endpoint["bearerTokenSecret"] == {"name": "prom-key", "key": "token"}


def test_a_tls_secret_is_mounted_for_the_gateway():
    docs = render(tls={"mode": "secret", "secretName": "stratus-tls"})
    pod = kinds(docs)["Deployment"][0]["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert (env["STRATUS_TLS_CERT"]["value"], env["STRATUS_TLS_KEY"]["value"]) == (
        "/tls/tls.crt",
        "/tls/tls.key",
    )
    assert {"name": "tls", "secret": {"secretName": "stratus-tls"}} in pod["volumes"]


@pytest.mark.skipif(
    shutil.which("helm") is None, reason="helm is not installed (the Python renderer checks the chart)"
)
def test_helm_lint_and_template(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"secrets": SECRETS}))
    subprocess.run(["helm", "lint", str(CHART), "-f", str(values)], check=True, timeout=60)
    out = subprocess.run(
        ["helm", "template", "demo", str(CHART), "-f", str(values)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert {d["kind"] for d in yaml.safe_load_all(out) if d} == {
        "Secret",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
    }


# -- Compose ---------------------------------------------------------------------------------------

# the part of the Compose specification compose.yaml uses, strictly (no unknown keys)
_HEALTH = {
    "type": "object",
    "additionalProperties": False,
    "required": ["test"],
    "properties": {
        "test": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        **{
            k: {"type": "string", "pattern": r"^\d+(ms|s|m)$"}
            for k in ("interval", "timeout", "start_period")
        },
        "retries": {"type": "integer", "minimum": 1},
    },
}
COMPOSE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["services"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
                "properties": {
                    "build": {"type": "string"},
                    "image": {"type": "string", "pattern": r"^[a-z0-9./-]+:[A-Za-z0-9._-]+$"},
                    "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                    "command": {"type": "array", "items": {"type": "string"}},
                    "ports": {"type": "array", "items": {"type": "string", "pattern": r"^\d+:\d+$"}},
                    "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                    "secrets": {"type": "array", "items": {"type": "string"}},
                    "volumes": {
                        "type": "array",
                        "items": {"type": "string", "pattern": r"^[^:]+:/[^:]*(:ro)?$"},
                    },
                    "depends_on": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "condition": {
                                    "enum": [
                                        "service_started",
                                        "service_healthy",
                                        "service_completed_successfully",
                                    ]
                                }
                            },
                        },
                    },
                    "healthcheck": _HEALTH,
                    "stop_grace_period": {"type": "string", "pattern": r"^\d+(s|m)$"},
                },
            },
        },
        "secrets": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["file"],
                "properties": {"file": {"type": "string"}},
            },
        },
        "volumes": {"type": "object", "additionalProperties": {"type": ["null", "object"]}},
    },
}


def test_compose_file_is_consistent():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services, secrets, volumes = compose["services"], compose["secrets"], compose["volumes"]
    assert set(services) == {"gateway", "postgres", "redis"}
    for name, service in services.items():
        assert set(service.get("secrets", [])) <= set(secrets), name
        for dep in service.get("depends_on", {}):
            assert dep in services and "healthcheck" in services[dep], (name, dep)
        named = {v.split(":")[0] for v in service.get("volumes", []) if not v.startswith((".", "/"))}
        assert named <= set(volumes), name
    gateway = services["gateway"]
    env = gateway["environment"]
    for key, value in env.items():
        if key.endswith("_FILE"):  # the entrypoint reads it into the variable without _FILE
            assert key[: -len("_FILE")] in SETTINGS, key
            assert value.startswith("/run/secrets/") and value.rsplit("/", 1)[1] in gateway["secrets"]
        else:
            assert key in SETTINGS, key
    assert not any("PASSWORD=" in c or "KEY=" in c for c in gateway.get("command", []))
    make_secrets = (ROOT / "deploy/compose/make-secrets.sh").read_text()
    for name, spec in secrets.items():  # every secret file is made by make-secrets.sh
        assert spec["file"] == f"./secrets/{name}" and f"write {name} " in make_secrets, name


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="no `docker compose` here (the schema check above covers the file)",
)
def test_docker_compose_config(tmp_path):
    subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"], check=True, timeout=60
    )


# -- the image and systemd ---------------------------------------------------------------------------


def test_dockerfile_pins_torch_runs_unprivileged_and_names_real_settings():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert sum(1 for line in lines if line.startswith("FROM ")) == 2
    assert "COPY --from=build /opt/stratus /opt/stratus" in lines
    assert '"torch==2.13.0"' in text and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in lines
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    names = {
        word.split("=")[0]
        for line in text.replace("\\\n", " ").splitlines()
        if line.startswith("ENV ")
        for word in line.split()[1:]
    }
    assert {n for n in names if n.startswith("STRATUS_")} <= SETTINGS
    # what the .dockerignore lets into the build context is what the Dockerfile copies
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!src/", "!models/demo/", "!deploy/docker/"} <= set(ignore)


def test_install_check_runs_the_dockerfiles_install_steps():
    out = subprocess.run(
        [str(ROOT / "scripts/docker_install_check.sh"), "--print"], check=True, capture_output=True, text=True
    ).stdout
    steps = out.strip().splitlines()
    assert steps[0].startswith("/opt/stratus/bin/pip install --index-url") and "torch==2.13.0" in steps[0]
    assert any('"/src[${EXTRAS}]"' in s for s in steps) and any("stratus --version" in s for s in steps)


def test_the_entrypoint_reads_secrets_from_files(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "stratus"  # stands in for stratus: prints what it was given
    fake.write_text(
        '#!/bin/sh\necho "args=$*"\necho "admin=$STRATUS_ADMIN_KEY"\necho "file=${STRATUS_ADMIN_KEY_FILE:-unset}"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    secret = tmp_path / "admin_key"
    secret.write_text("sk-stratus-from-a-file")
    entry = str(ROOT / "deploy/docker/entrypoint.sh")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STRATUS_ADMIN_KEY_FILE": str(secret)}
    out = subprocess.run(
        ["sh", entry, "serve", "--port", "1"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == ["args=serve --port 1", "admin=sk-stratus-from-a-file", "file=unset"]
    both = subprocess.run(
        ["sh", entry, "serve"], env={**env, "STRATUS_ADMIN_KEY": "x"}, capture_output=True, text=True
    )
    assert both.returncode == 2 and "use one" in both.stderr
    missing = subprocess.run(
        ["sh", entry],
        env={**env, "STRATUS_ADMIN_KEY_FILE": str(tmp_path / "none")},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "not a readable file" in missing.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize(
    ("unit", "instance"),
    [("stratus.service", "stratus.service"), ("stratus-worker@.service", "stratus-worker@demo.service")],
)
def test_systemd_units_verify(tmp_path, unit, instance):
    text = (ROOT / "deploy/systemd" / unit).read_text().replace("/opt/stratus/bin/stratus", "/bin/true")
    (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line for line in result.stderr.splitlines() if unit.split("@")[0] in line or "Unknown" in line
    ]
    assert result.returncode == 0 and not problems, result.stderr
