"""Settings: layered file < environment < flags, and errors that name key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import ROOT_CONFIG, load_settings
from worker.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    s = load_settings(None, environ={})
    assert s.inference.device == "auto"
    assert s.inference.batch_size == 64
    assert s.model.trust is False


def test_shipped_config_toml_loads():
    s = load_settings(ROOT_CONFIG, environ={})
    assert s.source == ROOT_CONFIG


def test_layers_file_then_environment_then_flags(tmp_path: Path):
    path = write(tmp_path, "[inference]\nbatch_size = 8\ndevice = 'cpu'\n")
    assert load_settings(path, environ={}).inference.batch_size == 8
    env = {"XRAY_SCREEN_INFERENCE_BATCH_SIZE": "16"}
    assert load_settings(path, environ=env).inference.batch_size == 16
    flags = {"inference.batch_size": 64, "inference.device": None}
    s = load_settings(path, environ=env, overrides=flags)
    assert s.inference.batch_size == 64
    assert s.inference.device == "cpu"  # a None flag leaves the lower layer alone


def test_config_file_from_environment(tmp_path: Path):
    path = write(tmp_path, "[inference]\nbatch_size = 3\n")
    assert load_settings(None, environ={"XRAY_SCREEN_CONFIG": str(path)}).inference.batch_size == 3


def test_relative_model_path_is_relative_to_the_file(tmp_path: Path):
    path = write(tmp_path, "[model]\npath = 'models/x.pkl'\n")
    assert load_settings(path, environ={}).model.path == tmp_path.resolve() / "models" / "x.pkl"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[inference]\nbatch_size = 0\n", r"config.toml: \[inference\] batch_size = 0: must be at least 1"),
        ("[inference]\nbatch_size = 'many'\n", r"\[inference\] batch_size = 'many': must be a whole number"),
        ("[inference]\ndevice = 'tpu'\n", r"\[inference\] device = 'tpu': must be one of auto, cpu, cuda"),
        ("[inference]\nbatchsize = 4\n", r"config.toml: unknown key \[inference\] batchsize"),
        ("[infer]\nx = 1\n", r"config.toml: unknown section \[infer\]"),
        ("[model]\nsha256 = 'abc'\n", r"\[model\] sha256 = 'abc': must be 64 hex digits"),
        ("[model]\ntrust = 'maybe'\n", r"\[model\] trust = 'maybe': must be true or false"),
        ("[inference\n", r"config.toml: not valid TOML"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="environment variable XRAY_SCREEN_INFERENCE_BATCH_SIZE"):
        load_settings(None, environ={"XRAY_SCREEN_INFERENCE_BATCH_SIZE": "-1"})


def test_missing_file_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_shipped_model_hash_is_pinned_only_for_the_shipped_path(tmp_path: Path):
    from worker.config import (
        DEFAULT_BUNDLE,
        DEFAULT_LEARNER,
        DEFAULT_MODEL,
        SHIPPED_BUNDLE_SHA256,
        SHIPPED_MODEL_SHA256,
    )

    assert DEFAULT_MODEL == DEFAULT_BUNDLE  # the bundle screens by default: no pickle
    assert load_settings(None, environ={}).model.path == DEFAULT_MODEL
    assert load_settings(None, environ={}).model.expected_sha256() == SHIPPED_BUNDLE_SHA256
    assert load_settings(ROOT_CONFIG, environ={}).model.expected_sha256() == SHIPPED_BUNDLE_SHA256
    manifest = load_settings(None, environ={}, overrides={"model.path": str(DEFAULT_BUNDLE / "bundle.json")})
    assert manifest.model.expected_sha256() == SHIPPED_BUNDLE_SHA256
    learner = load_settings(None, environ={}, overrides={"model.path": str(DEFAULT_LEARNER)})
    assert learner.model.expected_sha256() == SHIPPED_MODEL_SHA256
    other = load_settings(None, environ={}, overrides={"model.path": str(tmp_path / "mine.pkl")})
    assert other.model.expected_sha256() == ""
    explicit = load_settings(None, environ={}, overrides={"model.sha256": "AB" * 32})
    assert explicit.model.expected_sha256() == "ab" * 32


def test_the_lease_comes_from_the_file_the_environment_or_a_set_flag(tmp_path: Path):
    import click

    from worker.cli.watch import daemon_settings, watch

    path = write(tmp_path, "[inbox]\nlease_seconds = 120\n")
    assert load_settings(None, environ={}).inbox.lease_seconds == 600
    assert load_settings(path, environ={}).inbox.lease_seconds == 120
    env = {"XRAY_SCREEN_INBOX_LEASE_SECONDS": "60"}
    assert load_settings(path, environ=env).inbox.lease_seconds == 60
    flags = dict.fromkeys(
        ("inbox_path", "processed", "failed", "db_url", "polling", "recursive", "worker_id")
    )
    flags["assignments"] = ("inbox.lease_seconds=15",)
    ctx = click.Context(watch, obj={"config_path": path})
    assert daemon_settings(ctx, flags).inbox.lease_seconds == 15  # xray-worker watch --set ...
    with pytest.raises(ConfigError, match=r"\[inbox\] lease_seconds = '5'.*: must be at least 10"):
        load_settings(None, environ={}, overrides={"inbox.lease_seconds": "5"})


def test_receive_settings_defaults_file_and_flags(tmp_path: Path):
    s = load_settings(None, environ={})
    assert (s.receive.host, s.receive.port, s.receive.ae_title) == ("127.0.0.1", 11112, "XRAY_SCREEN")
    assert s.receive.allowed_aets == () and not s.receive.secondary_capture and s.receive.tls_cert == ""
    path = write(
        tmp_path,
        '[receive]\nport = 104\nallowed_aets = ["MODALITY1@10.0.0.5", "PACS"]\n'
        'tls_cert = "tls/server.pem"\ntls_key = "/etc/xray-screen/server.key"\n',
    )
    s = load_settings(
        path, environ={"XRAY_SCREEN_RECEIVE_AE_TITLE": "XRAY_GW"}, overrides={"receive.port": 11113}
    )
    assert s.receive.port == 11113 and s.receive.ae_title == "XRAY_GW"
    assert s.receive.allowed_aets == ("MODALITY1@10.0.0.5", "PACS")
    assert s.receive.tls_cert == str(tmp_path.resolve() / "tls" / "server.pem")  # beside the file
    assert s.receive.tls_key == "/etc/xray-screen/server.key" and s.receive.tls_ca == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[receive]\nport = 0\n", r"\[receive\] port = 0: must be at least 1"),
        ("[receive]\nport = 70000\n", r"\[receive\] port = 70000: must be at most 65535"),
        ('[receive]\nae_title = "A_TITLE_LONGER_THAN_16"\n', r"ae_title .*: must be a DICOM AE title"),
        ('[receive]\nae_title = "BACK\\\\SLASH"\n', r"ae_title .*: must be a DICOM AE title"),
        ('[receive]\nae_title = ""\n', r"ae_title .*: must be a DICOM AE title"),
        ("[receive]\nmax_pdu = 100\n", r"max_pdu = 100: must be at least 4096"),
        ("[receive]\nidle_timeout = 0\n", r"idle_timeout = 0: must be at least 1"),
    ],
)
def test_bad_receive_settings_name_the_key(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={})


def test_explain_settings_default_to_none_and_come_from_file_env_and_flags(tmp_path: Path):
    s = load_settings(environ={})
    assert (s.explain.heatmaps, s.explain.max_side) == ("none", 1024)  # docs/heatmaps.md says why
    assert load_settings(ROOT_CONFIG, environ={}).explain == s.explain  # config.toml: all commented
    path = write(tmp_path, '[explain]\nheatmaps = "positives"\nfolder = "maps"\n')
    s = load_settings(path, environ={"XRAY_SCREEN_EXPLAIN_MAX_SIDE": "512"})
    assert (s.explain.heatmaps, s.explain.max_side) == ("positives", 512)
    assert s.explain.folder == tmp_path.resolve() / "maps"  # beside the file
    assert load_settings(path, environ={}, overrides={"explain.heatmaps": "all"}).explain.heatmaps == "all"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[explain]\nheatmaps = "some"\n',
            r"\[explain\] heatmaps = 'some': must be one of positives, all, none",
        ),
        ("[explain]\nmax_side = 10\n", r"\[explain\] max_side = 10: must be at least 64"),
    ],
)
def test_bad_explain_settings_name_the_key(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={})


def test_pacs_destinations_come_from_tables_of_the_config_file(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[pacs]\nae_title = 'XRAY1'\nbatch_size = 10\n"
        "[[pacs.destinations]]\nname = 'main'\nae_title = 'PACS1'\nhost = '10.0.0.20'\nport = 104\n"
        "[[pacs.destinations]]\nname = 'backup'\nae_title = 'PACS2'\nhost = 'pacs2'\nport = 11112\n"
        "outputs = ['sr']\nstorage_commitment = true\n"
    )
    s = load_settings(path, environ={"XRAY_SCREEN_PACS_BATCH_SIZE": "20"})
    assert (s.pacs.ae_title, s.pacs.batch_size) == ("XRAY1", 20)
    main, backup = s.pacs.destinations
    assert (main.name, main.ae_title, main.host, main.port, main.outputs) == (
        "main",
        "PACS1",
        "10.0.0.20",
        104,
        ("sr", "sc"),
    )
    assert (backup.outputs, backup.storage_commitment, main.storage_commitment) == (("sr",), True, False)
    assert load_settings(ROOT_CONFIG, environ={}).pacs.destinations == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[pacs.destinations]]\nname = 'a'\nhost = 'h'\nport = 104\n",
            r"\[pacs.destinations #1\] needs ae_title",
        ),
        (
            "[[pacs.destinations]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\nport = 0\n",
            r"\[pacs.destinations #1\] port = 0: must be at least 1",
        ),
        (
            "[[pacs.destinations]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\nport = 1\noutputs = ['pdf']\n",
            r"outputs = \['pdf'\]: choose from sr, sc",
        ),
        (
            "[[pacs.destinations]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\nport = 1\nqueue = 2\n",
            r"\[pacs.destinations #1\]: unknown key queue",
        ),
        (
            "[[pacs.destinations]]\nname='a'\nae_title='A'\nhost='h'\nport=1\n"
            "[[pacs.destinations]]\nname='a'\nae_title='B'\nhost='h'\nport=2\n",
            r"\[pacs.destinations #2\] name = 'a': used by another destination",
        ),
        (
            "[pacs]\nae_title = 'MUCH TOO LONG AE TITLE'\n",
            r"\[pacs\] ae_title = .*: must be a DICOM AE title",
        ),
        ("[pacs]\ndestinations = 'main'\n", r"must be \[\[pacs.destinations\]\] tables"),
        (
            "[[pacs.destinations]]\nname = 'w'\ndicomweb_url = 'http://pacs/dicom-web'\n"
            "storage_commitment = true\n",
            r"storage_commitment = true: not with dicomweb_url",
        ),
        (
            "[[pacs.destinations]]\nname = 'w'\ndicomweb_url = 'http://u:p@pacs/dicom-web'\n",
            r"dicomweb_url = .*: must be an http:// or https:// URL, no user@",
        ),
        (
            "[[pacs.destinations]]\nname = 'w'\ndicomweb_url = 'http://pacs/dicom-web'\nusername = 'u'\n",
            r"username and password_env go together",
        ),
    ],
)
def test_bad_pacs_settings_name_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_a_dicomweb_destination_needs_no_ae_title_host_or_port(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[[pacs.destinations]]\nname = 'web'\ndicomweb_url = 'https://pacs:8042/dicom-web'\n"
        "username = 'xray'\npassword_env = 'PACS_WEB_PASSWORD'\nhttp_timeout = 10\n"
    )
    [web] = load_settings(path, environ={}).pacs.destinations
    assert (web.dicomweb_url, web.username, web.password_env, web.http_timeout) == (
        "https://pacs:8042/dicom-web",
        "xray",
        "PACS_WEB_PASSWORD",
        10.0,
    )


def test_hl7_and_fhir_destinations_come_from_tables_of_the_config_file(tmp_path: Path):
    path = write(
        tmp_path,
        "[worklist]\npriority_negative = 'urgent'\n"
        "[[hl7.destinations]]\nname = 'ris'\nhost = '10.0.0.30'\nport = 2575\n"
        "receiving_application = 'RIS'\nreceiving_facility = 'HOSP'\ntimeout = 5\n"
        "[[fhir.destinations]]\nname = 'ehr'\nbase_url = 'https://fhir.example.org/r4'\n"
        "auth = 'basic'\nusername = 'xray'\nsecret_env = 'EHR_PW'\n",
    )
    s = load_settings(path, environ={})
    [ris], [ehr] = s.hl7.destinations, s.fhir.destinations
    assert (ris.name, ris.host, ris.port, ris.sending_application, ris.receiving_application) == (
        "ris",
        "10.0.0.30",
        2575,
        "XRAY_SCREEN",
        "RIS",
    )
    assert (ris.receiving_facility, ris.timeout, ris.tls) == ("HOSP", 5.0, False)
    assert (ehr.base_url, ehr.auth, ehr.username, ehr.secret_env) == (
        "https://fhir.example.org/r4",
        "basic",
        "xray",
        "EHR_PW",
    )
    assert (s.worklist.priority_positive, s.worklist.priority_negative) == ("urgent", "urgent")
    shipped = load_settings(ROOT_CONFIG, environ={})
    assert (shipped.hl7.destinations, shipped.fhir.destinations) == ((), ())
    assert shipped.worklist.priority_negative == "routine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[hl7.destinations]]\nname = 'ris'\nport = 2575\n", r"\[hl7.destinations #1\] needs host"),
        (
            "[[hl7.destinations]]\nname = 'ris'\nhost = 'h'\nport = 70000\n",
            r"\[hl7.destinations #1\] port = 70000: must be at most 65535",
        ),
        (
            "[[hl7.destinations]]\nname = 'ris'\nhost = 'h'\nport = 1\nreceiving_application = 'A|B'\n",
            r"\[hl7.destinations #1\] receiving_application = 'A\|B': must be text without",
        ),
        (
            "[[hl7.destinations]]\nname = 'ris'\nhost = 'h'\nport = 1\ntls_ca = '/ca.pem'\n",
            r"\[hl7.destinations #1\] \(ris\) tls_ca, tls_cert: only with tls = true",
        ),
        ("[[hl7.destinations]]\nname = 'r'\nhost = 'h'\nport = 1\nack = 1\n", r"unknown key ack"),
        ("[[fhir.destinations]]\nname = 'ehr'\n", r"\[fhir.destinations #1\] needs base_url"),
        (
            "[[fhir.destinations]]\nname = 'ehr'\nbase_url = 'ftp://x'\n",
            r"\[fhir.destinations #1\] base_url = 'ftp://x': must be an http:// or https:// URL",
        ),
        (
            "[[fhir.destinations]]\nname = 'ehr'\nbase_url = 'http://x'\nauth = 'bearer'\n",
            r"\[fhir.destinations #1\] \(ehr\) auth = 'bearer': secret_env names the variable",
        ),
        (
            "[[fhir.destinations]]\nname = 'ehr'\nbase_url = 'http://x'\nauth = 'oauth'\n",
            r"\[fhir.destinations #1\] auth = 'oauth': must be one of none, bearer, basic",
        ),
        (
            "[[fhir.destinations]]\nname = 'ehr'\nbase_url = 'http://x'\nauth = 'basic'\nsecret_env = 'P'\n",
            r"\(ehr\) username: needed with auth = 'basic'",
        ),
        (
            "[[pacs.destinations]]\nname = 'main'\nae_title = 'A'\nhost = 'h'\nport = 1\n"
            "[[fhir.destinations]]\nname = 'main'\nbase_url = 'http://x'\n",
            r"\[\[fhir.destinations\]\] name = 'main': used by a \[\[pacs.destinations\]\] destination too",
        ),
        (
            "[worklist]\npriority_positive = 'stat'\n",
            r"\[worklist\] priority_positive = 'stat': must be one of",
        ),
    ],
)
def test_bad_hl7_and_fhir_settings_name_the_key_and_the_destination(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={})
