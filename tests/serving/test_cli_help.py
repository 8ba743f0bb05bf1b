"""What every command's --help and parser promise: each option's default shown, `validate
promote` a sub-command of its own, and every threshold-like option range-checked by argparse."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from data.config import compose
from serving.cli import validate
from serving.cli.main import build_parser, main
from serving.cli.score import thresholds
from serving.runtime.__main__ import build_parser as build_runtime_parser
from serving.runtime.commands.command import probability, share
from tests.conftest import REPO


def _parsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """`parser` and every sub-command's parser below it, each with its command line."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action._name_parser_map.items():
                yield from _parsers(sub, f"{path} {name}")


ALL_PARSERS = [
    *_parsers(build_parser(), "anonlab"),
    *_parsers(build_runtime_parser(), "python -m serving.runtime"),
]


def _option_help(parser: argparse.ArgumentParser, option: str) -> str:
    """The help text `parser --help` prints for `option`, on one line."""
    for block in re.split(r"\n(?=  \S)", parser.format_help()):
        first = block.splitlines()[0]
        if re.search(rf"(^|\s|,){re.escape(option)}(\s|,|$)", first):
            return " ".join(block.split())
    raise AssertionError(f"{option} is not in the help")


def test_every_command_is_walked() -> None:
    walked = {path for path, _ in ALL_PARSERS}
    for command in ("score", "blur", "serve", "audit", "validate promote", "annotate push"):
        assert f"anonlab {command}" in walked
    assert "python -m serving.runtime blur" in walked


@pytest.mark.parametrize(("path", "parser"), ALL_PARSERS, ids=[p for p, _ in ALL_PARSERS])
def test_every_option_with_a_default_shows_it(path: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        flag = action.nargs == 0  # on or off: its default is its absence
        if not action.option_strings or flag or action.default in (None, argparse.SUPPRESS):
            continue
        shown = _option_help(parser, action.option_strings[-1])
        said = rf"\bdefault:? {re.escape(str(action.default))}\b"
        assert re.search(said, shown), f"{path} {action.option_strings[-1]}"


def test_defaults_are_said_once() -> None:
    for path, parser in ALL_PARSERS:
        for action in parser._actions:
            if action.option_strings and action.help:
                shown = _option_help(parser, action.option_strings[-1])
                assert shown.count("(default") <= 1, f"{path} {action.option_strings[-1]}"


def test_validate_promote_is_a_sub_command_with_its_own_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "promote", "--help"])
    assert exit_.value.code == 0
    promote = capsys.readouterr().out
    assert promote.startswith("usage: anonlab validate promote")
    assert "--model MODEL" in promote and "--user USER" in promote
    assert "Move the MLflow alias champion" in promote

    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    gate = capsys.readouterr().out
    options = gate.partition("\noptions:")[2]
    assert options and "--model" not in options and "--user" not in options  # promote's
    assert "usage: anonlab validate [-h] [key=value ...]" in gate
    assert "anonlab validate promote [-h] [--model MODEL]" in gate


def test_validate_and_promote_parse_their_own_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(["validate", "promote", "--model", "m", "--user", "ana", "seed=1"])
    assert args.handler is validate.promote
    assert (args.model, args.user, args.overrides) == ("m", "ana", ["seed=1"])
    args = parser.parse_args(["validate", "seed=1", "validate.tolerance=0.1"])
    assert args.handler is validate.run
    assert args.overrides == ["seed=1", "validate.tolerance=0.1"]
    assert parser.parse_args(["validate"]).overrides == []


@pytest.fixture(scope="module")
def params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml composed from the repository's conf/ in a project folder the tests only
    read (the shared fixture composes one per test)."""
    path = tmp_path_factory.mktemp("project") / "params.yaml"
    path.write_text(compose(REPO / "conf"), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["validate", "--model", "X"], "unrecognized arguments: --model X"),
        (["validate", "--user", "ana"], "unrecognized arguments: --user ana"),
        (["validate", "seed=1", "--model", "X"], "unrecognized arguments: --model X"),
        (["validate", "promot"], "validate: 'promot' is neither a sub-command (promote) nor"),
        (["validate", "promote", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_an_option_that_does_not_apply_is_refused_not_ignored(
    params_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    before = params_file.read_text()
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(params_file), *argv])
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err
    # Refused before anything ran: the project folder holds its params.yaml alone, unchanged.
    assert [p.name for p in params_file.parent.iterdir()] == ["params.yaml"]
    assert params_file.read_text() == before


def test_every_threshold_like_option_is_range_checked() -> None:
    checked = {probability, share, thresholds}
    found = []
    for path, parser in ALL_PARSERS:
        for action in parser._actions:
            if re.search(r"threshold|coverage|recall", action.dest):
                found.append(f"{path} {action.option_strings[-1]}")
                assert action.type in checked, found[-1]
    for option in ("score --thresholds", "score --coverage", "score --target-recall"):
        assert f"anonlab {option}" in found
    assert "anonlab audit --threshold" in found and "anonlab audit --coverage" in found


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--thresholds", "1.5", "argument --thresholds: '1.5' is not from 0 to 1"),
        ("--thresholds", "-0.1", "argument --thresholds: '-0.1' is not from 0 to 1"),
        ("--thresholds", "nan", "argument --thresholds: 'nan' is not from 0 to 1"),
        ("--thresholds", "face=1.5", "argument --thresholds: 'face=1.5': '1.5' is not from 0"),
        ("--thresholds", "0.3,face=x", "argument --thresholds: '0.3,face=x': 'x' is not a number"),
        ("--coverage", "0", "argument --coverage: '0' is not above 0 and at most 1"),
        ("--coverage", "1.5", "argument --coverage: '1.5' is not above 0 and at most 1"),
        ("--target-recall", "2", "argument --target-recall: '2' is not above 0 and at most 1"),
    ],
)
def test_score_refuses_a_threshold_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, said: str
) -> None:
    gt, pred, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "metrics.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    pred.write_text("[]")
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--gt", str(gt), "--pred", str(pred), "--out", str(out), option, value])
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"), [("--threshold", "1.5"), ("--coverage", "-1"), ("--threshold", "x")]
)
def test_audit_refuses_a_threshold_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", str(tmp_path), "--out", str(tmp_path / "audit.json"), option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {value!r} is not" in capsys.readouterr().err
    assert not (tmp_path / "audit.json").exists()


def test_a_threshold_in_range_is_taken() -> None:
    assert thresholds("0,face=1,license_plate=0.4") == "0,face=1,license_plate=0.4"
    parser = build_parser()
    args = parser.parse_args(["score", "--gt", "g", "--pred", "p", "--coverage", "1"])
    assert (args.coverage, args.target_recall, args.thresholds) == (1.0, 0.95, "0.5")
