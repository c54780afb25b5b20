"""A checkpoint's chat template, rendered as the untrusted program it is.

The template comes with the checkpoint, and it runs in the gateway on every chat request, so it
must neither reach Python's internals nor hang or exhaust the process. On top of jinja's
`ImmutableSandboxedEnvironment` (no private or internal attributes, no mutation of lists and
dicts, `range` of at most 100,000 items):

- reaching an unsafe attribute (`''.__class__`, `cycler.__init__.__globals__`) is refused at once,
  rather than rendered as empty text;
- a render has a budget of steps (each loop iteration, filter and operator is one, a call is
  CALL_STEPS, and each item a size check visits is one) and a deadline, so no loop or recursion, however nested or
  branching, runs on;
- values stay bounded: integer arguments of calls and filters (widths, counts), and what `*`,
  `**`, `+`, `%`, `replace`, `indent`, `join` and `format` would make, are checked before the
  work is done; the result of every call, filter, operator, `~` and list, tuple or dict display,
  every `{{ value }}`, and the output, after (so every value a template holds is bounded);
- recursion (macros, recursive loops) ends at Python's recursion limit.

Every refusal, and every other exception the template raises, is a `ChatTemplateError`.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_CHARS = 32 * 2**20  # the longest value or output a render may make (far above any context)
MAX_ITEMS = 100_000  # the longest list a render may make (jinja's own bound on range)
MAX_ARG = 100_000  # the largest integer argument of a call or filter (a width, a count)
MAX_POWER_BITS = 4096  # the largest integer `**` may make
MAX_STEPS = 1_000_000  # the steps one render may take, and per message:
STEPS_PER_MESSAGE = 200
CALL_STEPS = 20  # a call (a macro's above all) costs as much as about 20 loop iterations
DEADLINE_SECONDS = 10.0  # and the wall-clock time it may take
_NUMBER = re.compile(r"\d+")


class ChatTemplateError(TemplateError):
    """The template was refused, or failed, on these messages."""


def _refuse(what: str) -> ChatTemplateError:
    return ChatTemplateError(f"the chat template {what}")


class _Budget:
    """The steps and the time one render has left (one per thread: renders run in many)."""

    def __init__(self, steps: int, seconds: float):
        self.left = self.steps = steps
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.next_clock = steps - 4096

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _refuse(f"took more than {self.steps} steps")
        if self.left < self.next_clock:
            self.next_clock = self.left - 4096
            if time.monotonic() > self.deadline:
                raise _refuse(f"ran longer than {self.seconds:g} seconds")


_current = threading.local()


def _step(n: int = 1) -> None:
    budget = getattr(_current, "budget", None)
    if budget is not None:  # None while jinja folds constants at compile time
        budget.take(n)


def _counted(iterable: Any) -> Any:
    for item in iterable:
        _step()
        yield item


def _size(value: Any, limit: int = MAX_CHARS) -> int:
    """About how many characters `value` takes as text (strings, and containers of them).
    Counting stops once it passes `limit`, or after visiting 4 * MAX_ITEMS items (then the value
    counts as too large), so a huge or self-sharing structure costs little to measure."""
    total, stack, visits = 0, [value], 4 * MAX_ITEMS
    while stack and total <= limit:
        visits -= 1
        if visits < 0:
            break
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 1
        elif isinstance(item, dict):
            total += len(item) + 1
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item) + 1
            stack.extend(item)
        else:
            total += 1
    _step(4 * MAX_ITEMS - visits)
    return total if visits >= 0 else limit + 1


def _check_value(value: Any) -> Any:
    if isinstance(value, str):  # the usual case, at once
        if len(value) > MAX_CHARS:
            raise _refuse(f"made a value of more than {MAX_CHARS} characters")
        return value
    if isinstance(value, list | tuple | dict | set | frozenset) and len(value) > MAX_ITEMS:
        raise _refuse(f"made a collection of more than {MAX_ITEMS} items")
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) and _size(value) > MAX_CHARS:
        raise _refuse(f"made a value of more than {MAX_CHARS} characters")
    return value


def _check_args(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_ARG:
            raise _refuse(f"passed {arg} where at most {MAX_ARG} is allowed")


def _check_format(fmt: Any) -> None:
    """A width or precision in a format string (`%999999999d`, `{:>999999999}`)."""
    if isinstance(fmt, str):
        for digits in _NUMBER.findall(fmt):
            if len(digits) > len(str(MAX_ARG)) or int(digits) > MAX_ARG:
                raise _refuse(
                    f"used a width or precision of {digits[:20]} where at most {MAX_ARG} is allowed"
                )


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        times = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            times = min(times, count)
        if len(text) + times * max(0, len(new) - len(old)) > MAX_CHARS:
            raise _refuse(f"would make a value of more than {MAX_CHARS} characters (replace)")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(times, int) and times > 1 and isinstance(seq, str | bytes | list | tuple):
            if isinstance(seq, list | tuple) and len(seq) * times > MAX_ITEMS:
                raise _refuse(f"would make a collection of more than {MAX_ITEMS} items (*)")
            if _size(seq) * times > MAX_CHARS:
                raise _refuse(f"would make a value of more than {MAX_CHARS} characters (*)")
    elif operator == "**":
        ints = isinstance(left, int) and isinstance(right, int)
        if ints and abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_POWER_BITS:
            raise _refuse(f"would make a number of more than {MAX_POWER_BITS} bits (**)")
    elif operator == "+":
        lists = isinstance(left, list | tuple) and isinstance(right, list | tuple)
        if lists and len(left) + len(right) > MAX_ITEMS:
            raise _refuse(f"would make a collection of more than {MAX_ITEMS} items (+)")
        sequences = isinstance(left, str | bytes | list | tuple) and isinstance(
            right, str | bytes | list | tuple
        )
        if sequences and _size(left) + _size(right) > MAX_CHARS:
            raise _refuse(f"would make a value of more than {MAX_CHARS} characters (+)")
    elif operator == "%" and isinstance(left, str):
        _check_format(left)
        _check_args(right if isinstance(right, tuple) else (right,))


def _check_filter(name: str, args: tuple, kwargs: dict) -> None:
    """What a filter would make, known before it runs (args[0] is the filtered value)."""
    value = args[0] if args else None
    if name == "replace":
        _check_replace(value, *args[1:4], **kwargs)
    elif name == "format":
        _check_format(value)
    elif name == "indent":
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        if isinstance(value, str) and isinstance(width, str | int):
            per_line = len(width) if isinstance(width, str) else width
            if len(value) + per_line * (value.count("\n") + 1) > MAX_CHARS:
                raise _refuse(f"would make a value of more than {MAX_CHARS} characters (indent)")
    elif name == "join" and isinstance(value, list | tuple):
        sep = args[1] if len(args) > 1 else kwargs.get("d", "")
        if _size(value) + len(value) * _size(sep) > MAX_CHARS:
            raise _refuse(f"would make a value of more than {MAX_CHARS} characters (join)")


def _guard_filter(name: str, func: Callable) -> Callable:
    passes_arg = getattr(func, "jinja_pass_arg", None) is not None  # then args[0] is jinja's

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        own = args[1:] if passes_arg else args
        _check_args(own[1:])
        _check_args(kwargs.values())
        _check_filter(name, own, kwargs)
        return _check_value(func(*args, **kwargs))

    return guarded


class _CheckedCodeGenerator(CodeGenerator):
    """What the sandbox has no hook for: each loop iteration is a step (the loop's iterable is
    counted), and `a ~ b` and list, tuple and dict displays are checked (`[x, x]`, nested in a
    loop, would otherwise share its way to a structure too large to print or compare)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._loop_iterables: set[int] = set()

    def visit_For(self, node, frame) -> None:  # type: ignore[no-untyped-def]
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node, *args, **kwargs):  # type: ignore[no-untyped-def]
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.counted(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_Concat(self, node, frame) -> None:  # type: ignore[no-untyped-def]
        # CodeGenerator.visit_Concat, with the result checked
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.check_value({join}((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write(")))")

    def visit_List(self, node, frame) -> None:  # type: ignore[no-untyped-def]
        self.write("environment.check_value(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node, frame) -> None:  # type: ignore[no-untyped-def]
        self.write("environment.check_value(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node, frame) -> None:  # type: ignore[no-untyped-def]
        if node.ctx != "load":  # an assignment target: `{% for a, b in ... %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.check_value(")
        super().visit_Tuple(node, frame)
        self.write(")")


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CheckedCodeGenerator

    def __init__(self) -> None:
        # finalize: every `{{ value }}` is checked before it is made into text
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=_check_value)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)  # random text on demand: no chat template needs it
        self.globals["raise_exception"] = _raise_template_error
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

    check_value = staticmethod(_check_value)
    counted = staticmethod(_counted)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        _check_binop(operator, left, right)
        return _check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _step(CALL_STEPS)
        _check_args(args)
        _check_args(kwargs.values())
        # str.format arrives wrapped by the sandbox (SandboxedEnvironment.wrap_str_format)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in ("format", "format_map"):
                _check_format(owner)
            elif name == "replace":
                _check_replace(owner, *args, **kwargs)
        if isinstance(__obj, LoopContext) and args:  # `loop(children)` in a recursive loop
            args = (_counted(args[0]), *args[1:])
        return _check_value(super().call(__context, __obj, *args, **kwargs))


def _raise_template_error(message: str):
    raise TemplateError(message)


class ChatTemplate:
    """Compile once (a template that does not compile raises `ChatTemplateError`), render often."""

    def __init__(self, source: str, max_steps: int = MAX_STEPS, deadline_seconds: float = DEADLINE_SECONDS):
        self.max_steps = max_steps
        self.deadline_seconds = deadline_seconds
        try:
            self._template = _Environment().from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"does not compile ({exc})") from exc
        except Exception as exc:  # a compiler limit (too deeply nested, ...)
            raise ChatTemplateError(f"does not compile ({type(exc).__name__}: {exc})") from exc

    def render(self, **variables: Any) -> str:
        messages = variables.get("messages")
        steps = self.max_steps + STEPS_PER_MESSAGE * (len(messages) if isinstance(messages, list) else 0)
        previous = getattr(_current, "budget", None)
        _current.budget = _Budget(steps, self.deadline_seconds)
        try:
            chunks, chars = [], 0
            for chunk in self._template.generate(**variables):
                chars += len(chunk)
                if chars > MAX_CHARS:
                    raise _refuse(f"made an output of more than {MAX_CHARS} characters")
                chunks.append(chunk)
            return "".join(chunks)
        except TemplateError:
            raise
        except RecursionError:
            raise _refuse("recursed too deeply") from None
        except MemoryError:
            raise _refuse("ran out of memory") from None
        except Exception as exc:
            raise _refuse(f"failed: {type(exc).__name__}: {exc}") from exc
        finally:
            _current.budget = previous
