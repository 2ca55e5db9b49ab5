/* Upload: dropped files go one per request to POST /api/instances (XMLHttpRequest, for its
 * upload progress), a few at a time; a progress bar per file and one for all. */
"use strict";

(() => {
  const PARALLEL = 3;
  const zone = document.getElementById("upload-drop");
  const maxBytes = Number(zone.dataset.maxBytes);
  const panel = document.getElementById("upload-panel");
  const list = document.querySelector("#upload-list tbody");
  const overall = document.getElementById("overall-progress");
  const overallText = document.getElementById("overall-text");
  const jobs = [];
  const waiting = [];
  let running = 0;

  function csrf() {
    return document.querySelector('meta[name="csrf-token"]').content;
  }

  function update() {
    const total = jobs.reduce((sum, job) => sum + job.file.size, 0);
    const sent = jobs.reduce((sum, job) => sum + job.sent, 0);
    overall.max = Math.max(total, 1);
    overall.value = sent;
    const count = (state) => jobs.filter((job) => job.state === state).length;
    const done = jobs.filter((job) => job.done).length;
    overallText.textContent = `${done} of ${jobs.length} files · ${DDE.bytes(sent)} of ${DDE.bytes(total)} · `
      + `${count("stored")} stored, ${count("refused")} refused, ${count("error")} failed`;
  }

  function finish(job, state, message, link) {
    job.done = true;
    job.state = state;
    job.sent = job.file.size;
    job.progress.max = 1;
    job.progress.value = 1;
    const badge = DDE.el("span", { className: "badge", dataset: { value: state }, text: state });
    job.result.replaceChildren(badge, " ", message);
    if (link) job.result.append(" ", DDE.el("a", { href: link, text: "where did it go?" }));
    job.row.dataset.state = state;
    update();
  }

  function describe(data) {
    const files = data.files || [];
    if (files.length === 1) {
      const f = files[0];
      if (f.status === "stored") {
        return ["stored", `→ ${f.destinations.length ? f.destinations.join(", ") : "no destination (discarded)"}`,
          "/ledger?sop_uid=" + encodeURIComponent(f.sop_instance_uid)];
      }
      return ["refused", DDE.text(f.detail)];
    }
    const refused = files.filter((f) => f.status !== "stored");
    const state = refused.length ? "refused" : "stored";
    const first = refused.length ? `; ${refused[0].name}: ${DDE.text(refused[0].detail)}` : "";
    return [state, `${data.stored} stored, ${data.refused} refused, ${data.skipped} skipped of ${files.length}${first}`];
  }

  function send(job) {
    running += 1;
    const request = new XMLHttpRequest();
    request.open("POST", "/api/instances");
    request.setRequestHeader("X-CSRF-Token", csrf());
    request.setRequestHeader("Accept", "application/json");
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      job.sent = job.file.size * (event.loaded / event.total);
      job.progress.max = event.total;
      job.progress.value = event.loaded;
      update();
    });
    request.addEventListener("load", () => {
      if (request.status === 401) { DDE.toLogin(); return; }
      if (request.status >= 200 && request.status < 300 && request.response) {
        const [state, message, link] = describe(request.response);
        finish(job, state, message, link);
      } else {
        const refused = request.status >= 400 && request.status < 500;
        finish(job, refused ? "refused" : "error", DDE.problem({ status: request.status, data: request.response }));
      }
    });
    request.addEventListener("error", () => finish(job, "error", "the connection to the router failed"));
    request.addEventListener("loadend", () => { running -= 1; next(); });
    const form = new FormData();
    form.append("file", job.file, job.file.name);
    job.result.textContent = "sending…";
    request.send(form);
  }

  function next() {
    while (running < PARALLEL && waiting.length) send(waiting.shift());
  }

  async function describeFile(job) {
    try {
      const header = await DicomHeader.read(job.file);
      job.patient.textContent = DDE.text(header.values.PatientName || header.values.PatientID);
      job.modality.textContent = DDE.text(header.values.Modality);
    } catch (failure) {
      job.patient.textContent = job.file.name.toLowerCase().endsWith(".zip") ? "(zip)" : "—";
    }
  }

  function take(files) {
    if (!files.length) return;
    panel.hidden = false;
    for (const file of files) {
      const job = { file, sent: 0, done: false, state: "waiting" };
      job.progress = DDE.el("progress", { max: 1, value: 0 });
      job.result = DDE.el("td", { className: "result", text: "waiting" });
      job.patient = DDE.el("td", { text: "…" });
      job.modality = DDE.el("td", { text: "" });
      job.row = DDE.el("tr", { dataset: { state: "waiting" } },
        DDE.el("td", { className: "file-name", text: file.name }), job.patient, job.modality,
        DDE.el("td", { className: "num", text: DDE.bytes(file.size) }), DDE.el("td", {}, job.progress), job.result);
      list.append(job.row);
      jobs.push(job);
      describeFile(job);
      if (file.size === 0) finish(job, "refused", "the file is empty");
      else if (file.size > maxBytes) finish(job, "refused", `larger than the upload limit of ${DDE.bytes(maxBytes)}`);
      else waiting.push(job);
    }
    update();
    next();
  }

  document.getElementById("upload-clear").addEventListener("click", () => {
    for (let i = jobs.length - 1; i >= 0; i -= 1) {
      if (jobs[i].done) { jobs[i].row.remove(); jobs.splice(i, 1); }
    }
    panel.hidden = jobs.length === 0;
    update();
  });

  window.addEventListener("beforeunload", (event) => {
    if (running || waiting.length) event.preventDefault();
  });

  DDE.dropZone(zone, document.getElementById("upload-files"), take);
})();
