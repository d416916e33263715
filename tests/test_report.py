"""A scenario's report (fedtune.scenarios.report): report.json against its schema, report.html
in a real browser (Debian's headless Chromium), expectations and their margins."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import jsonschema
import numpy as np
import pytest

from fedtune.scenarios import report as R
from fedtune.scenarios.attacks import score_attack

CHROMIUM = "/usr/bin/chromium"
HOSTILE_NAME = '<script>alert("scenario")</script> & "friends"'
HOSTILE_SITE = "<img src=x onerror=alert(1)>"
UTC = dt.UTC


def _attack(name: str, shift: float, seed: int) -> R.AttackResult:
    rng = np.random.default_rng(seed)
    return score_attack(name, rng.normal(shift, 1.0, 40), rng.normal(0.0, 1.0, 40))


def sample_report(name: str = "digits-dp", site3: str = "site-3", **changes) -> R.ScenarioReport:
    """Three sites, six rounds (round 3 aborted, round 6 evaluation only), record- and
    site-level DP, two membership attacks, a reconstruction attempt, a fault and an adversary,
    and four expectations of which one fails."""
    sites = ("site-1", "site-2", site3)
    rounds = []
    for k in range(1, 7):
        aborted = k == 3
        charged = min(k, 5) - (1 if k > 3 else 0)  # nothing charged for the aborted round
        rounds.append(R.RoundRow(
            round=k, participants=sites, survivors=sites[:2] if k == 4 else sites,
            aborted=aborted, abort_reason="1 survivor < t = 2" if aborted else "",
            evaluate_only=k == 6,
            accuracy=None if aborted else 0.2 + 0.12 * k, loss=None if aborted else 2.0 / k,
            epsilon_record={s: 0.5 * charged ** 0.5 + 0.01 * j for j, s in enumerate(sites)},
            epsilon_site=0.3 * charged ** 0.5))
    loss_attack = _attack("loss-threshold", 1.0, 0)
    expectations = [
        R.check_expectation("accuracy", ">=", 0.8, 0.92),
        R.check_expectation("epsilon_record", "<=", 0.01, 1.13, detail="largest over sites"),
        R.check_expectation("attack_advantage", "<=", 0.9, loss_attack.advantage),
        R.check_expectation("no_individual_update_visible", "==", True, True),
    ]
    fields: dict = {
        "name": name, "file": "scenarios/digits_dp.toml", "verdict": R.verdict_of(expectations),
        "description": "Digits on three sites with secure aggregation and DP.",
        "privacy": R.PrivacySettings(secure_aggregation=True, record_level_dp=True,
                                  record_delta=1e-5, site_level_mode="distributed",
                                  site_delta=1e-5),
        "rounds": tuple(rounds), "expectations": tuple(expectations),
        "membership_attacks": (R.MembershipAttack(site3, loss_attack, advantage_bound=0.46,
                                                  label="mia-loss"),
                            R.MembershipAttack(site3, _attack("shadow-model", 0.5, 1))),
        "reconstruction_attempts": (R.ReconstructionRow("site-2", 2, 1, 0, 2, False, False,
                                                     ("fewer than t shares",)),),
        "injections": (R.Injection("fault", "drop", site3, 4, "masked-input",
                                f"{site3} dropped; 2 survivors unmasked the sum", True),
                    R.Injection("adversary", "both-lists", "coordinator", 2, "unmask",
                                "every site refused to reveal", True)),
        "transcript": R.TranscriptVerdict(True, True, "chain and 31 signatures verified", 31,
                                       "ab" * 32),
        "timing": R.Timing(dt.datetime(2025, 3, 1, 9, 0, 0, tzinfo=UTC),
                           dt.datetime(2025, 3, 1, 9, 1, 12, tzinfo=UTC),
                           {"federation": 60.5, "attacks": 9.25}),
    }
    fields.update(changes)
    return R.ScenarioReport(**fields)


@pytest.fixture(scope="module")
def schema() -> dict:
    return R.load_schema()


@pytest.fixture(scope="module")
def validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture
def document(tmp_path: Path) -> dict:
    paths = R.write_report(sample_report(), tmp_path)
    return json.loads(paths.json.read_text(encoding="utf-8"))


# -- report.json and its schema ----------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema(schema: dict):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def _undocumented(node: object, path: str) -> Iterator[str]:
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            if not sub.get("description"):
                yield f"{path}.{name}"
        for key, sub in node.items():
            yield from _undocumented(sub, f"{path}.{key}")
    elif isinstance(node, list):
        for k, sub in enumerate(node):
            yield from _undocumented(sub, f"{path}[{k}]")


def test_schema_documents_every_field(schema: dict):
    assert schema.get("description")
    assert list(_undocumented(schema, "$")) == []


def test_report_json_validates_against_the_schema(document: dict, validator):
    validator.validate(document)
    assert document["schema_version"] == R.SCHEMA_VERSION
    # the format checker does not check date-time without an extra package: check it here
    for key in ("started", "finished"):
        assert dt.datetime.fromisoformat(document["timing"][key]).utcoffset() is not None


def test_report_json_holds_what_the_runner_reported(document: dict):
    assert document["scenario"]["name"] == "digits-dp"
    assert document["verdict"] == "fail"
    assert [r["round"] for r in document["rounds"]] == [1, 2, 3, 4, 5, 6]
    assert document["rounds"][3]["dropouts"] == ["site-3"]
    assert document["rounds"][2]["aborted"] and document["rounds"][2]["accuracy"] is None
    membership = document["attacks"]["membership"]
    assert [a["name"] for a in membership] == ["loss-threshold", "shadow-model"]
    assert [a["label"] for a in membership] == ["mia-loss", ""]
    assert len(membership[0]["roc"]["fpr"]) == len(membership[0]["roc"]["tpr"]) >= 2
    assert membership[0]["chance_advantage"] == pytest.approx(math.sqrt(math.pi / 160))
    assert document["timing"]["wall_seconds"] == 72.0


def _mutated(document: dict, path: tuple, value: object) -> dict:
    broken = copy.deepcopy(document)
    node = broken
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return broken


_DELETE = object()


@pytest.mark.parametrize(("path", "value"), [
    (("verdict",), _DELETE),
    (("verdict",), "maybe"),
    (("schema_version",), 2),
    (("unexpected",), 1),
    (("rounds", 0, "accuracy"), 1.5),
    (("rounds", 0, "round"), 0),
    (("rounds", 0, "epsilon_record", "site-1"), "infinity"),
    (("rounds", 0, "participants"), "site-1, site-2"),
    (("expectations", 0, "op"), "=<"),
    (("expectations", 1, "margin"), "a lot"),
    (("expectations", 1, "met"), "no"),
    (("attacks", "membership", 0, "auc"), -0.1),
    (("attacks", "membership", 0, "roc", "fpr"), [0.0]),
    (("injections", 0, "kind"), "accident"),
    (("timing",), _DELETE),
])
def test_an_invalid_report_json_fails_validation(document: dict, validator, path, value):
    validator.validate(document)  # the unbroken document is valid...
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_mutated(document, path, value))  # ...and each break is caught


def test_an_unbounded_epsilon_is_written_as_inf(tmp_path: Path, validator):
    rounds = (R.RoundRow(1, ("a", "b"), ("a", "b"), accuracy=0.5, loss=1.0,
                         epsilon_record={"a": math.inf, "b": 1.5}),)
    expectations = (R.check_expectation("epsilon_record", "<=", 2.0, math.inf),)
    report = sample_report(rounds=rounds, expectations=expectations,
                           verdict=R.verdict_of(expectations))
    document = json.loads(R.write_report(report, tmp_path).json.read_text(encoding="utf-8"))
    validator.validate(document)
    assert document["rounds"][0]["epsilon_record"] == {"a": "inf", "b": 1.5}
    assert document["expectations"][0]["found"] == "inf"
    assert document["expectations"][0]["margin"] == "-inf"


def test_writing_the_same_report_twice_gives_the_same_bytes(tmp_path: Path):
    first = R.write_report(sample_report(), tmp_path / "a")
    second = R.write_report(sample_report(), tmp_path / "b")
    assert first.json.read_bytes() == second.json.read_bytes()
    assert first.html.read_bytes() == second.html.read_bytes()


# -- expectations, verdict, consistency ---------------------------------------------------------


def test_a_failed_upper_bound_says_by_how_much():
    e = R.check_expectation("epsilon_record", "<=", 0.01, 2.3)
    assert not e.met
    assert e.margin == pytest.approx(-2.29)


def test_a_met_lower_bound_has_a_positive_margin():
    e = R.check_expectation("accuracy", ">=", 0.8, 0.92)
    assert e.met
    assert e.margin == pytest.approx(0.12)


def test_an_unmeasured_expectation_is_not_met():
    e = R.check_expectation("attack_advantage", "<=", 0.2, None)
    assert (e.met, e.margin, e.detail) == (False, None, "not measured")


def test_a_boolean_expectation_compares_for_equality():
    assert R.check_expectation("no_update_visible", "==", True, True).met
    assert not R.check_expectation("no_update_visible", "==", True, False).met
    assert not R.check_expectation("no_update_visible", "==", True, 1).met  # not a boolean
    with pytest.raises(R.ReportError, match="<= needs a number"):
        R.check_expectation("no_update_visible", "<=", True, True)


def test_an_unknown_operator_is_refused():
    with pytest.raises(R.ReportError, match="operator '=<'"):
        R.check_expectation("accuracy", "=<", 0.8, 0.9)


def test_the_verdict_follows_the_expectations_and_the_error():
    met = R.check_expectation("accuracy", ">=", 0.8, 0.9)
    failed = R.check_expectation("accuracy", ">=", 0.95, 0.9)
    assert R.verdict_of([met]) == "pass"
    assert R.verdict_of([met, failed]) == "fail"
    assert R.verdict_of([met], error="coordinator did not start") == "error"


def test_a_pass_verdict_with_a_failed_expectation_is_refused(tmp_path: Path):
    with pytest.raises(R.ReportError, match="verdict: 'pass'.*'fail'"):
        R.write_report(sample_report(verdict="pass"), tmp_path)
    assert not (tmp_path / R.REPORT_JSON).exists()


def test_an_expectation_whose_met_flag_is_wrong_is_refused(tmp_path: Path):
    lie = dataclasses.replace(R.check_expectation("epsilon_record", "<=", 0.01, 2.3), met=True)
    with pytest.raises(R.ReportError, match=r"expectations\[0\] \('epsilon_record'\): met=True"):
        R.write_report(sample_report(expectations=(lie,), verdict="pass"), tmp_path)


def test_survivors_that_did_not_participate_are_refused(tmp_path: Path):
    rounds = (R.RoundRow(1, ("a", "b"), ("a", "c")),)
    with pytest.raises(R.ReportError, match=r"rounds\[0\]\.survivors: \['c'\]"):
        R.write_report(sample_report(rounds=rounds), tmp_path)


def test_a_nan_accuracy_is_refused_with_its_field(tmp_path: Path):
    rounds = (R.RoundRow(1, ("a",), ("a",), accuracy=math.nan),)
    with pytest.raises(R.ReportError, match=r"rounds\[0\]\.accuracy"):
        R.write_report(sample_report(rounds=rounds), tmp_path)


# -- report.html, as written --------------------------------------------------------------------


class _Dom(HTMLParser):
    """Elements of an HTML document: tag, attributes and the text inside each."""

    VOID: ClassVar[set[str]] = {"meta", "link", "br", "hr", "img", "input", "source", "col",
                                "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self._open:
            self._open[-1]["children"].append(element)
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self._open.pop()

    def handle_endtag(self, tag):
        for k in range(len(self._open) - 1, -1, -1):
            if self._open[k]["tag"] == tag:
                del self._open[k:]
                return

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def by_id(self, element_id: str) -> dict:
        found = [e for e in self.elements if e["attrs"].get("id") == element_id]
        assert len(found) == 1, f"expected one element with id {element_id!r}, found {len(found)}"
        return found[0]

    def tags(self, tag: str) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag]


def _descendants(element: dict) -> Iterator[dict]:
    for child in element["children"]:
        yield child
        yield from _descendants(child)


def _parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    dom.close()
    return dom


def test_the_html_is_self_contained(tmp_path: Path):
    page = R.write_report(sample_report(), tmp_path).html.read_text(encoding="utf-8")
    dom = _parse(page)
    assert dom.tags("script") == [] and dom.tags("link") == [] and dom.tags("img") == []
    assert not [e for e in dom.elements if {"src", "href"} & set(e["attrs"])]
    assert "url(" not in page and "@import" not in page
    csp = [e for e in dom.tags("meta") if e["attrs"].get("http-equiv") ==
           "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["attrs"]["content"]


def test_plots_without_data_still_render_with_a_message():
    page = R.render_html(sample_report(rounds=(), membership_attacks=(),
                                       privacy=R.PrivacySettings(True, False, None, "none",
                                                                 None)))
    dom = _parse(page)
    for svg_id, message in (("plot-accuracy", "no round released metrics"),
                            ("plot-epsilon", "no differential privacy: ε is unbounded"),
                            ("plot-roc", "no membership-inference attack ran")):
        svg = dom.by_id(svg_id)
        assert [e for e in _descendants(svg) if e["tag"] == "polyline"] == []
        assert message in svg["text"]


# -- report.html in a real browser --------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which(CHROMIUM) or shutil.which("chromium")
    if path is None:
        pytest.fail("headless Chromium is needed to check report.html: "
                    "run `apt-get install -y chromium` (Debian's package, /usr/bin/chromium)")
    return path


def _dump_dom(chromium: str, page: Path, profile: Path) -> str:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--dump-dom", page.resolve().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not render {page.name} within 120 s")
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    assert "<body" in done.stdout, f"chromium dumped no document: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[_Dom, str]:
    """The DOM that headless Chromium builds from a report whose scenario name and one site
    id are hostile HTML (one browser start for every test below)."""
    chromium = _chromium()
    out = tmp_path_factory.mktemp("report")
    report = sample_report(name=HOSTILE_NAME, site3=HOSTILE_SITE)
    paths = R.write_report(report, out / "run")
    dumped = _dump_dom(chromium, paths.html, out / "chromium-profile")
    return _parse(dumped), dumped


@pytest.mark.parametrize(("svg_id", "title", "series"), [
    ("plot-accuracy", "Accuracy per round", {"accuracy": 5}),
    ("plot-epsilon", "ε per round", {
        "record-level ε, site-1": 6, "record-level ε, site-2": 6,
        f"record-level ε, {HOSTILE_SITE}": 6, "site-level ε": 6}),
    ("plot-roc", "Membership inference ROC", {
        f"mia-loss (loss-threshold), {HOSTILE_SITE}": None,
        f"shadow-model, {HOSTILE_SITE}": None}),
])
def test_the_browser_shows_each_plot_with_its_data(rendered, svg_id, title, series):
    dom, _ = rendered
    svg = dom.by_id(svg_id)
    assert svg["tag"] == "svg"
    titles = [e for e in svg["children"] if e["tag"] == "title"]
    assert titles and titles[0]["text"].startswith(title)
    lines = {e["attrs"]["data-series"]: e for e in _descendants(svg) if e["tag"] == "polyline"}
    assert set(lines) == set(series)
    for label, count in series.items():
        points = lines[label]["attrs"]["points"].split()
        assert len(points) == int(lines[label]["attrs"]["data-points"]) >= 2
        if count is not None:
            assert len(points) == count


def test_the_browser_shows_the_aborted_round_in_the_accuracy_plot(rendered):
    dom, _ = rendered
    bands = [e for e in _descendants(dom.by_id("plot-accuracy"))
             if "aborted-round" in e["attrs"].get("class", "")]
    assert [b["attrs"]["data-round"] for b in bands] == ["3"]


def test_the_browser_shows_the_failed_expectation_marked(rendered):
    dom, _ = rendered
    table = dom.by_id("expectations")
    rows = [e for e in _descendants(table) if e["tag"] == "tr" and "data-met" in e["attrs"]]
    assert [r["attrs"]["data-met"] for r in rows] == ["true", "false", "true", "true"]
    failed = rows[1]
    assert "failed" in failed["attrs"]["class"].split()
    assert "epsilon_record" in failed["text"]
    assert "FAILED" in failed["text"] and "failed by 1.12" in failed["text"]
    assert "met by 0.12" in rows[0]["text"]
    verdict = dom.by_id("verdict")
    assert verdict["attrs"]["data-verdict"] == "fail" and verdict["text"] == "FAIL"


def test_scenario_strings_reach_the_browser_as_text_not_markup(rendered):
    dom, dumped = rendered
    assert dom.tags("script") == [] and dom.tags("img") == []
    assert dom.by_id("scenario-name")["text"] == HOSTILE_NAME
    assert HOSTILE_NAME in dom.tags("title")[0]["text"]
    assert "&lt;script&gt;" in dumped and "<script" not in dumped
    assert HOSTILE_SITE in dom.by_id("injections")["text"]
