"""The command line's one exit for every message: bad input as one redacted line with exit 2, a bug as a
redacted traceback with exit 1, argparse's own errors as UNetErrors."""

from __future__ import annotations

import pytest

from unet.cli import ArgumentParser, run
from unet.errors import UNetError
from unet.io.urls import check_storage_options



def failing(error: Exception):
    def main(argv):
        raise error
    return main


def test_bad_input_is_one_redacted_line_and_exit_2(capsys):
    check_storage_options({"secret": "cli-s3cr3t"})
    message = "input s3://k:cli-s3cr3t@b/x?sig=y: library says\n  cli-s3cr3t was refused"
    assert run(failing(UNetError(message)), []) == 2
    assert capsys.readouterr().err == "error: input s3://b/x: library says *** was refused\n"


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_prints_its_traceback_redacted_and_exits_1(capsys, monkeypatch, debug):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-cli-s3cr3t")
    assert run(failing(KeyError("env-cli-s3cr3t")), ["--debug"] if debug else []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: '***'" in err and "s3cr3t" not in err


def test_debug_shows_the_traceback_of_bad_input_too(capsys):
    assert run(failing(UNetError("bad")), ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: bad\n")


@pytest.mark.parametrize("argv, words", [
    (["--n", "x"], "argument --n: invalid int value: 'x'"),
    (["--nope=secret-value", "other-secret"], "unrecognized arguments: --nope and 1 other value(s)"),
    (["--n"], "argument --n: expected one argument"),
])
def test_argparse_errors_are_one_line_unet_errors_that_echo_no_stray_value(argv, words):
    parser = ArgumentParser(prog="p")
    parser.add_argument("--n", type=int)
    with pytest.raises(UNetError) as error:
        parser.parse_args(argv)
    assert str(error.value) == f"p: {words}; see --help" and "secret" not in str(error.value)
