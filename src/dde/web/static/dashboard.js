/* Dashboard: endpoint cards with sparklines, received-per-minute chart, failed deliveries.
 * Draws from the stats embedded in the page, then refreshes from /api/stats and /api/queue. */
"use strict";

(() => {
  const FAILURES_SHOWN = 20;
  const formatters = {
    load: (v) => DDE.text(v),
    oldest_queued_age_seconds: (v) => DDE.age(v),
    last_error: (v) => (v ? String(v) : ""),
  };

  function sparkline(container, values, labels) {
    const width = 240;
    const height = 44;
    const top = Math.max(1, ...values);
    const step = values.length > 1 ? width / (values.length - 1) : width;
    const points = values.map((v, i) => [i * step, height - 3 - (v / top) * (height - 8)]);
    const line = points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`).join(" ");
    const image = DDE.svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
    image.append(DDE.svg("path", { class: "area", d: `${line} L${width} ${height} L0 ${height} Z` }));
    image.append(DDE.svg("path", { class: "line", d: line, "vector-effect": "non-scaling-stroke" }));
    const [lastX, lastY] = points[points.length - 1];
    image.append(DDE.svg("circle", { class: "dot", cx: lastX, cy: lastY, r: 2.5 }));
    const total = values.reduce((a, b) => a + b, 0);
    image.append(DDE.svg("title", {}, `${total} delivered: ${values.join(", ")} per minute since ${DDE.when(labels[0]).slice(11, 16)}`));
    container.replaceChildren(image);
  }

  function barChart(container, values, labels) {
    const width = Math.max(300, Math.round(container.clientWidth || 900));
    const height = 170;
    const left = 34;
    const bottom = 20;
    const top = Math.max(1, ...values);
    const slot = (width - left) / values.length;
    const image = DDE.svg("svg", { viewBox: `0 0 ${width} ${height}` });
    image.append(DDE.svg("line", { class: "axis", x1: left, x2: width, y1: height - bottom, y2: height - bottom }));
    image.append(DDE.svg("text", { x: left - 6, y: 12, "text-anchor": "end" }, top));
    image.append(DDE.svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, 0));
    values.forEach((value, i) => {
      const barHeight = (value / top) * (height - bottom - 10);
      const bar = DDE.svg("rect", {
        class: "bar", x: left + i * slot + slot * 0.15, width: slot * 0.7,
        y: height - bottom - barHeight, height: Math.max(barHeight, value ? 1 : 0),
      });
      bar.append(DDE.svg("title", {}, `${DDE.when(labels[i]).slice(11, 16)}: ${value} received`));
      image.append(bar);
      if (i % 3 === 0 || i === values.length - 1) {
        image.append(DDE.svg("text", { x: left + i * slot + slot / 2, y: height - 5, "text-anchor": "middle" },
          DDE.when(labels[i]).slice(11, 16)));
      }
    });
    container.replaceChildren(image);
  }

  function renderCards(stats) {
    const box = document.getElementById("cards");
    const template = document.getElementById("card-template");
    const names = new Set();
    let previous = null;
    for (const endpoint of stats.endpoints) {
      names.add(endpoint.name);
      let card = Array.from(box.querySelectorAll(".card")).find((c) => c.dataset.endpoint === endpoint.name);
      if (!card) {
        card = template.content.firstElementChild.cloneNode(true);
        card.dataset.endpoint = endpoint.name;
      }
      if (previous ? previous.nextElementSibling !== card : box.firstElementChild !== card) {
        if (previous) previous.after(card); else box.prepend(card);
      }
      previous = card;
      DDE.fill(card, endpoint, formatters);
      card.querySelector('[data-field="last_error"]').hidden = !endpoint.last_error;
      card.querySelector('[data-field="failed"]').dataset.nonzero = endpoint.failed ? "yes" : "no";
      sparkline(card.querySelector("[data-sparkline]"), endpoint.delivered_per_minute, stats.minutes);
    }
    for (const card of box.querySelectorAll(".card")) {
      if (!names.has(card.dataset.endpoint)) card.remove();
    }
    document.getElementById("no-endpoints").hidden = stats.endpoints.length > 0;
    const sum = (key) => stats.endpoints.reduce((total, e) => total + (e[key] || 0), 0);
    document.getElementById("received-total").textContent = stats.received_per_minute.reduce((a, b) => a + b, 0);
    document.getElementById("queued-total").textContent = sum("queued");
    document.getElementById("failed-total").textContent = sum("failed");
    document.getElementById("retry-all").disabled = sum("failed") === 0;
    barChart(document.getElementById("received-chart"), stats.received_per_minute, stats.minutes);
  }

  function renderFailures(queue) {
    const failed = queue.deliveries.filter((d) => d.state === "failed").slice(0, FAILURES_SHOWN);
    const body = document.querySelector("#failures tbody");
    body.replaceChildren(...failed.map((d) => DDE.el("tr", { dataset: { delivery: d.delivery_id } },
      DDE.el("td", { text: d.endpoint }),
      DDE.el("td", { className: "uid" },
        DDE.el("a", { href: "/ledger?sop_uid=" + encodeURIComponent(d.sop_instance_uid), text: d.sop_instance_uid })),
      DDE.el("td", { className: "num", text: d.attempts }),
      DDE.el("td", { className: "error-text", text: DDE.text(d.last_error) }),
      DDE.el("td", { className: "time", text: DDE.when(d.created_at) }),
      DDE.el("td", {}, DDE.el("button", { type: "button", className: "small", dataset: { retry: d.delivery_id }, text: "Retry" })))));
    document.getElementById("no-failures").hidden = failed.length > 0;
  }

  const status = document.getElementById("refreshed");
  const every = Number(status.dataset.refreshSeconds || 5) * 1000;
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    const [stats, queue] = await Promise.all([
      DDE.api("GET", "/api/stats"), DDE.api("GET", "/api/queue?limit=500")]);
    if (stats.ok) renderCards(stats.data);
    if (queue.ok) renderFailures(queue.data);
    if (stats.ok && queue.ok) {
      status.textContent = `Updated ${DDE.when(stats.data.generated_at).slice(11)} · refreshes every ${every / 1000} s`;
      status.classList.remove("error");
    } else {
      status.textContent = `Refresh failed: ${DDE.problem(stats.ok ? queue : stats)}; retrying`;
      status.classList.add("error");
    }
    timer = setTimeout(refresh, every);
  }

  document.querySelector("#failures tbody").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-retry]");
    if (!button) return;
    button.disabled = true;
    const result = await DDE.api("POST", `/api/deliveries/${encodeURIComponent(button.dataset.retry)}/retry`);
    if (result.ok) DDE.flash(`Delivery ${result.data.id} is queued again.`);
    else DDE.flash(`Retry refused: ${DDE.problem(result)}`, "error");
    refresh();
  });

  document.getElementById("retry-all").addEventListener("click", async (event) => {
    const button = event.currentTarget;
    if (!DDE.confirmClick(button, "Retry every failed delivery?")) return;
    const result = await DDE.api("POST", "/api/queue/retry-failed");
    if (result.ok) DDE.flash(`${result.data.requeued} failed deliveries are queued again.`);
    else DDE.flash(`Retry refused: ${DDE.problem(result)}`, "error");
    refresh();
  });

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
    else clearTimeout(timer);
  });

  renderCards(JSON.parse(document.getElementById("stats-data").textContent));
  timer = setTimeout(refresh, every);
})();
