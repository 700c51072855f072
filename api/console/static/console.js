// The console: status (refreshed by itself), a streaming playground, the caller's conversations.
// Plain ES, no build step. Model text is only ever set as text (textContent / text nodes), never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "console.apiKey";
  const STATUS_EVERY_MS = 5000;
  const QUOTA_EVERY_MS = 30000;
  const REFUSED = "The server refused this API key. Check it and enter it again.";

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const keysRequired = body.dataset.keysRequired === "true";

  const page = {
    key: sessionStorage.getItem(KEY_STORAGE),
    quota: new Map(), // account label -> quota, from /v1/quota
    conversation: { id: null, messages: [] },
    controller: null, // the AbortController of the running ask
  };

  class KeyRefused extends Error {}

  // ---- small DOM helpers --------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function safeUrl(raw) {
    try {
      const url = new URL(raw, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function outLink(href, text) {
    const a = el("a", null, text);
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function seconds(ms) {
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  function duration(total) {
    const s = Math.floor(total);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  function when(epochSeconds) {
    return new Date(epochSeconds * 1000).toLocaleString();
  }

  // ---- the API, with the key ----------------------------------------------------------------

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    if (page.key) headers.set("Authorization", `Bearer ${page.key}`);
    return headers;
  }

  // A keyed call; a 401 forgets the key and asks for another one.
  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: authHeaders(options.headers), cache: "no-store" });
    if (response.status === 401) {
      dropKey(REFUSED);
      throw new KeyRefused(REFUSED);
    }
    return response;
  }

  async function errorText(response) {
    try {
      const data = await response.json();
      return (data.error && data.error.message) || `HTTP ${response.status}`;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  function canCallApi() {
    return !keysRequired || Boolean(page.key);
  }

  // ---- the key ------------------------------------------------------------------------------

  function showKeyPanel(message) {
    $("key-panel").hidden = false;
    $("key-message").textContent = message || "";
    $("key-message").classList.toggle("error", message === REFUSED);
    $("key-input").value = "";
    $("key-input").focus();
    renderKeyState();
  }

  function renderKeyState() {
    $("forget-key").hidden = !page.key;
    $("key-status").textContent = page.key ? "key set" : keysRequired ? "no key" : "open server";
  }

  function dropKey(message) {
    page.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    if (keysRequired || message) showKeyPanel(message);
    renderKeyState();
  }

  async function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    $("key-submit").disabled = true;
    try {
      const response = await fetch("/v1/models", {
        headers: { Authorization: `Bearer ${key}` },
        cache: "no-store",
      });
      if (response.status === 401) {
        showKeyPanel(REFUSED);
        return;
      }
      page.key = key;
      sessionStorage.setItem(KEY_STORAGE, key);
      $("key-panel").hidden = true;
      $("key-message").textContent = "";
      renderKeyState();
      fillModels(response.ok ? await response.json() : null);
      loadConversations();
      loadQuota();
    } catch (error) {
      showKeyPanel(`Could not reach the server: ${error.message}`);
    } finally {
      $("key-submit").disabled = false;
    }
  }

  function forgetKey() {
    page.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    page.quota.clear();
    $("conversation-list").replaceChildren();
    $("conversations-message").textContent = "";
    showKeyPanel("Key forgotten. Enter a key to go on.");
  }

  // ---- status ---------------------------------------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store" });
    return response.json();
  }

  async function refreshStatus() {
    try {
      const [ready, stats] = await Promise.all([getJson("/health/ready"), getJson("/stats")]);
      renderStatus(ready, stats);
      $("status-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      const badge = $("readiness");
      badge.textContent = "unreachable";
      badge.className = "badge bad";
      $("reasons").replaceChildren(el("li", null, `The server did not answer: ${error.message}`));
    }
  }

  function renderStatus(ready, stats) {
    const badge = $("readiness");
    badge.textContent = ready.status === "ready" ? "ready" : "not ready";
    badge.className = `badge ${ready.status === "ready" ? "good" : "bad"}`;
    $("reasons").replaceChildren(...(ready.reasons || []).map((reason) => el("li", null, reason)));
    $("uptime").textContent = duration(stats.uptime || 0);
    $("requests").textContent = String(stats.requests ?? "–");
    $("open-streams").textContent = String(stats.open_streams ?? "–");
    $("conversation-count").textContent = String(stats.conversations ?? "–");
    $("models-source").textContent = stats.models ? `${stats.models.count} · ${stats.models.source}` : "–";
    if (stats.version) $("server-version").textContent = stats.version;
    renderAccounts(ready.accounts || stats.accounts || []);
    renderUpstreamErrors(stats.upstream_errors || {}, stats.recent_upstream_errors || []);
  }

  function renderAccounts(accounts) {
    const items = accounts.map((account) => {
      const item = el("li", "account");
      const head = el("div", "account-head");
      head.append(el("strong", "account-label", account.label));
      head.append(el("span", `badge ${account.state === "ready" ? "good" : "warn"}`, account.state));
      item.append(head);
      const facts = [`open streams ${account.open_streams ?? 0}`];
      if (account.until) facts.push(`until ${when(account.until)}`);
      item.append(el("div", "muted small", facts.join(" · ")));
      if (account.reason) item.append(el("div", "small", account.reason));
      const quota = page.quota.get(account.label) || account.quota;
      if (quota) {
        const list = el("ul", "quota");
        for (const [mode, value] of Object.entries(quota)) {
          const left = value.remaining === null || value.remaining === undefined ? "unmetered" : value.remaining;
          list.append(el("li", value.available ? null : "muted", `${mode.replace(/_/g, " ")}: ${left}`));
        }
        item.append(list);
      }
      return item;
    });
    $("accounts").replaceChildren(...(items.length ? items : [el("li", "muted", "no account configured")]));
  }

  function renderUpstreamErrors(errors, recent) {
    const entries = Object.entries(errors).filter(([, count]) => count > 0);
    entries.sort((a, b) => b[1] - a[1]);
    const items = entries.map(([kind, count]) => el("li", null, `${kind.replace(/_/g, " ")}: ${count}`));
    $("upstream-errors").replaceChildren(...(items.length ? items : [el("li", "muted", "none")]));
    // The latest few, newest first: when, what and on which account (the counters above are since the start).
    const now = Date.now() / 1000;
    const latest = recent.slice(0, 5).map((error) => {
      const where = error.account ? ` on ${error.account}` : "";
      const item = el("li", "small", `${error.kind.replace(/_/g, " ")}${where}, ${duration(now - error.at)} ago`);
      item.title = when(error.at);
      return item;
    });
    $("recent-errors").replaceChildren(...latest);
    $("recent-errors-title").hidden = latest.length === 0;
  }

  async function loadQuota() {
    if (!canCallApi()) return;
    try {
      const response = await api("/v1/quota");
      if (!response.ok) return;
      const data = await response.json();
      page.quota = new Map((data.data || []).filter((a) => a.quota).map((a) => [a.label, a.quota]));
    } catch {
      // the status panel shows what /health/ready knows; a failed quota call changes nothing
    }
  }

  // ---- models ---------------------------------------------------------------------------------

  async function loadModels() {
    if (!canCallApi()) return;
    try {
      const response = await api("/v1/models");
      fillModels(response.ok ? await response.json() : null);
    } catch {
      // KeyRefused already asked for another key; a network error leaves the list as it is
    }
  }

  function fillModels(list) {
    const select = $("model");
    const previous = select.value;
    const ids = ((list && list.data) || []).map((model) => model.id);
    select.replaceChildren(...ids.map((id) => {
      const option = el("option", null, id);
      option.value = id;
      return option;
    }));
    const preferred = [previous, "perplexity-auto"].find((id) => id && ids.includes(id));
    if (preferred) select.value = preferred;
  }

  // ---- the answer, rendered safely ---------------------------------------------------------------

  // Inline: [text](http...) links, [n] citation markers (linked to source n), **bold**; all else text.
  const INLINE = /\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)|\[(\d{1,3})\]|\*\*([^*\n]+)\*\*/g;

  function inline(parent, text, sources) {
    let last = 0;
    for (const match of text.matchAll(INLINE)) {
      if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
      if (match[2] !== undefined) {
        const href = safeUrl(match[2]);
        parent.append(href ? outLink(href, match[1]) : document.createTextNode(match[0]));
      } else if (match[3] !== undefined) {
        const source = sources[Number(match[3]) - 1];
        const href = source && safeUrl(source.url);
        const mark = el("sup", "cite");
        mark.append(href ? outLink(href, match[3]) : document.createTextNode(match[3]));
        parent.append(mark);
      } else {
        parent.append(el("strong", null, match[4]));
      }
      last = match.index + match[0].length;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  }

  function lines(parent, text, sources) {
    text.split("\n").forEach((line, index) => {
      if (index) parent.append(el("br"));
      inline(parent, line, sources);
    });
  }

  // Blocks: paragraphs (blank lines), headings (#), bullet and numbered lists. As in CommonMark, a list may
  // start right under a paragraph's line ("Sources:" then "- [1] ..." in footnotes mode).
  const BULLET = /^\s*[-*•]\s+/;
  const NUMBER = /^\s*\d+[.)]\s+/;
  const HEADING = /^(#{1,6})\s+(.*)$/;

  function rowKind(row) {
    if (HEADING.test(row)) return "h";
    if (BULLET.test(row)) return "ul";
    if (NUMBER.test(row)) return "ol";
    return "p";
  }

  function blockNode(kind, rows, sources) {
    if (kind === "h") {
      const node = el("h4", "answer-heading");
      inline(node, HEADING.exec(rows[0])[2], sources);
      return node;
    }
    if (kind === "ul" || kind === "ol") {
      const list = el(kind);
      for (const row of rows) {
        const item = el("li");
        inline(item, row.replace(kind === "ul" ? BULLET : NUMBER, ""), sources);
        list.append(item);
      }
      return list;
    }
    const paragraph = el("p");
    lines(paragraph, rows.join("\n"), sources);
    return paragraph;
  }

  function renderMarkdown(target, text, sources) {
    const nodes = [];
    for (const block of text.split(/\n{2,}/)) {
      let kind = null;
      let rows = [];
      for (const row of block.split("\n")) {
        if (!row.trim()) continue;
        const next = rowKind(row);
        if (next !== kind || next === "h") {  // a heading is one line; other runs gather their rows
          if (rows.length) nodes.push(blockNode(kind, rows, sources));
          kind = next;
          rows = [];
        }
        rows.push(row);
      }
      if (rows.length) nodes.push(blockNode(kind, rows, sources));
    }
    target.replaceChildren(...nodes);
  }

  function siteOf(url) {
    try {
      return new URL(url).hostname.replace(/^www\./, "");
    } catch {
      return "";
    }
  }

  function renderSources(target, results) {
    const cards = results.map((result, index) => {
      const card = el("li", "source-card");
      const head = el("div", "source-head");
      head.append(el("span", "source-index", String(index + 1)));
      const href = safeUrl(result.url);
      const title = result.title || result.url || "source";
      const titleNode = href ? outLink(href, title) : el("span", null, title);
      titleNode.classList.add("source-title");
      head.append(titleNode);
      card.append(head);
      const meta = el("div", "source-meta");
      meta.append(el("span", "source-site", siteOf(result.url) || result.source || ""));
      if (result.date) {
        const date = el("time", "source-date", String(result.date).slice(0, 10));
        date.dateTime = String(result.date);
        meta.append(date);
      }
      card.append(meta);
      if (result.snippet) card.append(el("p", "source-snippet", result.snippet));
      return card;
    });
    target.replaceChildren(...cards);
    target.hidden = cards.length === 0;
  }

  // ---- the playground -----------------------------------------------------------------------------

  function turnView(question) {
    const turn = el("article", "turn");
    turn.append(el("div", "question", question));
    const reply = el("div", "reply");
    const reasoning = el("details", "reasoning");
    reasoning.hidden = true;
    reasoning.append(el("summary", null, "Reasoning"), el("pre", "reasoning-text"));
    const answer = el("div", "answer streaming");
    const timing = el("p", "timing muted small", "waiting for the first token…");
    const heading = el("h4", "sources-heading", "Sources");
    heading.hidden = true;
    const sources = el("ol", "sources");
    sources.hidden = true;
    reply.append(reasoning, answer, timing, heading, sources);
    turn.append(reply);
    $("transcript").append(turn);
    turn.scrollIntoView({ block: "nearest" });
    return { turn, reasoning, reasoningText: reasoning.querySelector("pre"), answer, timing, heading, sources };
  }

  // The `data:` payloads of an SSE body, one at a time.
  async function* sseData(stream) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          if (line.startsWith("data:")) yield line.slice(5).trim();
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  function setBusy(busy) {
    $("ask").disabled = busy;
    $("stop").hidden = !busy;
    $("question").disabled = busy;
  }

  function renderThreadInfo() {
    const { id, messages } = page.conversation;
    const turns = messages.filter((m) => m.role === "user").length;
    $("thread-info").textContent = id ? `conversation ${id} · ${turns} turn${turns === 1 ? "" : "s"}` : "";
  }

  async function ask(event) {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || page.controller) return;
    if (!canCallApi()) {
      showKeyPanel("Enter the API key first.");
      return;
    }
    const view = turnView(question);
    const messages = [...page.conversation.messages, { role: "user", content: question }];
    const request = {
      model: $("model").value || undefined,
      stream: true,
      messages,
      citation_mode: $("citation-mode").value,
    };
    // The history alone maps onto the thread (the server's continuity rule); the id pins it explicitly.
    if (page.conversation.id) request.conversation_id = page.conversation.id;
    page.controller = new AbortController();
    setBusy(true);
    const started = performance.now();
    let firstToken = null, content = "", reasoning = "", results = [], model = "", failure = null;
    let drawPending = false;
    const draw = () => {
      drawPending = false;
      renderMarkdown(view.answer, content, results);
    };
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(request),
        signal: page.controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      const conversationId = response.headers.get("X-Conversation-ID");
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          failure = chunk.error.message || "the stream failed";
          break;
        }
        if (chunk.model) model = chunk.model;
        if (Array.isArray(chunk.search_results) && chunk.search_results.length !== results.length) {
          results = chunk.search_results;
          renderSources(view.sources, results);
          view.heading.hidden = results.length === 0;
        }
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        const thought = delta.reasoning_content ?? delta.reasoning;
        if (thought) {
          reasoning += thought;
          view.reasoningText.textContent = reasoning;
          view.reasoning.hidden = false;
        }
        if (delta.content) {
          if (firstToken === null) {
            firstToken = performance.now() - started;
            view.timing.textContent = `first token ${seconds(firstToken)} · streaming…`;
          }
          content += delta.content;
          if (!drawPending) {
            drawPending = true;
            requestAnimationFrame(draw);
          }
        }
      }
      draw();
      if (!failure) {
        page.conversation.messages = [...messages, { role: "assistant", content }];
        if (conversationId) page.conversation.id = conversationId;
      }
    } catch (error) {
      failure = error.name === "AbortError" ? "stopped" : error.message;
    } finally {
      const total = performance.now() - started;
      const parts = [model, firstToken === null ? null : `first token ${seconds(firstToken)}`, `total ${seconds(total)}`];
      view.timing.textContent = parts.filter(Boolean).join(" · ");
      view.answer.classList.remove("streaming");
      if (failure) view.answer.append(el("p", "message error", `Error: ${failure}`));
      view.turn.classList.toggle("failed", Boolean(failure));
      page.controller = null;
      setBusy(false);
      renderThreadInfo();
    }
    if (!failure) {
      $("question").value = "";
      loadConversations();
    }
    refreshStatus();
    $("question").focus();
  }

  function stop() {
    if (page.controller) page.controller.abort();
  }

  function newConversation() {
    stop();
    page.conversation = { id: null, messages: [] };
    $("transcript").replaceChildren();
    renderThreadInfo();
    $("question").focus();
  }

  // ---- conversations ---------------------------------------------------------------------------

  async function loadConversations() {
    if (!canCallApi()) return;
    try {
      const response = await api("/conversations");
      if (!response.ok) {
        $("conversations-message").textContent = await errorText(response);
        return;
      }
      renderConversations((await response.json()).data || []);
    } catch (error) {
      if (!(error instanceof KeyRefused)) $("conversations-message").textContent = error.message;
    }
  }

  function renderConversations(items) {
    items.sort((a, b) => b.updated - a.updated);
    $("conversations-message").textContent = items.length ? "" : "No conversations yet.";
    $("conversation-list").replaceChildren(...items.map((item) => {
      const row = el("li", "conversation");
      row.dataset.id = item.id;
      if (item.id === page.conversation.id) row.classList.add("current");
      const text = el("div", "conversation-text");
      text.append(el("div", "conversation-title", item.title || item.id));
      const turns = `${item.turns} turn${item.turns === 1 ? "" : "s"}`;
      text.append(el("div", "muted small", `${item.model} · ${turns} · ${when(item.updated)}`));
      text.append(el("code", "conversation-id small", item.id));
      const remove = el("button", "secondary delete", "Delete");
      remove.type = "button";
      remove.setAttribute("aria-label", `Delete conversation ${item.title || item.id}`);
      remove.addEventListener("click", () => deleteConversation(item.id, remove));
      row.append(text, remove);
      return row;
    }));
  }

  async function deleteConversation(id, button) {
    button.disabled = true;
    try {
      const response = await api(`/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
      if (!response.ok && response.status !== 404) {
        $("conversations-message").textContent = await errorText(response);
      }
      if (id === page.conversation.id) page.conversation.id = null; // its next turn starts a new thread
      renderThreadInfo();
    } catch (error) {
      if (!(error instanceof KeyRefused)) $("conversations-message").textContent = error.message;
    } finally {
      loadConversations();
      refreshStatus();
    }
  }

  // ---- start ------------------------------------------------------------------------------------

  function start() {
    $("key-form").addEventListener("submit", useKey);
    $("forget-key").addEventListener("click", forgetKey);
    $("ask-form").addEventListener("submit", ask);
    $("stop").addEventListener("click", stop);
    $("new-conversation").addEventListener("click", newConversation);
    $("refresh-conversations").addEventListener("click", loadConversations);
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("ask-form").requestSubmit();
    });
    renderKeyState();
    if (keysRequired && !page.key) showKeyPanel("");
    refreshStatus();
    setInterval(refreshStatus, STATUS_EVERY_MS);
    loadModels();
    loadConversations();
    loadQuota();
    setInterval(loadQuota, QUOTA_EVERY_MS);
  }

  start();
})();
