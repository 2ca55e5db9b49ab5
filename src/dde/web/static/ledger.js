/* Ledger: search GET /api/instances (patient ID, accession, study UID) or look up one SOP
 * Instance UID (GET /api/instances/{uid}); every instance with where each copy went, when,
 * and after how many attempts. Refreshes itself while a shown delivery is still pending. */
"use strict";

(() => {
  const PAGE = 25;
  const REFRESH_MS = 2000;
  const form = document.getElementById("ledger-form");
  const body = document.querySelector("#ledger-results tbody");
  const count = document.getElementById("ledger-count");
  const error = document.getElementById("ledger-error");
  const prev = document.getElementById("ledger-prev");
  const next = document.getElementById("ledger-next");
  const instanceTemplate = document.getElementById("instance-template");
  const deliveryTemplate = document.getElementById("delivery-template");
  const FIELDS = ["patient_id", "accession", "study_uid", "sop_uid"];
  let offset = 0;
  let timer = null;

  function criteria() {
    const values = {};
    for (const name of FIELDS) {
      const value = form.elements[name].value.trim();
      if (value) values[name] = value;
    }
    return values;
  }

  function commitment(d) {
    if (!d.commitment) return "";
    return d.commitment_reason ? `; commitment ${d.commitment}: ${d.commitment_reason}` : `; commitment ${d.commitment}`;
  }

  function detail(d) {
    if (d.state === "delivered") {
      const at = `at ${DDE.when(d.delivered_at).slice(11)}`;
      const text = d.transcoded_from ? `${at}, transcoded from ${d.transcoded_from} to ${d.transfer_syntax_uid}` : at;
      return [text + commitment(d), d.commitment === "failed" ? "error" : ""];
    }
    if (d.state === "failed") return [DDE.text(d.last_error), "error"];
    const due = d.next_attempt_at ? `next attempt ${DDE.when(d.next_attempt_at).slice(11)}` : "queued";
    return [(d.last_error ? `${due}; last error: ${d.last_error}` : due) + commitment(d), d.last_error ? "error" : ""];
  }

  /* A rule's set/remove in the bytes this delivery sends (old values come hidden). */
  function edited(d) {
    if (!d.variant) return "";
    if (d.deidentified) return `; de-identified by rule ${d.variant} (${d.deidentified})`;
    const changes = (d.edits || []).map((e) => `${e.keyword || e.tag} ${e.action === "remove" ? "removed" : `→ ${e.new}`}`);
    return `; edited by rule ${d.variant}${changes.length ? ": " + changes.join(", ") : ""}`;
  }

  function deliveryRow(d) {
    const row = deliveryTemplate.content.firstElementChild.cloneNode(true);
    row.dataset.delivery = d.id;
    row.dataset.endpoint = d.endpoint;
    const [plain, kind] = detail(d);
    const text = plain + edited(d);
    DDE.fill(row, { ...d, detail: text }, {
      attempts: (n) => `${n} ${n === 1 ? "attempt" : "attempts"}`,
      detail: (t) => t,
    });
    const cell = row.querySelector('[data-field="detail"]');
    cell.dataset.kind = kind;
    if (d.state === "delivered") cell.title = `delivered ${DDE.when(d.delivered_at)}`;
    const retry = row.querySelector("button[data-retry]");
    retry.hidden = d.state !== "failed";
    retry.dataset.retry = d.id;
    return row;
  }

  function instanceRow(instance) {
    const row = instanceTemplate.content.firstElementChild.cloneNode(true);
    row.dataset.sop = instance.sop_instance_uid;
    const blank = { patient_id: null, accession_number: null, modality: null, study_instance_uid: null };
    const received = DDE.when(instance.received_at);
    DDE.fill(row, { ...blank, ...instance, received_time: received.slice(11), received_date: received.slice(0, 10) });
    for (const link of row.querySelectorAll("a[data-search]")) {
      const value = instance[link.dataset.field];
      if (value) link.href = "/ledger?" + new URLSearchParams({ [link.dataset.search]: value });
    }
    row.querySelector("table.deliveries tbody").replaceChildren(...instance.deliveries.map(deliveryRow));
    if (!instance.deliveries.length) {
      row.querySelector("table.deliveries tbody").append(DDE.el("tr", {}, DDE.el("td", { className: "muted", text: "no destination (discarded)" })));
    }
    return row;
  }

  function show(instances, total) {
    body.replaceChildren(...instances.map(instanceRow));
    if (!total) count.textContent = "No instance matches.";
    else count.textContent = `${total} ${total === 1 ? "instance" : "instances"}; showing ${offset + 1}–${offset + instances.length}, newest first.`;
    prev.disabled = offset === 0;
    next.disabled = offset + instances.length >= total;
    const pending = instances.some((i) => i.deliveries.some((d) => d.state === "pending"));
    if (pending) {
      count.textContent += " Deliveries are pending: this list refreshes itself.";
      timer = setTimeout(() => search(false), REFRESH_MS);
    }
  }

  async function search(fromForm) {
    clearTimeout(timer);
    const values = criteria();
    if (fromForm) {
      offset = 0;
      const url = new URL(location.href);
      url.search = new URLSearchParams(values).toString();
      history.replaceState(null, "", url);
    }
    let result;
    if (values.sop_uid) {
      result = await DDE.api("GET", `/api/instances/${encodeURIComponent(values.sop_uid)}`);
      if (result.status === 404) { error.hidden = true; offset = 0; show([], 0); return; }
      if (result.ok) result.data = { total: 1, instances: [result.data] };
    } else {
      const query = new URLSearchParams({ ...values, limit: PAGE, offset });
      result = await DDE.api("GET", `/api/instances?${query}`);
    }
    if (!result.ok) {
      error.textContent = `Search failed: ${DDE.problem(result)}`;
      error.hidden = false;
      return;
    }
    error.hidden = true;
    show(result.data.instances, result.data.total);
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); search(true); });
  document.getElementById("ledger-latest").addEventListener("click", () => { form.reset(); for (const f of FIELDS) form.elements[f].value = ""; search(true); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); search(false); });
  next.addEventListener("click", () => { offset += PAGE; search(false); });

  body.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-retry]");
    if (!button) return;
    button.disabled = true;
    const result = await DDE.api("POST", `/api/deliveries/${encodeURIComponent(button.dataset.retry)}/retry`);
    if (result.ok) DDE.flash(`Delivery ${result.data.id} is queued again.`);
    else DDE.flash(`Retry refused: ${DDE.problem(result)}`, "error");
    search(false);
  });

  search(false);
})();
