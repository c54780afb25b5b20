"""Render the Helm chart under deploy/helm/ in Python, for a machine without `helm`.

    docs = render_chart(Path("deploy/helm/stratus"), {"secrets": {"adminKey": "..."}})
    # [(template file, parsed YAML document), ...]

It implements the part of Go's text/template and Helm's functions that the chart uses, with Go's
semantics (whitespace trimming with {{- and -}}, truthiness, `.` and `$`, `with` and `range`
rebinding the dot) and fails loudly on anything else, so a template that strays outside it fails
the test instead of rendering wrongly: actions, `if/else if/else`, `with`, `range` (lists and
maps, maps in key order), `define`/`include`, variables, parenthesised pipelines, and the
functions below. `helm template` and `helm lint` remain the reference where helm is installed
(tests/unit/test_deploy.py runs them then).
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(
    r'\s*("(?:[^"\\]|\\.)*"|\(|\)|\||:=|\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*|\.[A-Za-z0-9_.]*|[A-Za-z_][A-Za-z0-9_]*|-?\d+(?:\.\d+)?)'
)


class TemplateError(Exception):
    pass


class Fail(TemplateError):
    """`fail` or `required` in a template: what `helm template` reports as an error."""


def truthy(value: Any) -> bool:
    return not (value is None or value is False or value == 0 or value == "" or value == [] or value == {})


# -- parsing ---------------------------------------------------------------------------------------


def _lex(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", expr)], with Go's trim markers applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        expr = m.group(2)
        if not expr.startswith("/*"):
            out.append(("action", expr))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = text[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(items: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list, int, str]:
    """Nodes until one of the `stop` keywords; returns (nodes, next index, the keyword met)."""
    nodes: list = []
    while i < len(items):
        kind, value = items[i]
        i += 1
        if kind == "text":
            if value:
                nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0] if value else ""
        rest = value[len(word) :].strip()
        if word in stop:
            return nodes, i, value
        if word in ("if", "with"):
            branches = []
            cond = rest
            while True:
                body, i, ended = _parse(items, i, ("end", "else"))
                branches.append((cond, body))
                if ended == "end":
                    break
                after = ended[len("else") :].strip()
                if after.startswith("if "):
                    cond = after[3:].strip()
                elif after == "":
                    cond = None
                else:
                    raise TemplateError(f"unsupported: else {after}")
            nodes.append((word, branches))
        elif word == "range":
            body, i, ended = _parse(items, i, ("end",))
            nodes.append(("range", rest, body))
        elif word == "define":
            body, i, _ = _parse(items, i, ("end",))
            nodes.append(("define", _string(rest), body))
        elif word in ("end", "else"):
            raise TemplateError(f"unexpected {{{{ {value} }}}}")
        else:
            nodes.append(("action", value))
    if stop:
        raise TemplateError(f"missing {{{{ end }}}} (wanted one of {stop})")
    return nodes, i, ""


def _string(text: str) -> str:
    text = text.strip()
    if not (text.startswith('"') and text.endswith('"')):
        raise TemplateError(f"expected a string: {text}")
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


# -- evaluation --------------------------------------------------------------------------------------


class Renderer:
    def __init__(self, root: dict):
        self.root = root
        self.defines: dict[str, list] = {}

    # expressions
    def _tokens(self, expr: str) -> list[str]:
        tokens, pos = [], 0
        expr = expr.strip()
        while pos < len(expr):
            m = _TOKEN.match(expr, pos)
            if not m or m.end() == pos:
                raise TemplateError(f"cannot read {expr[pos:]!r} in {expr!r}")
            tokens.append(m.group(1))
            pos = m.end()
            while pos < len(expr) and expr[pos].isspace():
                pos += 1
        return tokens

    def evaluate(self, expr: str, dot: Any, scope: dict) -> Any:
        tokens = self._tokens(expr)
        value, rest = self._pipeline(tokens, dot, scope)
        if rest:
            raise TemplateError(f"unexpected {rest} in {expr!r}")
        return value

    def _pipeline(self, tokens: list[str], dot: Any, scope: dict) -> tuple[Any, list[str]]:
        commands: list[list] = [[]]
        depth = 0
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if t == "(":
                inner, consumed = self._group(tokens[i + 1 :])
                commands[-1].append(("group", inner))
                i += consumed + 2
                continue
            if t == ")":
                break
            if t == "|":
                commands.append([])
            else:
                commands[-1].append(t)
            i += 1
        del depth
        value: Any = None
        for n, command in enumerate(commands):
            if not command:
                raise TemplateError("empty command in a pipeline")
            value = self._command(command, dot, scope, piped=(n > 0), previous=value)
        return value, tokens[i:]

    def _group(self, tokens: list[str]) -> tuple[list[str], int]:
        depth = 0
        for j, t in enumerate(tokens):
            if t == "(":
                depth += 1
            elif t == ")":
                if depth == 0:
                    return tokens[:j], j
                depth -= 1
        raise TemplateError("unbalanced parentheses")

    def _arg(self, token: Any, dot: Any, scope: dict) -> Any:
        if isinstance(token, tuple):
            value, rest = self._pipeline(token[1], dot, scope)
            if rest:
                raise TemplateError(f"unexpected {rest}")
            return value
        if token.startswith('"'):
            return _string(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if re.fullmatch(r"-?\d+\.\d+", token):
            return float(token)
        if token in ("true", "false"):
            return token == "true"
        if token == "nil":
            return None
        if token.startswith("$"):
            name, _, path = token.partition(".")
            if name == "$":
                base = self.root
            elif name in scope:
                base = scope[name]
            else:
                raise TemplateError(f"undefined variable {name}")
            return _field(base, path)
        if token.startswith("."):
            return _field(dot, token[1:])
        if token in FUNCTIONS or token in ("include", "dict", "list"):
            return self._call(token, [], dot, scope)
        raise TemplateError(f"unknown word {token!r}")

    def _command(self, command: list, dot: Any, scope: dict, piped: bool, previous: Any) -> Any:
        head = command[0]
        if isinstance(head, str) and (head in FUNCTIONS or head in ("include", "dict", "list")):
            args = [self._arg(a, dot, scope) for a in command[1:]]
            if piped:
                args.append(previous)
            return self._call(head, args, dot, scope)
        if piped or len(command) != 1:
            raise TemplateError(f"cannot call {command}")
        return self._arg(head, dot, scope)

    def _call(self, name: str, args: list, dot: Any, scope: dict) -> Any:
        if name == "include":
            template, context = args
            if template not in self.defines:
                raise TemplateError(f"no template named {template!r}")
            return self.run(self.defines[template], context, {})
        if name == "dict":
            return dict(zip(args[::2], args[1::2]))
        if name == "list":
            return list(args)
        return FUNCTIONS[name](*args)

    # nodes
    def run(self, nodes: list, dot: Any, scope: dict) -> str:
        out: list[str] = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "define":
                self.defines[node[1]] = node[2]
            elif kind == "action":
                expr = node[1]
                m = re.fullmatch(r"(\$[A-Za-z0-9_]+)\s*:=\s*(.+)", expr, re.S)
                if m:
                    scope[m.group(1)] = self.evaluate(m.group(2), dot, scope)
                    continue
                value = self.evaluate(expr, dot, scope)
                out.append(_text(value))
            elif kind in ("if", "with"):
                for cond, body in node[1]:
                    if cond is None:
                        out.append(self.run(body, dot, dict(scope)))
                        break
                    value = self.evaluate(cond, dot, scope)
                    if truthy(value):
                        out.append(self.run(body, value if kind == "with" else dot, dict(scope)))
                        break
            elif kind == "range":
                spec = node[1]
                m = re.fullmatch(
                    r"(?:(\$[A-Za-z0-9_]+)\s*(?:,\s*(\$[A-Za-z0-9_]+))?\s*:=\s*)?(.+)", spec, re.S
                )
                assert m
                first, second, expr = m.groups()
                items = self.evaluate(expr, dot, scope)
                if isinstance(items, dict):
                    pairs = sorted(items.items())
                elif isinstance(items, list):
                    pairs = list(enumerate(items))
                elif items is None:
                    pairs = []
                else:
                    raise TemplateError(f"cannot range over {items!r}")
                for key, value in pairs:
                    inner = dict(scope)
                    if second:
                        inner[first], inner[second] = key, value
                    elif first:
                        inner[first] = value
                    out.append(self.run(node[2], value, inner))
            else:
                raise TemplateError(f"unknown node {kind}")
        return "".join(out)


def _field(base: Any, path: str) -> Any:
    value = base
    for part in filter(None, path.split(".")):
        if isinstance(value, dict):
            value = value.get(part)
        elif value is None:
            return None
        else:
            raise TemplateError(f"cannot read .{part} of {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise TemplateError(f"a {type(value).__name__} printed without toYaml: {value!r}")
    return str(value)


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise Fail(message)
    return value


def _fail(message: str) -> Any:
    raise Fail(message)


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[svd]", lambda _m: "{}", fmt).format(*(_text(a) for a in args))


FUNCTIONS: dict[str, Any] = {
    "quote": lambda v: '"' + _text(v).replace("\\", "\\\\").replace('"', '\\"') + '"',
    "default": lambda fallback, v=None: v if truthy(v) else fallback,
    "required": _required,
    "fail": _fail,
    "toYaml": _to_yaml,
    "nindent": lambda n, s: (
        "\n" + "\n".join((" " * n + line) if line else line for line in _text(s).split("\n"))
    ),
    "indent": lambda n, s: "\n".join((" " * n + line) if line else line for line in _text(s).split("\n")),
    "b64enc": lambda s: base64.b64encode(_text(s).encode()).decode(),
    "trunc": lambda n, s: _text(s)[:n],
    "trimSuffix": lambda suffix, s: (
        _text(s)[: -len(suffix)] if suffix and _text(s).endswith(suffix) else _text(s)
    ),
    "lower": lambda s: _text(s).lower(),
    "printf": _printf,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "not": lambda v: not truthy(v),
    "and": lambda *vs: next((v for v in vs if not truthy(v)), vs[-1]),
    "or": lambda *vs: next((v for v in vs if truthy(v)), vs[-1]),
    "int": lambda v: int(v or 0),
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(chart: Path, overrides: dict | None = None) -> dict:
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    return _merge(values, overrides or {})


def render_chart(
    chart: Path, overrides: dict | None = None, release: str = "demo", namespace: str = "llm"
) -> list[tuple[str, dict]]:
    """Every manifest the chart renders with its values.yaml merged with `overrides`, parsed."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    root = {
        "Values": chart_values(chart, overrides),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    }
    renderer = Renderer(root)
    templates = sorted((chart / "templates").iterdir())
    parsed = {}
    for path in templates:
        nodes, _, _ = _parse(_lex(path.read_text()), 0, ())
        parsed[path.name] = nodes
        renderer.run([n for n in nodes if n[0] == "define"], root, {})
    docs: list[tuple[str, dict]] = []
    for name, nodes in parsed.items():
        if name.startswith("_"):
            continue
        text = renderer.run(nodes, root, {})
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((name, doc))
    return docs
