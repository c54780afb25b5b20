"""Settings precedence: CLI flag > STRATUS_* environment > stratus.toml > default."""

import pytest

from stratus.config import ConfigError, Settings, load_settings, parse_model_spec


def write(tmp_path, text):
    path = tmp_path / "stratus.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source(tmp_path):
    s = load_settings({}, env={}, config_file=write(tmp_path, ""))
    assert s.port == Settings().port == 8000
    assert s.host == "127.0.0.1"
    assert s.models == {}
    assert list(s.model_paths()) == ["demo"]


def test_each_layer_overrides_the_one_below(tmp_path):
    toml = write(tmp_path, 'port = 1111\nmax_waiting = 7\nmax_num_seqs = 3\n[models]\na = "/m/a"\n')
    env = {"STRATUS_PORT": "2222", "STRATUS_MAX_NUM_SEQS": "5"}
    s = load_settings({"port": 3333}, env=env, config_file=toml)
    assert s.port == 3333  # flag beats env and file
    assert s.engine.max_num_seqs == 5  # env beats file
    assert s.max_waiting == 7  # file beats default
    assert s.models == {"a": "/m/a"}
    assert load_settings({}, env=env, config_file=toml).port == 2222


def test_none_flags_mean_not_given(tmp_path):
    s = load_settings(
        {"port": None, "host": None}, env={"STRATUS_HOST": "::1"}, config_file=write(tmp_path, "")
    )
    assert s.host == "::1" and s.port == 8000


def test_env_models_and_booleans(tmp_path):
    env = {"STRATUS_MODELS": "a=/m/a, b=/m/b", "STRATUS_ENABLE_PREFIX_CACHING": "off"}
    s = load_settings({}, env=env, config_file=write(tmp_path, ""))
    assert s.models == {"a": "/m/a", "b": "/m/b"}
    assert s.engine.enable_prefix_caching is False


def test_config_file_from_environment(tmp_path):
    toml = write(tmp_path, "drain_timeout = 3.5\n")
    s = load_settings({}, env={"STRATUS_CONFIG": str(toml)})
    assert s.drain_timeout == 3.5


@pytest.mark.parametrize(
    "toml, env, needle",
    [
        ("port = 'abc'\n", {}, "port: expected an integer"),
        ("", {"STRATUS_PORT": "eighty"}, "STRATUS_PORT: expected an integer"),
        ("bogus = 1\n", {}, "unknown setting 'bogus'"),
        ("port = [\n", {}, "not valid TOML"),
        ("", {"STRATUS_ACCESS_LOG": "maybe"}, "expected true or false"),
        ("port = 70000\n", {}, "port must be between"),
        ("tls_cert = 'a.pem'\n", {}, "needs both tls_cert and tls_key"),
        ("[models]\n'bad name' = '/x'\n", {}, "model name 'bad name'"),
    ],
)
def test_bad_values_name_their_source(tmp_path, toml, env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings({}, env=env, config_file=write(tmp_path, toml))


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, env={}, config_file=tmp_path / "nope.toml")


def test_model_spec():
    assert parse_model_spec("demo=models/demo") == ("demo", "models/demo")
    assert parse_model_spec("/ckpt/llama-3/") == ("llama-3", "/ckpt/llama-3/")
    with pytest.raises(ConfigError, match="no path"):
        parse_model_spec("demo=")


def test_routing_policies_per_model_with_a_default(tmp_path):
    s = load_settings({"routing": "p2c,big=round_robin"}, env={}, config_file=write(tmp_path, ""))
    assert s.routing_policies() == {"*": "p2c", "big": "round_robin"}
    env = {"STRATUS_ROUTING": "demo=capacity"}
    assert load_settings({}, env=env, config_file=write(tmp_path, "")).routing_policies() == {
        "demo": "capacity"
    }
    with pytest.raises(ConfigError, match="routing: unknown policy 'fastest'.*capacity, p2c, round_robin"):
        load_settings({"routing": "demo=fastest"}, env={}, config_file=write(tmp_path, ""))


def test_the_registry_gives_each_model_its_policy():
    from stratus.api.registry import ModelRegistry

    registry = ModelRegistry({"a": "/m/a", "b": "/m/b"}, routing={"*": "p2c", "b": "round_robin"})
    assert {n: m.replicas.router.policy for n, m in registry.models.items()} == {
        "a": "p2c",
        "b": "round_robin",
    }


def test_task_and_pooling_per_model_with_a_default(tmp_path):
    s = load_settings(
        {"task": "e5=embed", "pooling": "mean,e5=last", "embed_normalize": False},
        env={},
        config_file=write(tmp_path, ""),
    )
    assert s.model_tasks() == {"e5": "embed"} and s.pooling_modes() == {"*": "mean", "e5": "last"}
    assert s.embed_normalize is False
    env = {"STRATUS_TASK": "embed"}
    assert load_settings({}, env=env, config_file=write(tmp_path, "")).model_tasks() == {"*": "embed"}
    with pytest.raises(ConfigError, match="task: unknown task 'rerank'.*generate, embed"):
        load_settings({"task": "rerank"}, env={}, config_file=write(tmp_path, ""))
    with pytest.raises(ConfigError, match="pooling: unknown pooling 'max'"):
        load_settings({"pooling": "e5=max"}, env={}, config_file=write(tmp_path, ""))


def test_lora_adapters_per_model(tmp_path):
    (tmp_path / "stratus.toml").write_text(
        'lora = "big:sql=/a/sql"\n[models]\nbig = "/m/big"\nsmall = "/m/s"\n'
    )
    s = load_settings(
        {"lora": "small:chat=~/chat,big:x.y-1=/a/x"}, env={}, config_file=tmp_path / "stratus.toml"
    )
    assert (
        s.lora_adapters()["small"]["chat"].endswith("/chat") and "~" not in s.lora_adapters()["small"]["chat"]
    )
    assert s.lora_adapters()["big"] == {"x.y-1": "/a/x"}  # the flag replaced the file's setting
    one = load_settings({"lora": "sql=/a/sql", "models": {"only": "/m/o"}}, env={})
    assert one.lora_adapters() == {"only": {"sql": "/a/sql"}}  # one model: MODEL: may be left out
    default = load_settings({"lora": "sql=/a"}, env={})  # without --model: the default model's
    assert default.lora_adapters() == {default.default_model: {"sql": "/a"}}
    demo = load_settings({"lora": "demo:sql=/a", "default_model": "demo"}, env={})
    assert demo.lora_adapters() == {"demo": {"sql": "/a"}}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("sql=/a", "several models"),
        ("nope:sql=/a", "no model 'nope'"),
        ("big:sql", "NAME=PATH"),
        ("big:s q=/a", "adapter name"),
        ("big:sql=/a,big:sql=/b", "twice"),
    ],
)
def test_bad_lora_specs_are_refused(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings({"lora": spec, "models": {"big": "/m/b", "small": "/m/s"}}, env={})
