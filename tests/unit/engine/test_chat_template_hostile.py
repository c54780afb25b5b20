"""A checkpoint's chat template is untrusted input: a hostile one is refused with a clear error,
reaches nothing outside the sandbox, and neither hangs nor exhausts the process that renders it
(stratus/engine/chat_template.py).

The resource bombs run in a child process under a 1 GiB address-space limit and a timeout: if a
guard broke, the test fails (by the reason it reports, or by the timeout) instead of taking the
machine's memory with it.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stratus.engine.chat_template as chat_template_module
from stratus.engine.config import CheckpointError
from stratus.engine.tokenizer import Tokenizer
from stratus.engine.types import ValidationError
from tests.checkpoints import CHAT_TEMPLATE, build_tokenizer

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture
def with_template(tokenizer_files, tmp_path):
    """A Tokenizer whose checkpoint carries `source` as its chat template."""

    def load(source: str) -> Tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_files / name, tmp_path / name)
        (tmp_path / "chat_template.jinja").write_text(source)
        return Tokenizer(tmp_path)

    return load


# -- sandbox escapes: refused at render, nothing reached -------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['__builtins__'] }}",
    "{{ range.__globals__ }}",
    "{{ messages.__class__.__base__ }}",
    "{{ messages[0].__class__ }}",
    "{{ (messages|attr('__class__')) }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ '{0.__class__}'.format(messages) }}",
    "{{ loop.__class__ }}{% for m in messages %}{{ loop.__class__ }}{% endfor %}",
    "{% for m in messages %}{{ m.items.__self__.__class__ }}{% endfor %}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_an_escape_is_refused_at_render(with_template, source):
    tok = with_template(source)
    with pytest.raises(ValidationError, match="unsafe") as refused:
        tok.apply_chat_template(HI)
    assert refused.value.param == "messages"


@pytest.mark.parametrize(
    "source",
    [
        "{{ config }}{{ request }}{{ __builtins__ }}{{ os }}{{ lipsum }}{{ url_for }}{{ get_flashed_messages }}",
        "{{ config.SECRET_KEY }}",
        "{{ lipsum.__globals__ }}",
        "{{ request.application.__globals__.__builtins__.__import__('os') }}",
    ],
)
def test_names_of_other_jinja_hosts_are_undefined(with_template, source):
    """Flask's `config`, `request`, ... do not exist here (nor jinja's `lipsum`): empty text, or
    refused when used."""
    tok = with_template(source)
    try:
        assert tok.apply_chat_template(HI) == ""
    except ValidationError as exc:
        assert "undefined" in str(exc) or "unsafe" in str(exc)


def test_an_escape_reaches_nothing(with_template, tmp_path):
    canary = tmp_path / "escaped"
    attempts = [
        f"{{{{ cycler.__init__.__globals__.os.system('touch {canary}') }}}}",
        f"{{{{ ''.__class__.__mro__[1].__subclasses__()[0]('touch {canary}', shell=True) }}}}",
        f"{{{{ self.__init__.__globals__.__builtins__.open('{canary}', 'w').write('x') }}}}",
        f"{{{{ namespace.__init__.__globals__['os'].system('touch {canary}') }}}}",
    ]
    for source in attempts:
        with pytest.raises(ValidationError):
            with_template(source).apply_chat_template(HI)
    assert not canary.exists()


def test_a_template_that_does_not_compile_is_refused_at_load(with_template):
    with pytest.raises(CheckpointError, match="does not compile"):
        with_template("{% for m in messages %}{{ m['content'] }")


# -- hangs and resource bombs: refused by the guard that owns them, quickly -------------------------

BOMBS = {
    "range": ("{% for i in range(10**9) %}x{% endfor %}", "passed 1000000000"),
    "huge range list": ("{{ range(10**9)|list|length }}", "passed 1000000000"),
    "nested loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "steps",
    ),
    "nested loops printing": (
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "steps",
    ),
    "exponential macro calls": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "steps",
    ),
    "string repeat": ("{{ 'a' * 10**10 }}", "characters (*)"),
    "list repeat": ("{{ ([1] * 10**9)|length }}", "items (*)"),
    "power": ("{{ 2 ** 100000000 }}", "bits (**)"),
    "recursive macro": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
    "recursive loop": ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "recursed too deeply"),
    "doubling with ~": (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "characters",
    ),
    "doubling with +": (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "characters (+)",
    ),
    "doubling a list": (
        "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "items (+)",
    ),
    "shared nesting": (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s] %}{% endfor %}"
        "{{ ns.s }}",
        "characters",
    ),
    "doubling with join": (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}",
        "characters",
    ),
    "replace": (
        "{% set ns = namespace(s='aaaaaaaaaa') %}{% for i in range(20) %}"
        "{% set ns.s = ns.s|replace('a', 'aaaaaaaaaa') %}{% endfor %}",
        "characters (replace)",
    ),
    "str.replace": ("{{ ('a' * 100000).replace('', 'b' * 100000) }}", "characters (replace)"),
    "center": ("{{ 'a'|center(10**10) }}", "passed 10000000000"),
    "ljust": ("{{ 'a'.ljust(10**10) }}", "passed 10000000000"),
    "indent": ("{{ ('\n' * 99999)|indent(99999) }}", "characters (indent)"),
    "format filter": ("{{ '%9999999999d'|format(1) }}", "width or precision"),
    "% format": ("{{ '%9999999999d' % 1 }}", "width or precision"),
    "str.format": ("{{ '{:>9999999999}'.format(1) }}", "width or precision"),
    "str.format nested width": ("{{ '{0:>{1}}'.format(1, 10**10) }}", "passed 10000000000"),
}

_CHILD = """
import importlib.util, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
spec = importlib.util.spec_from_file_location("chat_template", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
try:
    out = module.ChatTemplate(sys.argv[2]).render(messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"rendered": len(out)}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def render_in_child(source: str) -> dict:
    """Render `source` in a fresh interpreter with 1 GiB of address space, for at most 30 s.
    The module is loaded from its file alone (jinja and the standard library: no torch)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, chat_template_module.__file__, source],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(45)
@pytest.mark.parametrize("source, reason", BOMBS.values(), ids=BOMBS.keys())
def test_a_bomb_is_refused_by_its_guard(source, reason):
    got = render_in_child(source)
    assert got.get("error") == "ChatTemplateError", got
    assert got["message"].startswith("the chat template ")
    assert reason in got["message"], got


@pytest.mark.timeout(20)
def test_the_budget_refusal_reaches_the_client_as_a_validation_error(with_template):
    tok = with_template(BOMBS["nested loops"][0])
    with pytest.raises(ValidationError, match="steps on these messages") as refused:
        tok.encode_chat(HI)
    assert refused.value.param == "messages"
    tok = with_template(BOMBS["recursive macro"][0])
    with pytest.raises(ValidationError, match="recursed too deeply"):
        tok.apply_chat_template(HI)


@pytest.mark.timeout(30)
def test_each_render_has_its_own_budget(with_template, tokenizer_files):
    """A hostile render spending its budget in one thread does not charge the renders other
    threads do meanwhile, nor the next render in its own thread."""
    hostile = with_template(BOMBS["nested loops printing"][0])
    honest = Tokenizer(tokenizer_files)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        refused = pool.submit(hostile.apply_chat_template, HI)
        rendered = pool.submit(lambda: [honest.apply_chat_template(HI) for _ in range(200)])
        with pytest.raises(ValidationError, match="steps"):
            refused.result()
        assert set(rendered.result()) == {"<s><|user|>\nhi<|end|>\n<|assistant|>\n"}
    assert honest.apply_chat_template(HI) == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"


# -- ordinary templates still render ---------------------------------------------------------------

# In the style of the Qwen2.5 and Llama 3.1 templates: namespace, loop variables, filters, tojson.
REALISTIC = """{%- set ns = namespace(system='', turns=0) -%}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] | trim -%}{%- endif -%}
{{ bos_token }}
{%- if ns.system %}<|system|>
{{ ns.system }}<|end|>
{% endif -%}
{%- for message in messages if message['role'] != 'system' -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif -%}
{%- set ns.turns = ns.turns + 1 -%}
<|{{ message['role'] }}|>
{{ message['content'] | trim }}{{ '<|end|>' if not loop.last or message['role'] == 'user' else eos_token }}
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>
{% endif -%}
{{- '' if ns.turns < 100 else ({'turns': ns.turns} | tojson) -}}"""


def test_a_realistic_template_renders_as_before(with_template):
    tok = with_template(REALISTIC)
    messages = [
        {"role": "system", "content": " be brief "},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert tok.apply_chat_template(messages) == (
        "<s><|system|>\nbe brief<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n"
        "<|user|>\nagain<|end|>\n<|assistant|>\n"
    )
    with pytest.raises(ValidationError, match="rejected these messages: Conversation roles must alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])
    # long conversations and long contents are not mistaken for bombs
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 1000} for i in range(5001)]
    assert tok.apply_chat_template(many).endswith('<|end|>\n<|assistant|>\n{"turns": 5001}')


# -- arbitrary messages through the test checkpoint's template: nothing but ValidationError --------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["<|end|>", "<|assistant|>", "<s>", "</s>", "{{ 7 * 7 }}", "{% raw %}", "\ue0000\ue000", "\x00", "\u202e"]
)
JUNK = st.none() | st.integers() | st.floats() | st.booleans() | st.lists(TEXT, max_size=3)
MESSAGE = st.fixed_dictionaries(
    {"role": TEXT, "content": TEXT | JUNK},
    optional={"name": TEXT | JUNK, "tool_calls": JUNK},
) | st.dictionaries(TEXT, TEXT | JUNK, max_size=3)


@pytest.mark.timeout(60)
@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(messages=st.lists(MESSAGE, max_size=6), add_generation_prompt=st.booleans())
def test_arbitrary_messages_render_or_fail_with_the_documented_error(
    tiny_template_tokenizers, messages, add_generation_prompt
):
    for tok in tiny_template_tokenizers:
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt)
            ids = tok.encode_chat(messages, add_generation_prompt)
        except ValidationError as exc:
            assert exc.param == "messages" and str(exc)
            continue
        assert isinstance(text, str) and all(isinstance(i, int) for i in ids)


# ChatML (Qwen, many others) joins with `+`: a message whose content is not text is a TypeError.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_template_tokenizers(tokenizer_files, tmp_path_factory) -> list[Tokenizer]:
    """The test checkpoint's own template, and the realistic and ChatML ones above."""
    assert (
        json.loads((tokenizer_files / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    )
    tokenizers = [Tokenizer(tokenizer_files)]
    for source in (REALISTIC, CHATML):
        other = tmp_path_factory.mktemp("template")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_files / name, other / name)
        (other / "chat_template.jinja").write_text(source)
        tokenizers.append(Tokenizer(other))
    return tokenizers
