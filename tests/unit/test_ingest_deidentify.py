"""A rule with ``deidentify:`` sends its destinations a de-identified copy made at receive
time (before the commit, under its new SOP Instance UID), or, for burned-in annotation,
nothing: their deliveries are failed with the reason and can never send the original."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from tests.support.orthanc import wait_until
from tests.support.unitkit import (
    FakeSender,
    FakeView,
    Generated,
    endpoint,
    load_book,
    part10_bytes,
    split_part10,
)
from tests.unit.test_dispatcher import TIMEOUT, deliver_everywhere, make_dispatcher
from tests.unit.test_streamed_ingest import incoming_for

from dde.config import RoutingSettings
from dde.config.secrets import SecretError
from dde.dicom import status as dimse
from dde.dicom.header import parse_header
from dde.receiving.ingest import IngestPipeline
from dde.reports import where_document
from dde.routing.deidentify_action import DeidentifyAction, Profiles
from dde.routing.explain import deidentify_plan
from dde.routing.router import Router
from dde.routing.rules import RulesError, check_secrets, parse_rules
from dde.store.ledger import Ledger
from dde.store.spool import Spool
from dde.synthetic import make_instance

ENDPOINTS = [endpoint("CLINICAL", ["a"]), endpoint("RESEARCH", ["b"]),
             endpoint("PROBE", ["probe"])]
RULES = """\
rules:
  - name: research
    deidentify: {profile: basic, options: [retain-longitudinal-dates], salt_secret: research}
    route: [RESEARCH]
    continue: true
  - name: clinical
    route: [CLINICAL]
