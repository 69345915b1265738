"""``xray-worker pull``'s pure parts: [[pull.sources]] settings, the periods and the window, the
C-FIND identifiers asked and the answers accepted, accession number files."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset

from worker.cli import cli
from worker.config import ROOT_CONFIG, load_settings
from worker.errors import ConfigError, MalformedIdentifier, PacsError, UsageError
from worker.pull import identifiers
from worker.pull.identifiers import Series, Study
from worker.pull.period import Period, Window, choose_period

STUDY_UID, SERIES_UID, SOP_UID = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
CR = "1.2.840.10008.5.1.4.1.1.1"
TODAY = date(2026, 12, 8)


# -- settings ------------------------------------------------------------------------


def test_pull_sources_come_from_tables_of_the_config_file(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[pull]\nbatch_size = 10\nlease_seconds = 120\n"
        "[[pull.sources]]\nname = 'main'\nae_title = 'PACS1'\nhost = '10.0.0.20'\nport = 104\n"
        "[[pull.sources]]\nname = 'old'\nae_title = 'PACS2'\nhost = 'pacs2'\nport = 11112\n"
        "calling_ae_title = 'XRAY2'\nquery_model = 'patient'\nretrieve = 'move'\n"
        "move_destination = 'XRAY_SCREEN'\nmodalities = ['DX']\nmax_instances = 50\n"
        "max_retrieves = 2\nwindow = '20:00-06:00'\ndimse_timeout = 5\n"
    )
    s = load_settings(path, environ={"XRAY_SCREEN_PULL_MAX_ATTEMPTS": "3"})
    assert (s.pull.batch_size, s.pull.lease_seconds, s.pull.max_attempts) == (10, 120, 3)
    assert (s.pull.connection_attempts, s.pull.backoff_base, s.pull.backoff_cap) == (3, 30.0, 600.0)
    main, old = s.pull.sources
    assert (main.name, main.ae_title, main.host, main.port, main.calling_ae_title) == (
        "main",
        "PACS1",
        "10.0.0.20",
        104,
        "XRAY_SCREEN",
    )
    assert (main.query_model, main.retrieve, main.modalities, main.window) == (
        "study",
        "get",
        ("CR", "DX"),
        "",
    )
    assert (old.query_model, old.retrieve, old.move_destination, old.modalities) == (
        "patient",
        "move",
        "XRAY_SCREEN",
        ("DX",),
    )
    assert (old.max_instances, old.max_retrieves, old.window, old.dimse_timeout) == (
        50,
        2,
        "20:00-06:00",
        5.0,
    )
    assert load_settings(ROOT_CONFIG, environ={}).pull.sources == ()  # config.toml: the example is commented


SOURCE = "[[pull.sources]]\nname = 'main'\nae_title = 'PACS1'\nhost = 'pacs'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[pull.sources]]\nname = 'a'\nhost = 'h'\n", r"\[pull.sources #1\] needs ae_title"),
        (SOURCE + "port = 70000\n", r"\[pull.sources #1\] port = 70000: must be at most 65535"),
        (SOURCE + "retrieve = 'push'\n", r"\[pull.sources #1\] retrieve = 'push': must be one of get, move"),
        (
            SOURCE + "retrieve = 'move'\n",
            r"\[pull.sources #1\] \(main\) retrieve = 'move' needs move_destination",
        ),
        (SOURCE + "query_model = 'series'\n", r"query_model = 'series': must be one of study, patient"),
        (SOURCE + "window = '25:00-06:00'\n", r"window = '25:00-06:00': must be a window \"HH:MM-HH:MM\""),
        (
            SOURCE + "window = '06:00-06:00'\n",
            r"\(main\) window = '06:00-06:00': starts and ends at the same",
        ),
        (SOURCE + "modalities = []\n", r"\(main\) modalities = \[\]: name at least one"),
        (SOURCE + "modalities = ['cr']\n", r"modalities = \['cr'\]: must be DICOM modalities"),
        (
            SOURCE + "calling_ae_title = 'MUCH TOO LONG AE TITLE'\n",
            r"calling_ae_title = .*: must be a DICOM AE",
        ),
        (SOURCE + "max_retrieves = 0\n", r"max_retrieves = 0: must be at least 1"),
        (SOURCE + "dimse_timeout = 0\n", r"dimse_timeout = 0: must be at least 1"),
        (SOURCE + "password = 'x'\n", r"\[pull.sources #1\]: unknown key password"),
        (SOURCE + SOURCE, r"\[pull.sources #2\] \(main\) name = 'main': used by another source"),
        ("[pull]\nsources = 'main'\n", r"\[pull\] sources must be \[\[pull.sources\]\] tables"),
    ],
)
def test_bad_pull_settings_name_the_key_and_the_pacs(tmp_path: Path, text: str, message: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_a_source_from_the_environment_must_be_a_table():
    with pytest.raises(
        ConfigError, match=r"environment variable XRAY_SCREEN_PULL_SOURCES: \[pull\] sources must"
    ):
        load_settings(None, environ={"XRAY_SCREEN_PULL_SOURCES": "main"})


# -- the period and the window -------------------------------------------------------


def test_the_period_comes_from_since_days_or_the_high_water_mark():
    assert choose_period(since=date(2026, 12, 1), days=None, high_water=None, today=TODAY)[0] == Period(
        date(2026, 12, 1), TODAY
    )
    assert choose_period(since=None, days=1, high_water=date(2026, 1, 1), today=TODAY)[0] == Period(
        date(2026, 12, 7), TODAY
    )
    period, origin = choose_period(since=None, days=None, high_water=date(2026, 12, 5), today=TODAY)
    assert period == Period(date(2026, 12, 5), TODAY) and "high-water mark 2026-12-05" in origin
    period, origin = choose_period(since=None, days=None, high_water=None, today=TODAY)
    assert period == Period(date(2026, 12, 7), TODAY) and "first run" in origin
    assert Period(date(2026, 12, 1), TODAY).dicom_range() == "20261201-20261208"


@pytest.mark.parametrize(
    ("since", "days", "message"),
    [
        (date(2026, 12, 1), 2, "choose one"),
        (date(2026, 12, 9), None, "in the future"),
        (None, -1, "0 or more"),
    ],
)
def test_a_period_that_cannot_be_is_a_usage_error(since, days, message):
    with pytest.raises(UsageError, match=message):
        choose_period(since=since, days=days, high_water=None, today=TODAY)


@pytest.mark.parametrize(
    ("window", "now", "open_"),
    [
        ("", time(12, 0), True),
        ("20:00-06:00", time(20, 0), True),
        ("20:00-06:00", time(23, 59), True),
        ("20:00-06:00", time(5, 59), True),
        ("20:00-06:00", time(6, 0), False),
        ("20:00-06:00", time(12, 0), False),
        ("09:00-17:00", time(9, 0), True),
        ("09:00-17:00", time(17, 0), False),
        ("09:00-17:00", time(8, 59), False),
    ],
)
def test_the_window_is_open_from_its_start_until_its_end(window: str, now: time, open_: bool):
    assert Window(window).open_at(now) is open_


# -- identifiers ---------------------------------------------------------------------


def answer(**keys: object) -> Dataset:
    """An identifier as a PACS may send it: values not checked on the way in."""
    ds = Dataset()
    with disable_value_validation():
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def test_the_queries_ask_for_what_the_next_level_needs():
    study = identifiers.study_query(
        period=Period(date(2026, 12, 1), TODAY), modalities=("CR", "DX"), accession=None, patient_root=False
    )
    assert (study.QueryRetrieveLevel, study.StudyDate, list(study.ModalitiesInStudy)) == (
        "STUDY",
        "20261201-20261208",
        ["CR", "DX"],
    )
    assert study.StudyInstanceUID == "" and "PatientID" not in study
    by_accession = identifiers.study_query(period=None, modalities=("CR",), accession="A1", patient_root=True)
    assert (by_accession.StudyDate, by_accession.AccessionNumber, by_accession.PatientID) == ("", "A1", "")
    series = identifiers.series_query(Study(STUDY_UID, "P1"))
    assert (series.QueryRetrieveLevel, series.StudyInstanceUID, series.PatientID, series.Modality) == (
        "SERIES",
        STUDY_UID,
        "P1",
        "",
    )
    image = identifiers.image_query(Series(Study(STUDY_UID), SERIES_UID, "CR"))
    assert (image.QueryRetrieveLevel, image.SeriesInstanceUID, image.SOPInstanceUID) == (
        "IMAGE",
        SERIES_UID,
        "",
    )
    assert "PatientID" not in image


def test_good_answers_become_records():
    study = identifiers.read_study(
        answer(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID, PatientID="P1"), patient_root=True
    )
    assert study == Study(STUDY_UID, "P1")
    assert identifiers.read_study(answer(StudyInstanceUID=STUDY_UID + "\0"), patient_root=False) == Study(
        STUDY_UID
    )
    series = identifiers.read_series(
        answer(
            QueryRetrieveLevel="SERIES",
            StudyInstanceUID=STUDY_UID,
            SeriesInstanceUID=SERIES_UID,
            Modality="cr",
        ),
        study,
    )
    assert series == Series(study, SERIES_UID, "CR")
    instance = identifiers.read_instance(answer(SOPInstanceUID=SOP_UID, SOPClassUID=CR), series)
    assert (instance.sop_instance_uid, instance.sop_class_uid, instance.modality, instance.patient_id) == (
        SOP_UID,
        CR,
        "CR",
        "P1",
    )
    unnamed = identifiers.read_instance(answer(SOPInstanceUID=SOP_UID), series)  # no SOPClassUID: many PACS
    assert unnamed.sop_class_uid == ""
    retrieve = identifiers.retrieve_identifier(instance)
    assert (retrieve.QueryRetrieveLevel, retrieve.SOPInstanceUID, retrieve.PatientID) == (
        "IMAGE",
        SOP_UID,
        "P1",
    )


PATIENT = "DOE^JANE"  # a value that must never appear in an error


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda: identifiers.read_study(None, patient_root=False), "STUDY answer without an identifier"),
        (
            lambda: identifiers.read_study(answer(PatientID="x"), patient_root=False),
            "StudyInstanceUID is missing",
        ),
        (
            lambda: identifiers.read_study(answer(StudyInstanceUID=PATIENT), patient_root=False),
            "StudyInstanceUID is not a UID",
        ),
        (
            lambda: identifiers.read_study(answer(StudyInstanceUID="1." + "2" * 70), patient_root=False),
            "StudyInstanceUID is not a UID",
        ),
        (
            lambda: identifiers.read_study(
                answer(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY_UID), patient_root=False
            ),
            "QueryRetrieveLevel is not STUDY",
        ),
        (
            lambda: identifiers.read_study(answer(StudyInstanceUID=STUDY_UID), patient_root=True),
            "PatientID is missing",
        ),
        (
            lambda: identifiers.read_series(
                answer(StudyInstanceUID="9.9", SeriesInstanceUID=SERIES_UID, Modality="CR"), Study(STUDY_UID)
            ),
            "StudyInstanceUID is not the one asked about",
        ),
        (
            lambda: identifiers.read_series(
                answer(SeriesInstanceUID=SERIES_UID, Modality=PATIENT), Study(STUDY_UID)
            ),
            "Modality is not a code string",
        ),
        (
            lambda: identifiers.read_instance(
                answer(SOPClassUID=CR), Series(Study(STUDY_UID), SERIES_UID, "CR")
            ),
            "SOPInstanceUID is missing",
        ),
        (
            lambda: identifiers.read_instance(
                answer(SOPInstanceUID="../../etc/passwd", SOPClassUID=CR),
                Series(Study(STUDY_UID), SERIES_UID, "CR"),
            ),
            "SOPInstanceUID is not a UID",
        ),
    ],
)
def test_malformed_answers_are_typed_errors_that_quote_no_value(read, message: str):
    with pytest.raises(MalformedIdentifier, match=message) as caught:
        read()
    assert isinstance(caught.value, PacsError)
    assert PATIENT not in str(caught.value) and "passwd" not in str(caught.value)


def test_accession_files_are_read_line_by_line():
    text = "# wanted by radiology\nA100\n\n  A101  # a note\nA100\n"
    assert identifiers.read_accessions(text, "wanted.txt") == ["A100", "A101"]
    with pytest.raises(UsageError, match=r"wanted.txt, line 2: not an accession number") as caught:
        identifiers.read_accessions("A1\nSECRET\\B\n", "wanted.txt")
    assert "PATIENT" not in str(caught.value)
    with pytest.raises(UsageError, match="line 1"):
        identifiers.read_accessions("A*\n", "wanted.txt")


# -- the command -----------------------------------------------------------------------


def test_pull_and_report_pulls_have_help_with_an_example():
    for args in (["pull", "--help"], ["report", "pulls", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output


def test_pull_without_a_source_says_how_to_add_one(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(f"[database]\nurl = 'sqlite:///{tmp_path / 'r.db'}'\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "pull", "--days", "1"])
    assert result.exit_code == 78 and "[pull] has no sources: add a [[pull.sources]] table" in result.output
    result = CliRunner().invoke(
        cli, ["--config", str(config), "pull", "--since", "2026-12-01", "--days", "1"]
    )
    assert result.exit_code == 2 and "choose one" in result.output
