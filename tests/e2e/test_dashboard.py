"""The console in a real browser (Debian's Chromium, Playwright) over a real router and three
real Orthancs: log in, the dashboard, upload and delivery, endpoints, rules, the ledger, and
hostile DICOM values shown as text. Synchronisation is by Playwright's auto-waiting
``expect`` (with timeouts) and ``wait_until``; never by sleeping.

``DDE_SCREENSHOT=1`` also writes ``docs/dashboard.png`` (left alone otherwise, so that CI
runs do not rewrite the committed file).
"""

from __future__ import annotations

import base64
import os
import random
import re
import statistics
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect
from pydicom import dcmread
from pydicom.uid import generate_uid
from tests.support.browser import Console, Watched, ready
from tests.support.datagen import make_instance, write_series
from tests.support.orthanc import wait_until

from dde.store.ledger import Ledger
from dde.store.records import NewInstance, SeedDelivery, SeedInstance
from dde.store.states import DeliveryState

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

STORAGES = ("ORTHANC1", "ORTHANC2")
PROBE = "ORTHANC-PROBE"
ENDPOINTS = (*STORAGES, PROBE)
HOSTILE = "<script>alert(1)</script>"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
INVALID_RULES = """\
rules:
  - name: mr-first
    when: {Modality: MR}
    route: [ORTHANC2]
  - name: default
    route: {group: storage, strategy: fastest}
mirror: [ORTHANC-PROBE]
"""

EDIT_RULES = f"""\
rules:
  - name: tag-site
    set: {{InstitutionName: "{HOSTILE}", "(0008,1010)": "CT2"}}
    remove: [PatientID]
    route: {{group: storage}}
  - name: default
    route: {{group: storage}}
mirror: [ORTHANC-PROBE]
"""


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def cards(page: Page) -> list[str]:
    return [str(name) for name in page.locator("#cards .card").evaluate_all(
        "cards => cards.map(c => c.dataset.endpoint)")]


