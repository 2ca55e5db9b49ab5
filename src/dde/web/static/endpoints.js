/* Endpoints: the table (refreshed from GET /api/endpoints), drain/enable/disable/remove
 * (PATCH and DELETE /api/endpoints/{name}) and the add form (POST /api/endpoints). */
"use strict";

(() => {
  const table = document.querySelector("#endpoints tbody");
  const template = document.getElementById("row-template");
  const formatters = {
    address: (_, e) => `${e.host}:${e.port}`,
    kind: (kind, e) => (e.storage_commitment ? `${kind}, commitment` : kind),
  };

  function render(endpoints) {
    const rows = endpoints.map((endpoint) => {
      const row = template.content.firstElementChild.cloneNode(true);
      row.dataset.endpoint = endpoint.name;
      DDE.fill(row, { ...endpoint, address: null }, formatters);
      row.querySelector('[data-action="drain"]').disabled = endpoint.state === "draining";
      row.querySelector('[data-action="enable"]').disabled = endpoint.state === "enabled";
      row.querySelector('[data-action="disable"]').disabled = endpoint.state === "disabled";
      return row;
    });
    table.replaceChildren(...rows);
    document.getElementById("no-endpoints").hidden = endpoints.length > 0;
  }

  async function reload() {
    const result = await DDE.api("GET", "/api/endpoints");
    if (result.ok) render(result.data);
    else DDE.flash(`Cannot list the endpoints: ${DDE.problem(result)}`, "error");
  }

  const STATES = { drain: "draining", enable: "enabled", disable: "disabled" };

  table.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const name = button.closest("tr").dataset.endpoint;
    const action = button.dataset.action;
    const path = `/api/endpoints/${encodeURIComponent(name)}`;
    let result;
    if (action === "remove") {
      const force = button.dataset.force === "yes";
      if (!DDE.confirmClick(button, force ? "Redirect its queue and remove?" : `Remove ${name}?`)) return;
      result = await DDE.api("DELETE", force ? `${path}?force=true` : path);
      if (result.ok) {
        const moved = result.data.redirected ? ` ${result.data.redirected} deliveries went to ${result.data.target}.` : "";
        DDE.flash(`${name} is removed.${moved}`);
      } else if (result.status === 409 && !force) {
        button.dataset.force = "yes";
        button.textContent = "Remove anyway…";
        DDE.flash(`${DDE.problem(result)}. Click “Remove anyway…” to redirect its deliveries.`, "error");
        return;
      }
    } else {
      button.disabled = true;
      result = await DDE.api("PATCH", path, { state: STATES[action] });
      if (result.ok) DDE.flash(`${name} is ${result.data.state}.`);
    }
    if (!result.ok) DDE.flash(`${name}: ${DDE.problem(result)}`, "error");
    await reload();
  });

  const form = document.getElementById("add-endpoint");
  const error = document.getElementById("add-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const f = form.elements;
    const body = {
      name: f.name.value.trim(), host: f.host.value.trim(),
      port: Number(f.port.value), kind: f.kind.value, weight: Number(f.weight.value || 1),
      groups: f.groups.value.split(",").map((g) => g.trim()).filter(Boolean),
    };
    if (f.aet.value.trim()) body.aet = f.aet.value.trim();
    if (f.url.value.trim()) body.url = f.url.value.trim();
    if (f.storage_commitment.checked) body.storage_commitment = true;
    const result = await DDE.api("POST", "/api/endpoints", body);
    if (!result.ok) {
      error.textContent = `Not added: ${DDE.problem(result)}`;
      error.hidden = false;
      return;
    }
    DDE.flash(`${result.data.name} is added; the router uses it within a second.`);
    form.reset();
    await reload();
  });

  setInterval(() => {
    const busy = table.querySelector('button[data-armed="yes"], button[data-force="yes"]');
    if (document.visibilityState === "visible" && !busy) reload();
  }, 10000);
})();
