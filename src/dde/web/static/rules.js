/* Rules: the editor (PUT /api/rules; an invalid document shows the reason and its line)
 * and the tester (a dropped file → POST /api/route/explain, with the attributes it holds). */
"use strict";

(() => {
  const text = document.getElementById("rules-text");
  const gutter = document.getElementById("gutter");
  const error = document.getElementById("rules-error");
  const errorText = document.getElementById("rules-error-text");
  const gotoLine = document.getElementById("goto-line");
  const ok = document.getElementById("rules-ok");
  let active = text.value;
  let badLine = null;

  function drawGutter() {
    const count = text.value.split("\n").length;
    const lines = [];
    for (let n = 1; n <= count; n += 1) {
      lines.push(DDE.el("span", { className: n === badLine ? "bad" : "", text: n }));
    }
    gutter.replaceChildren(...lines);
    gutter.scrollTop = text.scrollTop;
  }

  function selectLine(line) {
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((total, l) => total + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
    const height = text.scrollHeight / Math.max(1, lines.length);
    text.scrollTop = Math.max(0, (line - 4) * height);
  }

  function showError(message, line) {
    badLine = line || null;
    errorText.textContent = line ? `Line ${line}: ${message}` : message;
    gotoLine.hidden = !line;
    error.hidden = false;
    ok.hidden = true;
    drawGutter();
  }

  text.addEventListener("input", () => { drawGutter(); ok.hidden = true; });
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  gotoLine.addEventListener("click", () => { if (badLine) selectLine(badLine); });

  document.getElementById("rules-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = event.currentTarget.querySelector("button[type=submit]");
    button.disabled = true;
    const result = await DDE.api("PUT", "/api/rules", { text: text.value });
    button.disabled = false;
    if (!result.ok) {
      const data = result.data || {};
      showError(data.reason ? `${data.reason}. The previous rules stay active.` : DDE.problem(result), data.line);
      return;
    }
    active = text.value;
    badLine = null;
    error.hidden = true;
    drawGutter();
    document.getElementById("rule-names").textContent = DDE.text(result.data.rules);
    document.getElementById("mirror-names").textContent = DDE.text(result.data.mirror);
    ok.textContent = `Applied: ${result.data.applied} rules (${result.data.rules.join(", ")}). The router uses them within a second.`;
    ok.hidden = false;
  });

  document.getElementById("rules-revert").addEventListener("click", () => {
    text.value = active;
    badLine = null;
    error.hidden = true;
    drawGutter();
  });

  /* the tester */
  const shown = document.getElementById("explain-result");
  const explainError = document.getElementById("explain-error");
  const decision = document.getElementById("explain-decision");

  async function showHeader(file) {
    const body = document.querySelector("#explain-header tbody");
    const note = document.getElementById("explain-header-note");
    body.replaceChildren();
    note.hidden = true;
    let header;
    try {
      header = await DicomHeader.read(file);
    } catch (failure) {
      note.textContent = failure.message;
      note.hidden = false;
      return;
    }
    body.replaceChildren(...DicomHeader.SHOWN.filter((k) => k in header.values).map((keyword) =>
      DDE.el("tr", {}, DDE.el("th", { scope: "row", text: keyword }),
        DDE.el("td", { dataset: { keyword }, text: header.values[keyword] }))));
    if (header.note) { note.textContent = header.note; note.hidden = false; }
  }

  /* What each matching rule's set/remove would change in the file, per rule. */
  function showEdits(plans, deidentify) {
    const body = document.querySelector("#explain-edits tbody");
    const rows = [];
    for (const plan of deidentify) {
      const to = `${plan.rule} → ${plan.destinations.join(", ")}`;
      const what = plan.error || plan.held_back
        || `de-identified (${plan.method}): ${plan.changed_elements} elements changed, removed or emptied`;
      rows.push(DDE.el("tr", {}, DDE.el("td", { text: to }),
        DDE.el("td", { colSpan: 3, className: plan.error || plan.held_back ? "error" : "", text: what })));
    }
    for (const plan of plans) {
      const to = `${plan.rule} → ${plan.destinations.join(", ")}`;
      if (plan.error) rows.push(DDE.el("tr", {}, DDE.el("td", { text: to }), DDE.el("td", { colSpan: 3, className: "error", text: plan.error })));
      for (const c of plan.changes) {
        rows.push(DDE.el("tr", {},
          DDE.el("td", { text: to }),
          DDE.el("td", { text: `${c.tag} ${c.keyword}`.trim() }),
          DDE.el("td", { text: c.old === null ? "(absent)" : c.old }),
          DDE.el("td", { text: c.action === "remove" ? "(removed)" : c.new })));
      }
    }
    body.replaceChildren(...rows);
    document.getElementById("explain-edits-block").hidden = rows.length === 0;
  }

  async function explain(files) {
    const file = files[0];
    if (!file) return;
    shown.hidden = false;
    document.getElementById("explain-file-name").textContent = file.name;
    explainError.hidden = true;
    decision.hidden = true;
    showHeader(file);
    const form = new FormData();
    form.append("file", file);
    const calling = document.getElementById("explain-calling").value.trim();
    if (calling) form.append("calling_aet", calling);
    const result = await DDE.api("POST", "/api/route/explain", form);
    if (!result.ok) {
      explainError.textContent = DDE.problem(result);
      explainError.hidden = false;
      return;
    }
    const d = result.data;
    const mirrors = new Set(d.mirrors || []);
    document.getElementById("explain-rule").textContent = d.rule === null ? "none: refused" : d.rule;
    document.getElementById("explain-destinations").replaceChildren(...(d.destinations.length
      ? d.destinations.map((name) => DDE.el("li", {
        className: mirrors.has(name) ? "mirror" : "", title: mirrors.has(name) ? "mirror copy" : "destination",
        text: mirrors.has(name) ? `${name} (mirror)` : name,
      }))
      : [DDE.el("li", { text: d.discard ? "discarded" : "none" })]));
    document.getElementById("explain-reason").textContent = DDE.text(d.reason);
    showEdits(d.edits || [], d.deidentify || []);
    decision.hidden = false;
  }

  DDE.dropZone(document.getElementById("explain-drop"), document.getElementById("explain-file"), explain);
  drawGutter();
})();
