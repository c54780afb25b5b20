"""JSON log lines: the fields, the request id inside a request, nothing but what was logged."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from stratus.observe.logs import JsonFormatter, level_of, request_id_var, setup_logging

pytestmark = pytest.mark.timeout(30)


def _record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("stratus.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_line_has_time_level_logger_and_message():
    line = orjson.loads(JsonFormatter().format(_record("model %s: replica %s left", "tiny", "r1")))
    assert line["level"] == "WARNING"
    assert line["logger"] == "stratus.test"
    assert line["message"] == "model tiny: replica r1 left"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert "request_id" not in line  # logged outside a request
    assert "trace_id" not in line  # and outside a traced one


def test_inside_a_request_the_line_carries_its_id():
    token = request_id_var.set("req-123")
    try:
        line = orjson.loads(JsonFormatter().format(_record("hello")))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "req-123"
    assert "request_id" not in orjson.loads(JsonFormatter().format(_record("after")))


def test_extra_fields_and_tracebacks_are_kept():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed", exc_info=sys.exc_info(), worker="w1")
    line = orjson.loads(JsonFormatter().format(record))
    assert line["worker"] == "w1"
    assert "ValueError: boom" in line["exc"]


def test_setup_logging_installs_one_handler_and_replaces_it():
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    out = io.StringIO()
    try:
        setup_logging("info", "text", stream=io.StringIO())
        handler = setup_logging("debug", "json", stream=out)
        ours = [h for h in root.handlers if getattr(h, "_stratus", False)]
        assert ours == [handler]  # the first one was replaced
        logging.getLogger("stratus.test").debug("one %d", 1)
        assert orjson.loads(out.getvalue().splitlines()[-1])["message"] == "one 1"
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
    with pytest.raises(ValueError):
        setup_logging("info", "xml")
    assert level_of("trace") == logging.DEBUG and level_of("warning") == logging.WARNING
