// Chat with a model the credential may use (the list is /v1/models: only those it may call),
// streamed token by token from /v1/chat/completions.
import { get, request } from "../api.js";
import { button, h, refusal, replace } from "../dom.js";

// Server-sent events from a fetch() body: yields each `data:` payload.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

export async function render(root, page) {
  let models;
  try {
    models = (await get("/v1/models")).data.map((m) => m.id);
  } catch (error) {
    root.append(refusal(error));
    return;
  }
  if (!models.length) {
    root.append(h("p", { class: "empty", text: "This credential may not call any model." }));
    return;
  }
  const model = h("select", { name: "model", "aria-label": "model" }, models.map((m) => h("option", { value: m, text: m })));
  const maxTokens = h("input", { name: "max_tokens", type: "number", value: "128", min: "1", "aria-label": "max tokens" });
  const temperature = h("input", { name: "temperature", type: "number", value: "0.7", min: "0", max: "2", step: "0.1", "aria-label": "temperature" });
  const system = h("input", { name: "system", placeholder: "System prompt (optional)", class: "wide", autocomplete: "off" });
  const log = h("div", { class: "chat-log", "aria-live": "polite" });
  const input = h("textarea", { name: "message", rows: "3", placeholder: "Say something…", required: true });
  const send = h("button", { type: "submit", text: "Send" });
  const stop = button("Stop", () => controller && controller.abort(), { disabled: true });
  const reset = button("New chat", () => {
    history.length = 0;
    replace(log);
  });
  const status = h("p", { class: "form-status", role: "status" });
  const chatForm = h("form", { class: "chat-form" }, input, h("div", { class: "controls" }, send, stop, reset), status);
  root.append(
    h("div", { class: "controls" }, h("label", {}, "Model ", model), h("label", {}, "Max tokens ", maxTokens), h("label", {}, "Temperature ", temperature)),
    system,
    log,
    chatForm,
  );
  const history = [];
  let controller = null;

  chatForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "msg user" }, h("b", { text: "you" }), h("p", { text })));
    const answer = h("p", { class: "answer" });
    log.append(h("div", { class: "msg assistant" }, h("b", { text: model.value }), answer));
    controller = page.abortable();
    send.disabled = true;
    stop.disabled = false;
    replace(status, "Generating…");
    let content = "";
    let usage = null;
    let finish = null;
    try {
      const messages = system.value.trim() ? [{ role: "system", content: system.value.trim() }, ...history] : history;
      const response = await request("POST", "/v1/chat/completions", {
        body: {
          model: model.value,
          messages,
          stream: true,
          stream_options: { include_usage: true },
          max_tokens: Number(maxTokens.value) || 128,
          temperature: Number(temperature.value),
        },
        signal: controller.signal,
      });
      for await (const data of events(response)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            content += choice.delta.content;
            answer.textContent = content;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      history.push({ role: "assistant", content });
      replace(status, usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens · ${finish}` : `done · ${finish}`);
    } catch (error) {
      if (error.name === "AbortError") {
        history.push({ role: "assistant", content });
        replace(status, "Stopped.");
      } else {
        history.pop();
        replace(status, refusal(error));
      }
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  });
}
