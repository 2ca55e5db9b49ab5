/* Shared helpers of the console pages.
 *
 * Data from the router (DICOM values, names, errors) reaches the page only as text:
 * DDE.el() and DDE.fill() set textContent; no script here ever parses data as markup.
 * Changes go through the REST API with the session's CSRF token (<meta name="csrf-token">).
 */
"use strict";

const DDE = (() => {
  const SVG = "http://www.w3.org/2000/svg";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function toLogin() {
    const here = location.pathname + location.search;
    location.assign("/login?" + new URLSearchParams({ next: here }).toString());
  }

  /* The error document {error, detail, ...} as one sentence. */
  function problem(result) {
    const data = result.data;
    if (data && typeof data === "object" && data.detail) {
      const files = Array.isArray(data.files) ? data.files : [];
      if (files.length === 1 && files[0].detail) return `${files[0].detail}; nothing was stored`;
      return String(data.detail);
    }
    if (result.status === 0) return "cannot reach the router";
    return `HTTP ${result.status}`;
  }

  /* fetch() with the CSRF token and JSON; resolves to {ok, status, data}. A lost session
   * (401) goes to the login page. */
  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    const options = { method, headers, credentials: "same-origin" };
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      return { ok: false, status: 0, data: { detail: `cannot reach the router (${error.message})` } };
    }
    if (response.status === 401) {
      toLogin();
      return { ok: false, status: 401, data: { detail: "the session ended; log in again" } };
    }
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) {
      try { data = await response.json(); } catch (error) { data = null; }
    }
    return { ok: response.ok, status: response.status, data };
  }

  /* el("td", {className: "uid", title: "…", dataset: {…}}, "text", childNode, …) */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = String(value);
      else if (key === "className" || key === "title" || key === "hidden" || key === "type" || key === "href") node[key] = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  /* Set the text of every [data-field] inside root from values[field] (through formatters
   * [field] when given); a badge also gets data-value for its colour. */
  function fill(root, values, formatters) {
    for (const node of root.querySelectorAll("[data-field]")) {
      const field = node.dataset.field;
      if (!(field in values)) continue;
      const raw = values[field];
      const format = formatters && formatters[field];
      node.textContent = format ? format(raw, values) : text(raw);
      if (node.classList.contains("badge")) node.dataset.value = raw === null ? "" : String(raw);
    }
  }

  function text(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (Array.isArray(value)) return value.join(", ");
    return String(value);
  }

  /* "2026-01-31T08:00:00.123" (the API's local ISO time) → "2026-01-31 08:00:00" */
  function when(iso) {
    return iso ? String(iso).slice(0, 19).replace("T", " ") : "—";
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function bytes(count) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let value = count;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
  }

  let flashTimer = null;
  function flash(message, kind) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.dataset.kind = kind || "ok";
    box.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 12000 : 5000);
  }

  /* A two-step button: the first click asks, the second (within 4 s) acts. No modal
   * dialogs anywhere in the console. */
  function confirmClick(button, question) {
    if (button.dataset.armed === "yes") {
      button.dataset.armed = "";
      button.textContent = button.dataset.label;
      button.classList.remove("confirm");
      return true;
    }
    button.dataset.label = button.textContent;
    button.dataset.armed = "yes";
    button.textContent = question;
    button.classList.add("confirm");
    setTimeout(() => {
      if (button.dataset.armed === "yes") {
        button.dataset.armed = "";
        button.textContent = button.dataset.label;
        button.classList.remove("confirm");
      }
    }, 4000);
    return false;
  }

  /* A drop zone over a <label> holding an <input type=file>: calls take(files) with the
   * dropped or chosen files (folders are walked when the browser allows it). */
  function dropZone(zone, input, take) {
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
    }
    for (const name of ["dragleave", "drop"]) {
      zone.addEventListener(name, () => zone.classList.remove("over"));
    }
    zone.addEventListener("drop", async (event) => {
      event.preventDefault();
      take(await droppedFiles(event.dataTransfer));
    });
    input.addEventListener("change", () => {
      take(Array.from(input.files));
      input.value = "";
    });
  }

  async function droppedFiles(transfer) {
    const entries = [];
    for (const item of Array.from(transfer.items || [])) {
      const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry) entries.push(entry);
    }
    if (!entries.length) return Array.from(transfer.files || []);
    const files = [];
    async function walk(entry) {
      if (entry.isFile) {
        files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          if (!batch.length) break;
          for (const child of batch) await walk(child);
        }
      }
    }
    for (const entry of entries) await walk(entry);
    return files;
  }

  /* DOMContentLoaded comes after every deferred page script ran: the page is usable. */
  document.addEventListener("DOMContentLoaded", () => {
    document.body.dataset.ready = "yes";
    const logout = document.getElementById("logout");
    if (logout) {
      logout.addEventListener("click", async () => {
        await api("POST", "/logout");
        location.assign("/login");
      });
    }
  });

  return { api, problem, el, svg, fill, text, when, age, bytes, flash, confirmClick, dropZone, toLogin };
})();