mirror: [PROBE]
"""
SALT = {"DDE_SECRET_RESEARCH": "a salt for the tests"}


def instance(burned_in: bool = False, study_uid: str | None = None) -> Generated:
    study_uid = study_uid or generate_uid()
    ds = make_instance(study_uid=study_uid, series_uid=generate_uid(), number=1, rows=8,
                       columns=8, patient_name="Doe^Jane", patient_id="PAT-77")
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    syntax, dataset = split_part10(part10_bytes(ds))
    return Generated(dataset, syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID), study_uid)


class CountingProfiles(Profiles):
    def __init__(self, home: Path, environ: dict[str, str]) -> None:
        super().__init__(home, environ)
        self.loaded = 0

    def __call__(self, action: DeidentifyAction) -> Any:
        before = len(self._profiles)
        profile = super().__call__(action)
        self.loaded += len(self._profiles) - before
        return profile


def pipeline(ledger: Ledger, spool: Spool, tmp_path: Path, rules: str = RULES,
             environ: dict[str, str] | None = None) -> IngestPipeline:
    router = Router(RoutingSettings(), ENDPOINTS, load_book(), None, parse_rules(rules))
    return IngestPipeline(ledger, spool, router, lambda names: None,
                          profiles=CountingProfiles(tmp_path, SALT if environ is None
                                                    else environ))


def spooled(spool: Spool) -> list[Path]:
    return sorted(p for p in spool.root.rglob("*.dcm") if p.parent != spool.incoming_dir)


# -- the rules ---------------------------------------------------------------------------

def test_a_rule_may_deidentify() -> None:
    (rule, _) = parse_rules(RULES).rules
    assert rule.deidentify is not None and rule.deidentify.salt_secret == "research"
    assert [o.value for o in rule.deidentify.options] == ["retain-longitudinal-dates"]


@pytest.mark.parametrize(("text", "line", "words"), [
    ("    deidentify: {profile: basic, options: [retain-everything], salt_secret: s}\n",
     3, "retain-everything"),
    ("    deidentify: {profile: basic, salt_secret: s}\n    set: {InstitutionName: X}\n",
     4, "cannot be on one rule"),
    ("    deidentify: {profile: full, salt_secret: s}\n", 3, "unknown profile"),
    ("    deidentify: {profile: basic}\n", 3, "salt_secret"),
])
def test_a_bad_deidentify_is_refused_with_its_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules("rules:\n  - name: r\n" + text + "    route: [RESEARCH]\n")
    assert caught.value.line == line and words in caught.value.message


def test_a_discard_rule_does_not_deidentify() -> None:
    with pytest.raises(RulesError, match="discard rule"):
        parse_rules("rules:\n  - name: r\n    action: discard\n"
                    "    deidentify: {salt_secret: s}\n")


def test_a_missing_salt_secret_is_refused_at_apply_naming_it(tmp_path: Path) -> None:
    ruleset = parse_rules(RULES)
    with pytest.raises(RulesError) as caught:
        check_secrets(ruleset, tmp_path, {})
    assert caught.value.line == 2 and "research" in caught.value.message
    assert "DDE_SECRET_RESEARCH" in caught.value.message
    check_secrets(ruleset, tmp_path, SALT)  # the variable
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "research").write_text("from a file")
    check_secrets(ruleset, tmp_path, {})  # or the file


# -- receiving ---------------------------------------------------------------------------

def test_the_deidentified_copy_is_made_once_under_its_new_uid(ledger: Ledger, spool: Spool,
                                                              tmp_path: Path) -> None:
    received = instance()
    ingest = pipeline(ledger, spool, tmp_path)

    result = ingest.ingest(received.incoming())

    assert result.ok
    assert len(spooled(spool)) == 2  # the original and one de-identified copy
    due = {item.endpoint: item for name in ("CLINICAL", "RESEARCH", "PROBE")
           for item in ledger.queue.due(name, 2e9, 10)}
    # the mirror gets the first matching rule's bytes: de-identified
    assert due["RESEARCH"].spool_path == due["PROBE"].spool_path != due["CLINICAL"].spool_path
    copy = dcmread(spool.path_of(str(due["RESEARCH"].spool_path)))
    assert str(copy.SOPInstanceUID) != received.sop_instance_uid
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    assert due["RESEARCH"].sop_instance_uid == str(copy.SOPInstanceUID)
    assert due["CLINICAL"].sop_instance_uid == received.sop_instance_uid
    assert copy.PatientIdentityRemoved == "YES" and not copy.PatientName
    assert str(copy.StudyInstanceUID) != received.study_instance_uid
    assert ingest._profiles.loaded == 1  # type: ignore[union-attr]
    assert ingest.ingest(instance(study_uid=received.study_instance_uid).incoming()).ok
    assert ingest._profiles.loaded == 1  # type: ignore[union-attr]  # cached

    document = where_document(ledger.operators.where(received.sop_instance_uid))
    shown = {d["endpoint"]: d for d in document["deliveries"]}
    assert shown["RESEARCH"]["deidentified"] == (
        "profile basic, options retain-longitudinal-dates")
    assert shown["RESEARCH"]["sent_sop_instance_uid"] == str(copy.SOPInstanceUID)
    assert shown["CLINICAL"]["deidentified"] is None
    assert "Doe" not in str(document) and "PAT-77" not in str(document)


def test_a_streamed_instance_is_deidentified_from_its_spool_file(
        ledger: Ledger, spool: Spool, tmp_path: Path) -> None:
    ds = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                       rows=8, columns=8)
    raw = part10_bytes(ds)
    received = spool.incoming_dir / "streamed.dcm"
    received.parent.mkdir(parents=True, exist_ok=True)
    received.write_bytes(raw)

    assert pipeline(ledger, spool, tmp_path).ingest(incoming_for(received, raw)).ok

    uids = {str(dcmread(f).SOPInstanceUID) for f in spooled(spool)}
    assert len(uids) == 2 and str(ds.SOPInstanceUID) in uids


def test_burned_in_is_held_back_failed_with_the_reason_and_never_sendable(
        ledger: Ledger, spool: Spool, tmp_path: Path) -> None:
    received = instance(burned_in=True)

    result = pipeline(ledger, spool, tmp_path).ingest(received.incoming())

    assert result.ok  # the clinical destination gets it as received
    assert len(spooled(spool)) == 1
    (record,) = ledger.operators.where(received.sop_instance_uid)
    states = {d.endpoint: (d.state, d.last_error) for d in record.deliveries}
    assert states["CLINICAL"] == ("pending", None)
    for name in ("RESEARCH", "PROBE"):
        assert states[name][0] == "failed"
        assert "burned-in annotation" in str(states[name][1])
        assert "allow_burned_in: true" in str(states[name][1])
    assert ledger.queue.due("RESEARCH", 2e9, 10) == []

    research = next(d.id for d in record.deliveries if d.endpoint == "RESEARCH")
    ledger.operators.retry(research)
    (item,) = ledger.queue.due("RESEARCH", 2e9, 10)
    assert item.spool_path is None and "burned-in" in str(item.held_back)


def test_a_retried_held_back_delivery_fails_again_and_sends_nothing(
        ledger: Ledger, spool: Spool, tmp_path: Path,
        workers: list[Any]) -> None:
    received = instance(burned_in=True)
    result = pipeline(ledger, spool, tmp_path).ingest(received.incoming())
    assert result.ok and result.instance_id is not None
    assert ledger.operators.retry_failed() == 2
    senders = {name: FakeSender() for name in ("CLINICAL", "RESEARCH", "PROBE")}
    dispatcher = make_dispatcher(workers, ledger, spool, senders)

    deliver_everywhere(dispatcher, ENDPOINTS, ledger, result.instance_id, ["CLINICAL"])

    def failed_again() -> bool:
        (record,) = ledger.operators.where(received.sop_instance_uid)
        return all(d.state == "failed" and "burned-in" in str(d.last_error)
                   for d in record.deliveries if d.endpoint != "CLINICAL")

    wait_until(failed_again, TIMEOUT, "held-back deliveries failed again")
    assert senders["RESEARCH"].sent_bytes == [] and senders["PROBE"].sent_bytes == []
    # a held-back delivery needs no file: the original goes once the others are delivered
    assert dispatcher.clean_spool_once() == 1
    assert spooled(spool) == []


def test_workers_send_the_copy_under_its_new_uid(ledger: Ledger, spool: Spool,
                                                 tmp_path: Path,
                                                 workers: list[Any]) -> None:
    received = instance()
    result = pipeline(ledger, spool, tmp_path).ingest(received.incoming())
    assert result.ok and result.instance_id is not None
    senders = {name: FakeSender() for name in ("CLINICAL", "RESEARCH", "PROBE")}
    dispatcher = make_dispatcher(workers, ledger, spool, senders)

    deliver_everywhere(dispatcher, ENDPOINTS, ledger, result.instance_id, senders)

    research = dcmread(io.BytesIO(senders["RESEARCH"].sent_bytes[0]))
    assert senders["RESEARCH"].sent_uids() == [str(research.SOPInstanceUID)]
    assert senders["CLINICAL"].sent_uids() == [received.sop_instance_uid]
    assert research.PatientIdentityRemoved == "YES"


def test_a_salt_that_cannot_be_read_refuses_the_instance(ledger: Ledger, spool: Spool,
                                                         tmp_path: Path) -> None:
    result = pipeline(ledger, spool, tmp_path, environ={}).ingest(instance().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES and result.reason == "secret_missing"
    assert spooled(spool) == []
    assert ledger.diagnostics.count("instances") == 0
    assert "'research'" in result.detail and str(tmp_path) not in result.detail


def test_profiles_are_not_remembered_while_the_secret_is_missing(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    profiles = Profiles(tmp_path, environ)
    (rule, _) = parse_rules(RULES).rules
    assert rule.deidentify is not None
    with pytest.raises(SecretError):
        profiles(rule.deidentify)
    environ.update(SALT)
    assert profiles(rule.deidentify).salt == SALT["DDE_SECRET_RESEARCH"].encode()


def test_explain_shows_the_deidentification_and_a_held_back_file(tmp_path: Path) -> None:
    router = Router(RoutingSettings(), ENDPOINTS, load_book(), None, parse_rules(RULES))
    for burned_in in (False, True):
        generated = instance(burned_in)
        header = parse_header(generated.dataset, generated.transfer_syntax_uid)
        route = router.route(header, FakeView())
        (plan,) = deidentify_plan(route, generated.dataset, generated.transfer_syntax_uid)
        assert plan["rule"] == "research" and plan["destinations"] == ["RESEARCH", "PROBE"]
        assert plan["method"] == "profile basic, options retain-longitudinal-dates"
        if burned_in:
            assert "burned-in annotation" in str(plan["held_back"])
        else:
            assert plan["held_back"] is None and int(str(plan["changed_elements"])) > 5
    assert os.environ.get("DDE_SECRET_RESEARCH") is None


@pytest.mark.parametrize(("order", "variants"), [
    (["research", "clinical"], {"RESEARCH": "research", "CLINICAL": "research"}),
    (["clinical", "research"], {"RESEARCH": "research"}),
])
def test_an_endpoint_two_rules_name_gets_the_first_rules_bytes(
        order: list[str], variants: dict[str, str]) -> None:
    rules = {
        "research": "  - name: research\n    deidentify: {salt_secret: research}\n"
                    "    route: [RESEARCH, CLINICAL]\n    continue: true\n",
        "clinical": "  - name: clinical\n    route: [CLINICAL]\n    continue: true\n",
    }
    text = "rules:\n" + "".join(rules[name] for name in order)
    router = Router(RoutingSettings(), ENDPOINTS, load_book(), None, parse_rules(text))
    generated = instance()

    route = router.route(parse_header(generated.dataset, generated.transfer_syntax_uid),
                         FakeView())

    assert dict(route.variants) == variants
    assert [rule for rule, _ in route.deidentify] == ["research"]
