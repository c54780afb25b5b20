"""`stratus chat MODEL`: talk to a model through the gateway, the answer streamed as it is made.

    export STRATUS_API_KEY=sk-stratus-...          # your own key; MODEL must be granted to you
    stratus chat demo
    stratus chat demo --system "Answer in one sentence." --max-tokens 200
    printf 'Hi\\nAnd then?\\n' | stratus chat demo   # one turn per line of a piped stdin

Each line is a user turn; the conversation so far goes with it (POST /v1/chat/completions,
stream: true), so the model sees the whole exchange. `/reset` forgets it, `/exit` (or Ctrl-D)
ends. What the model writes reaches the terminal with control characters escaped.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import httpx

from stratus.cli.common import Client, error_message, gateway_options
from stratus.cli.output import terminal_safe


class ChatError(click.ClickException):
    pass


def stream_reply(client: Client, body: dict[str, Any], write) -> str:
    """POST a streaming chat request; `write` each piece of text as it arrives; the whole reply.
    An error before or in the stream becomes a ChatError (the part already written stays)."""
    pieces: list[str] = []
    try:
        with client.http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code >= 400:
                r.read()
                hint = " (check STRATUS_API_KEY)" if r.status_code == 401 else ""
                raise ChatError(f"{r.status_code}: {error_message(r)}{hint}")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise ChatError(f"the stream failed: {event['error'].get('message', event['error'])}")
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        pieces.append(text)
                        write(text)
    except httpx.HTTPError as exc:
        raise ChatError(f"cannot reach {client.url}: {exc}") from None
    return "".join(pieces)


@click.command()
@click.argument("model")
@click.option("--system", default=None, help="A system message that starts the conversation.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Most tokens of one answer.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="Sampling temperature.")
@gateway_options(
    credential="your own key (any role with models.use) to which MODEL is granted; the usage is yours.",
    output=False,
)
def chat(
    model: str,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    url: str,
    cacert: str | None,
) -> None:
    """Chat with MODEL through the gateway, answers streamed; one turn per line (/reset, /exit)."""
    client = Client(url, cacert, timeout=600)
    interactive = sys.stdin.isatty()
    safe = sys.stdout.isatty()
    start: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    options: dict[str, Any] = {}
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if temperature is not None:
        options["temperature"] = temperature

    def write(text: str) -> None:
        sys.stdout.write(terminal_safe(text) if safe else text)
        sys.stdout.flush()

    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        click.echo(f"chatting with {model} at {client.url}; /reset forgets, /exit or Ctrl-D ends", err=True)
    while True:
        if interactive:
            try:
                text = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                click.echo("", err=True)
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
            text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            messages = list(start)
            click.echo("(conversation forgotten)", err=True)
            continue
        messages.append({"role": "user", "content": text})
        body = {"model": model, "messages": messages, "stream": True, **options}
        try:
            reply = stream_reply(client, body, write)
        except ChatError as exc:
            messages.pop()  # the turn did not happen
            write("\n")
            if not interactive:
                raise
            click.echo(f"error: {exc.message}", err=True)  # at a terminal: say so and go on
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this answer (the stream is closed), not the chat
            messages.pop()
            write("\n")
            click.echo("(stopped)", err=True)
            if not interactive:
                raise
            continue
        write("\n")
        messages.append({"role": "assistant", "content": reply})
