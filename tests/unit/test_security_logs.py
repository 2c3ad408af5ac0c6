"""Passwords inside URLs never reach a log line: ``tools.logs.RedactCredentials`` on the root
handlers rewrites every record (httpx's request lines, arguments, URL objects, tracebacks)."""

from __future__ import annotations

import io
import logging

import httpx
import pytest

from tools.logs import RedactCredentials, configure_logging, install, redact

SECRET = "pw-never-log-me"
URL = f"http://alice:{SECRET}@127.0.0.1:8000/v1"


@pytest.fixture
def stream_handler():
    """A handler on the root logger, as ``logging.basicConfig`` makes, with the filter installed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    install()
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_every_form_of_a_record_is_redacted(stream_handler):
    log = logging.getLogger("httpx")
    log.info('HTTP Request: %s %s "%s"', "POST", httpx.URL(URL + "/chat/completions"), "HTTP/1.1 200 OK")
    log.info("base url %(url)s", {"url": URL})
    log.warning(f"retrying {URL}")
    try:
        raise ConnectionError(f"cannot reach {URL}")
    except ConnectionError as exc:
        log.exception("failed: %s", exc)
    text = stream_handler.getvalue()
    assert SECRET not in text and "alice" not in text
    assert "POST http://***@127.0.0.1:8000/v1/chat/completions" in text
    assert text.count("http://***@127.0.0.1:8000/v1") == 5  # four lines, one traceback


def test_a_record_whose_message_is_an_exception_or_a_url_is_redacted(stream_handler):
    # libraries log an exception (or a URL object) itself as the message: log.warning(exc)
    log = logging.getLogger("some.library")
    log.warning(ConnectionError(f"cannot reach {URL}"))
    log.info(httpx.URL(URL))
    text = stream_handler.getvalue()
    assert SECRET not in text and text.count("http://***@127.0.0.1:8000/v1") == 2


def test_redaction_keeps_what_holds_no_credentials():
    assert redact("user bob@example.com, url https://h.example/a@b?x=c@d") == (
        "user bob@example.com, url https://h.example/a@b?x=c@d"
    )
    # a raw "@" inside the password is hidden too (the host starts after the last "@")
    assert redact("http://u:p@ss@host:1/v1 done") == "http://***@host:1/v1 done"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %d", ("plain", 3), None)
    assert RedactCredentials().filter(record) and record.getMessage() == "plain 3"


def test_configure_logging_installs_the_filter_once():
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        configure_logging(logging.WARNING)
        configure_logging(logging.WARNING)
        install()
        assert [type(f) for h in root.handlers for f in h.filters] == [RedactCredentials]
    finally:
        root.handlers = saved


def test_the_structured_output_form_a_run_keeps_is_keyed_without_the_urls_password():
    # it goes into the run's state: every checkpoint, `interleave show`, a LangGraph server's state API
    from graph.context import Context
    from nodes.adapters import learnt_update, structured_mode
    from tools.llm.chat import openai_model

    ctx = Context(vlm_structured_output="auto", planner_base_url=URL)
    model = openai_model(URL, "EMPTY", "m", 16, 0.0, 5.0, 0)
    update = learnt_update(ctx, model, "planner", "json_object", None)
    assert update == {"structured_output": {"http://127.0.0.1:8000/v1": "json_object"}}
    assert structured_mode(ctx, model, "planner", update["structured_output"]) == "json_object"


def test_a_mounted_scripts_own_verbose_flag_shows_its_info_lines(tmp_path):
    # `interleave datagen prompts ... -v`: the CLI configured logging (WARNING: no global -v)
    # before the script's run() asks for INFO; the script's -v must still take effect
    from graph.cli.main import main

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []
    try:
        main(
            ["datagen", "prompts", "-v", "--taxonomy", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]
            + ["--teacher-base-url", "http://127.0.0.1:9/v1", "--teacher-model", "m"]
        )
        assert root.getEffectiveLevel() == logging.INFO
    finally:
        root.handlers = saved
        root.setLevel(level)