def drop_file(page: Page, selector: str, path: Path) -> None:
    """Drop ``path`` on ``selector`` as a user dragging it from a file manager would."""
    transfer = page.evaluate_handle(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "application/dicom"}));
            return transfer;
        }""", [path.name, base64.b64encode(path.read_bytes()).decode()])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_login_then_the_dashboard_shows_the_three_endpoints(
        console: Console, watched: Watched) -> None:
    page = watched.page
    page.goto(console.url + "/endpoints")
    expect(page).to_have_url(console.url + "/login?next=%2Fendpoints")

    page.fill("#token", "not-the-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("Wrong token")

    page.fill("#token", console.token)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(console.url + "/endpoints")
    page.click("nav >> text=Dashboard")
    ready(page)
    expect(page.locator("#cards .card")).to_have_count(3)
    assert sorted(cards(page)) == sorted(ENDPOINTS)
    for name in ENDPOINTS:
        card = page.locator(f'#cards .card[data-endpoint="{name}"]')
        expect(card.locator("[data-sparkline] svg path.line")).to_have_count(1)
        # the router's health checks reach the real Orthancs; the page refreshes itself
        expect(card.locator('[data-field="health"]')).to_have_text("up", timeout=30_000)
    expect(page.locator("#received-chart svg")).to_have_count(1)
    expect(page.locator("#no-failures")).to_be_visible()
    watched.assert_clean()


def test_two_uploaded_files_are_delivered_and_found_in_the_ledger(
        console: Console, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    files = write_series(tmp_path / "upload", 2, rows=32, columns=32, patient_id="E2E-UPLOAD")
    uids = [uid_of(f) for f in files]
    console.log_in(page, "/upload")

    page.set_input_files("#upload-files", [str(f) for f in files])

    rows = page.locator("#upload-list tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator('#upload-list tbody tr[data-state="stored"]')).to_have_count(2)
    for row in rows.all():
        expect(row.locator("progress")).to_have_attribute("value", re.compile(r"^[1-9]"))
        expect(row.locator(".result")).to_contain_text(PROBE)
        expect(row.locator("td").nth(2)).to_have_text("CT")
    expect(page.locator("#overall-text")).to_contain_text("2 of 2 files")
    expect(page.locator("#overall-text")).to_contain_text("2 stored, 0 refused, 0 failed")
    assert page.eval_on_selector("#overall-progress", "p => p.value === p.max")

    # "where did it go?" opens the ledger on one SOP Instance UID
    rows.first.locator("a", has_text="where did it go?").click()
    expect(page).to_have_url(console.url + f"/ledger?sop_uid={uids[0]}")
    ready(page)
    instances = page.locator("#ledger-results tr.instance")
    expect(instances).to_have_count(1)
    expect(instances.locator("tr.delivery")).to_have_count(2)
    expect(page.locator('input[name="sop_uid"]')).to_have_value(uids[0])

    page.fill('input[name="sop_uid"]', "")
    page.fill('input[name="patient_id"]', "E2E-UPLOAD")
    page.click("#ledger-form button[type=submit]")
    expect(page).to_have_url(console.url + "/ledger?patient_id=E2E-UPLOAD")
    expect(instances).to_have_count(2)
    # the list refreshes itself while deliveries are pending: a storage PACS and the probe
    delivered = page.locator('#ledger-results tr.delivery [data-field="state"]',
                             has_text="delivered")
    expect(delivered).to_have_count(4, timeout=30_000)
    assert sorted(instances.evaluate_all("rows => rows.map(r => r.dataset.sop)")) == sorted(uids)
    for row in instances.all():
        expect(row.locator('[data-field="patient_id"]')).to_have_text("E2E-UPLOAD")
        expect(row.locator('[data-field="calling_aet"]')).to_have_text("WEB_UPLOAD")
        expect(row.locator(f'tr.delivery[data-endpoint="{PROBE}"] [data-field="attempts"]')
               ).to_have_text("1 attempt")
    expect(page.locator("#ledger-count")).to_contain_text("2 instances")
    console.stack.probe.wait_for_sop_instance_uids(uids, timeout=30)
    holders = [o for o in console.stack.storages if set(uids) <= o.sop_instance_uids()]
    assert len(holders) == 1
    watched.assert_clean()


def test_add_drain_and_remove_an_endpoint(console: Console, watched: Watched) -> None:
    page = watched.page
    console.log_in(page, "/endpoints")
    expect(page.locator("#endpoints tbody tr")).to_have_count(3)

    page.fill('#add-endpoint input[name="name"]', "EXTRA")
    page.fill('#add-endpoint input[name="aet"]', "EXTRA_AE")
    page.fill('#add-endpoint input[name="port"]', "11999")
    page.fill('#add-endpoint input[name="groups"]', "spare")
    page.click("#add-endpoint button[type=submit]")

    row = page.locator('#endpoints tbody tr[data-endpoint="EXTRA"]')
    expect(row).to_have_count(1)
    expect(row.locator('[data-field="aet"]')).to_have_text("EXTRA_AE")
    expect(row.locator('[data-field="state"]')).to_have_text("enabled")
    expect(page.locator("#flash")).to_contain_text("EXTRA is added")

    row.locator('button[data-action="drain"]').click()
    expect(row.locator('[data-field="state"]')).to_have_text("draining")
    expect(row.locator('button[data-action="drain"]')).to_be_disabled()
    settings = console.stack.router.app.store.settings()
    extra = settings.endpoint("EXTRA")
    assert extra is not None and extra.state.value == "draining"

    page.fill('#add-endpoint input[name="name"]', "EXTRA")
    page.fill('#add-endpoint input[name="aet"]', "EXTRA_AE")
    page.click("#add-endpoint button[type=submit]")
    expect(page.locator("#add-error")).to_contain_text("exists already")

    remove = row.locator('button[data-action="remove"]')
    remove.click()
    expect(remove).to_have_text("Remove EXTRA?")
    remove.click()
    expect(row).to_have_count(0)
    assert console.stack.router.app.store.settings().endpoint("EXTRA") is None
    watched.assert_clean()


def test_an_invalid_rule_is_refused_with_its_line_and_the_tester_explains_a_file(
        console: Console, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    console.log_in(page, "/rules")
    before = page.input_value("#rules-text")

    page.fill("#rules-text", INVALID_RULES)
    page.click("#rules-form button[type=submit]")

    error = page.locator("#rules-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Line 6")
    expect(error).to_contain_text("unknown strategy 'fastest'")
    expect(error).to_contain_text("previous rules stay")
    expect(page.locator("#gutter span.bad")).to_have_text("6")
    page.click("#goto-line")
    selected = page.eval_on_selector(
        "#rules-text", "t => t.value.slice(t.selectionStart, t.selectionEnd)")
    assert selected == "    route: {group: storage, strategy: fastest}"
    page.reload()
    ready(page)
    assert page.input_value("#rules-text") == before, "the active rules stay"

    page.fill("#rules-text", INVALID_RULES.replace("fastest", "least-loaded"))
    page.click("#rules-form button[type=submit]")
    expect(page.locator("#rules-ok")).to_contain_text("Applied: 2 rules (mr-first, default)")
    expect(page.locator("#rules-error")).to_be_hidden()

    [mr] = write_series(tmp_path / "mr", 1, rows=16, columns=16, modality="MR",
                        patient_id="E2E-RULES")
    drop_file(page, "#explain-drop", mr)
    expect(page.locator("#explain-rule")).to_have_text("mr-first", timeout=20_000)
    chips = page.locator("#explain-destinations li")
    expect(chips).to_have_text(["ORTHANC2", f"{PROBE} (mirror)"])
    expect(page.locator('#explain-header td[data-keyword="PatientID"]')).to_have_text(
        "E2E-RULES")
    expect(page.locator('#explain-header td[data-keyword="Modality"]')).to_have_text("MR")

    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not an image")
    drop_file(page, "#explain-drop", not_dicom)
    expect(page.locator("#explain-error")).to_contain_text("not a DICOM Part-10 file")
    watched.assert_clean()


def test_the_tester_shows_the_edits_a_file_would_get(
        console: Console, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    console.log_in(page, "/rules")
    page.fill("#rules-text", EDIT_RULES)
    page.click("#rules-form button[type=submit]")
    expect(page.locator("#rules-ok")).to_contain_text("Applied: 2 rules (tag-site, default)")

    [ct] = write_series(tmp_path / "ct", 1, rows=16, columns=16, modality="CT",
                        patient_id="E2E-EDITS")
    drop_file(page, "#explain-drop", ct)

    expect(page.locator("#explain-edits-block")).to_be_visible(timeout=20_000)
    rows = page.locator("#explain-edits tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator("td")).to_have_text(
        [re.compile(r"^tag-site → ORTHANC[12], ORTHANC-PROBE$"),
         "(0008,0080) InstitutionName", re.compile(".*"), HOSTILE])
    expect(rows.nth(1).locator("td").nth(3)).to_have_text("CT2")
    expect(rows.nth(2).locator("td").nth(1)).to_have_text("(0010,0020) PatientID")
    expect(rows.nth(2).locator("td").nth(2)).to_have_text("E2E-EDITS")
    expect(rows.nth(2).locator("td").nth(3)).to_have_text("(removed)")

    wait_for_rules(console, ["tag-site", "default"])
    page.goto(console.url + "/upload")  # received for real: the ledger shows the edits
    ready(page)
    page.set_input_files("#upload-files", str(ct))
    expect(page.locator("#upload-list tbody tr")).to_have_attribute("data-state", "stored")
    page.goto(console.url + "/ledger")
    ready(page)
    page.fill('input[name="patient_id"]', "E2E-EDITS")
    page.click("#ledger-form button[type=submit]")
    details = page.locator('#ledger-results [data-field="detail"]')
    expect(details).to_have_count(2)
    for index in range(2):
        expect(details.nth(index)).to_contain_text(
            f"edited by rule tag-site: InstitutionName → {HOSTILE}, StationName → CT2, "
            "PatientID removed")
    assert page.locator("#ledger-results script").count() == 0
    watched.assert_clean()


def test_hostile_dicom_values_are_shown_as_text(
        console: Console, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    dataset = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                            rows=16, columns=16, patient_id=HOSTILE, patient_name=HOSTILE,
                            accession="<b>A</b>")
    hostile = tmp_path / "<img src=x onerror=alert(2)>.dcm"
    dataset.save_as(hostile, enforce_file_format=True)
    console.log_in(page, "/upload")

    page.set_input_files("#upload-files", str(hostile))

    row = page.locator("#upload-list tbody tr")
    expect(row.locator(".file-name")).to_have_text(hostile.name)
    expect(row.locator("td").nth(1)).to_have_text(HOSTILE)
    expect(row).to_have_attribute("data-state", "stored")

    page.goto(console.url + "/rules")
    ready(page)
    drop_file(page, "#explain-drop", hostile)
    expect(page.locator('#explain-header td[data-keyword="PatientName"]')).to_have_text(HOSTILE)
    expect(page.locator("#explain-file-name")).to_have_text(hostile.name)

    page.goto(console.url + "/ledger")
    ready(page)
    page.fill('input[name="patient_id"]', HOSTILE)
    page.click("#ledger-form button[type=submit]")
    instance = page.locator("#ledger-results tr.instance")
    expect(instance).to_have_count(1)
    expect(instance.locator('[data-field="patient_id"]')).to_have_text(HOSTILE)
    expect(instance.locator('[data-field="accession_number"]')).to_have_text("<b>A</b>")
    assert instance.locator("b, img, script").count() == 0
    page.reload()  # the search is in the address: the server renders it into the form
    ready(page)
    expect(page.locator('input[name="patient_id"]')).to_have_value(HOSTILE)
    expect(instance.locator('[data-field="patient_id"]')).to_have_text(HOSTILE)
    watched.assert_clean()


def fill_ledger(ledger: Ledger, count: int, now: float) -> None:
    """``count`` instances received over the last 15 minutes, each delivered to a storage
    PACS (one per study) and to the probe; three storage deliveries failed."""
    rng = random.Random(4)
    studies = [(generate_uid(), f"PAT-{n:05d}", f"ACC{n:07d}", rng.choice(STORAGES),
                rng.choice(["CT", "CT", "MR", "US", "CR"])) for n in range(count // 20)]
    senders = {"CT": "CT_SCANNER_1", "MR": "MR_3T", "US": "US_ROOM_2", "CR": "CR_ER"}
    instances: list[SeedInstance] = []
    weights: list[float] = []
    for minute in range(15):  # a working curve: busier in some minutes than others
        weights.append(1.0 + 0.8 * abs(((minute * 7) % 11) - 5) / 5)
    total = sum(weights)
    received: list[float] = []
    for minute, weight in enumerate(weights):
        n = round(count * weight / total)
        start = now - (15 - minute) * 60
        received += [start + rng.random() * 60 for _ in range(n)]
    received = sorted(min(t, now - 1) for t in received[:count])
    received += [now - 1] * (count - len(received))
    for offset, at in enumerate(received, start=1):
        study, patient, accession, storage, modality = studies[(offset - 1) % len(studies)]
        failed = offset in (count // 3, count // 2, count - 40)
        stored = SeedDelivery(
            storage, "route", DeliveryState.FAILED if failed else DeliveryState.DELIVERED,
            5 if failed else 1,
            "C-STORE refused by the PACS: 0xA700 out of resources" if failed else None,
            at, at, at + 0.4, None if failed else at + 0.4)
        mirrored = SeedDelivery(PROBE, "mirror", DeliveryState.DELIVERED, 1, None,
                                at, at, at + 0.3, at + 0.3)
        instances.append(SeedInstance(
            NewInstance(generate_uid(), "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                        study, study + ".1", patient, accession, modality, senders[modality],
                        "DYNAMIC_DICOM_MW", "10.0.0.7", "", 520_000, at),
            "default", (stored, mirrored), spool_removed_at=at + 5))
    ledger.diagnostics.seed(instances)


def test_dashboard_load_time_with_10000_instances_in_the_ledger(
        console: Console, watched: Watched) -> None:
    page = watched.page
    fill_ledger(console.stack.router.ledger, 10_000, time.time())
    assert console.stack.router.ledger.diagnostics.count("instances") == 10_000
    console.log_in(page, "/endpoints")

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        page.goto(console.url + "/")
        expect(page.locator("#cards .card [data-sparkline] svg")).to_have_count(3)
        ready(page)
        timings.append(time.perf_counter() - started)
    navigation = page.evaluate(
        """() => { const n = performance.getEntriesByType("navigation")[0];
                   return {server: n.responseStart - n.requestStart,
                           dom: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }""")
    median = statistics.median(timings)
    print(f"\ndashboard with 10000 instances in the ledger: page load until the cards are "
          f"rendered: median {median * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms over "
          f"{len(timings)} loads; last load: server {navigation['server']:.0f} ms, "
          f"DOMContentLoaded {navigation['dom']:.0f} ms, load {navigation['load']:.0f} ms")
    expect(page.locator("#received-total")).to_have_text(re.compile(r"^\d{4,5}$"))
    expect(page.locator("#failures tbody tr")).to_have_count(3)
    assert median < 3.0, f"the dashboard takes {median:.2f} s to render"

    for name in ENDPOINTS:
        expect(page.locator(f'#cards .card[data-endpoint="{name}"] [data-field="health"]')
               ).to_have_text("up", timeout=30_000)
    if os.environ.get("DDE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        print(f"screenshot: {SCREENSHOT}")
    watched.assert_clean()


def header_file(tmp_path: Path, name: str, syntax: str, charset: str | None = None,
                patient_name: str = "Doe^Jane") -> Path:
    """A file whose header has an undefined-length sequence (with an undefined-length item
    holding a nested sequence) before PatientName: the reader must walk past it."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    dataset = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                            rows=8, columns=8, patient_id="HDR-1", patient_name=patient_name)
    if charset:
        dataset.SpecificCharacterSet = charset
    inner, item = Dataset(), Dataset()
    inner.CodeValue = "X"
    item.ReferencedSOPClassUID = "1.2.3"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    item.is_undefined_length_sequence_item = True
    dataset.ReferencedStudySequence = Sequence([item])
    dataset["ReferencedStudySequence"].is_undefined_length = True
    dataset["PurposeOfReferenceCodeSequence"] = dataset.ReferencedStudySequence[0][
        "PurposeOfReferenceCodeSequence"]
    del dataset["PurposeOfReferenceCodeSequence"]
    dataset.file_meta.TransferSyntaxUID = UID(syntax)
    path = tmp_path / name
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_the_browser_reads_the_header_the_rules_see(
        console: Console, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    console.log_in(page, "/rules")
    cases = {
        "explicit": header_file(tmp_path, "explicit.dcm", "1.2.840.10008.1.2.1"),
        "implicit": header_file(tmp_path, "implicit.dcm", "1.2.840.10008.1.2"),
        "utf8": header_file(tmp_path, "utf8.dcm", "1.2.840.10008.1.2.1", "ISO_IR 192",
                            "Müller^Zoë"),
        "latin1": header_file(tmp_path, "latin1.dcm", "1.2.840.10008.1.2", "ISO_IR 100",
                              "Müller^Zoë"),
        "big": header_file(tmp_path, "big.dcm", "1.2.840.10008.1.2.2"),
    }
    read = {name: page.evaluate(
        """data => DicomHeader.parse(Uint8Array.from(atob(data), c => c.charCodeAt(0)).buffer)""",
        base64.b64encode(path.read_bytes()).decode()) for name, path in cases.items()}

    for name in ("explicit", "implicit"):
        values = read[name]["values"]
        assert values["PatientName"] == "Doe^Jane", name
        assert values["PatientID"] == "HDR-1"
        assert values["Modality"] == "CT"
        assert values["SOPInstanceUID"] == uid_of(cases[name])
        assert read[name]["note"] == ""
    assert read["utf8"]["values"]["PatientName"] == "Müller^Zoë"
    assert read["latin1"]["values"]["PatientName"] == "Müller^Zoë"
    assert read["big"]["values"] == {}
    assert "big endian" in read["big"]["note"]
    refused = page.evaluate("""() => { try { DicomHeader.parse(new ArrayBuffer(200)); }
                                       catch (e) { return e.message; } }""")
    assert "not a DICOM Part-10 file" in refused
    watched.assert_clean()


def test_the_api_docs_render_offline(console: Console, watched: Watched) -> None:
    """/docs shows the Swagger UI with every request answered by the router: nothing from a
    CDN (an offline hospital network), and nothing the CSP refuses (a console error)."""
    page = watched.page
    elsewhere: list[str] = []

    def only_the_router(route: Route) -> None:
        url = route.request.url
        if url.startswith(console.url + "/") or url.startswith("data:"):
            route.continue_()
        else:  # as in a network without internet access
            elsewhere.append(url)
            route.abort()

    page.route("**/*", only_the_router)
    page.goto(console.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text(
        "Dynamic DICOM Endpoints")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert page.locator(".swagger-ui .opblock").count() >= 15
    expect(page.locator(".swagger-ui .opblock-summary-path",
                        has_text="/api/endpoints").first).to_be_visible()
    assert elsewhere == [], f"/docs asked another site for {elsewhere}"
    watched.assert_clean()


def test_the_endpoints_page_fits_a_1400_px_window(console: Console, watched: Watched) -> None:
    page = watched.page
    page.set_viewport_size({"width": 1400, "height": 900})
    console.log_in(page, "/endpoints")
    expect(page.locator("#endpoints tbody tr")).to_have_count(len(ENDPOINTS))
    headers = [h.strip().lower() for h in page.locator("#endpoints thead th").all_inner_texts()]
    assert "load" in headers and "url" in headers, headers
    first = page.locator(f'#endpoints tr[data-endpoint="{STORAGES[0]}"]')
    expect(first.locator('[data-field="url"]')).to_contain_text("http://127.0.0.1:")
    sizes = page.evaluate("""() => {
        const table = document.getElementById("endpoints");
        return {page: document.documentElement.scrollWidth, window: window.innerWidth,
                right: table.getBoundingClientRect().right,
                table: table.scrollWidth, room: table.parentElement.clientWidth};
    }""")
    assert sizes["page"] <= sizes["window"], sizes
    assert sizes["right"] <= sizes["window"], sizes
    assert sizes["table"] <= sizes["room"], sizes  # no scrolling inside its box either
    watched.assert_clean()


DEID_RULES = """\
rules:
  - name: research
    deidentify: {profile: basic, options: [retain-uids], salt_secret: research}
    route: [ORTHANC2]
    continue: true
  - name: default
    route: [ORTHANC1]
mirror: []
"""


def wait_for_rules(console: Console, names: list[str]) -> None:
    """The running router took the rules applied through the page (it polls the file)."""
    wait_until(lambda: [r.name for r in console.stack.router.app.router.ruleset.rules]
               == names, 20, f"the router routes by {names}")


def test_the_tester_and_the_ledger_show_a_deidentified_route(
        console: Console, watched: Watched, tmp_path: Path) -> None:
    secrets = console.stack.router.home.root / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "research").write_text("e2e salt")
    page = watched.page
    console.log_in(page, "/rules")
    page.fill("#rules-text", DEID_RULES)
    page.click("#rules-form button[type=submit]")
    expect(page.locator("#rules-ok")).to_contain_text("Applied: 2 rules (research, default)")

    [ct] = write_series(tmp_path / "ct", 1, rows=16, columns=16, modality="CT",
                        patient_id="E2E-DEID")
    burned = tmp_path / "burned.dcm"
    dataset = dcmread(ct)
    dataset.BurnedInAnnotation = "YES"
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(burned)
    rows = page.locator("#explain-edits tbody tr")
    drop_file(page, "#explain-drop", ct)
    expect(rows).to_have_count(1, timeout=20_000)
    expect(rows.nth(0).locator("td")).to_have_text(
        ["research → ORTHANC2", re.compile(
            r"^de-identified \(profile basic, options retain-uids\): \d+ elements changed")])
    drop_file(page, "#explain-drop", burned)
    expect(rows.nth(0).locator("td").nth(1)).to_contain_text(
        "held back: burned-in annotation", timeout=20_000)

    wait_for_rules(console, ["research", "default"])
    page.goto(console.url + "/upload")
    ready(page)
    page.set_input_files("#upload-files", str(ct))
    expect(page.locator("#upload-list tbody tr")).to_have_attribute("data-state", "stored")
    page.goto(console.url + "/ledger")
    ready(page)
    page.fill('input[name="patient_id"]', "E2E-DEID")
    page.click("#ledger-form button[type=submit]")
    details = page.locator('#ledger-results [data-field="detail"]')
    expect(details).to_have_count(2)
    expect(page.locator("#ledger-results")).to_contain_text(
        "de-identified by rule research (profile basic, options retain-uids)")
    watched.assert_clean()
