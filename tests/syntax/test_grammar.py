"""The grammar file is found in a checkout and inside an installed wheel; the parser is cached.

The wheel test covers every data file of the package (the grammar, architecture families, the
``mergebuild ui`` page): each is in the wheel and found from the installed copy alone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mergefile.syntax.grammar import expected_words, get_parser, grammar_text

ROOT = Path(__file__).resolve().parents[2]


def test_grammar_text_matches_checkout() -> None:
    assert grammar_text() == (ROOT / "grammar" / "mergefile.lark").read_text(encoding="utf-8")


def test_parser_is_built_once() -> None:
    assert get_parser() is get_parser()


def test_expected_words() -> None:
    assert expected_words({"COLON", "EQUAL"}) == "':' or '='"
    assert expected_words({"NUMBER", "STRING", "NAME", "LSQB", "HF", "TRUE", "FALSE"}) == (
        "a value (number, string, name, list or hf(...))"
    )
    assert expected_words({"_NL", "$END"}) == "end of line"


_CHECK = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import importlib.resources, mergefile
    from pathlib import Path
    assert Path(mergefile.__file__).is_relative_to(sys.argv[1]), mergefile.__file__
    res = importlib.resources.files("mergefile").joinpath("grammar/mergefile.lark")
    assert res.is_file(), res
    page = importlib.resources.files("mergefile.ui").joinpath("static", "index.html")
    assert page.is_file() and b"<html" in page.read_bytes().lower(), page
    from mergefile.arch.families import family_for
    assert family_for({"architectures": ["LlamaForCausalLM"]}) is not None
    from mergefile.syntax import parse_text
    print(parse_text('out/a: linear { m weight=1 }').targets()["out/a"].method)
    """
)


@pytest.mark.slow
def test_wheel_ships_grammar_and_data_files(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "hatchling" in build.stdout + build.stderr:
        pytest.skip(f"cannot build the wheel offline: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("mergebuild-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "mergefile/grammar/mergefile.lark" in names
        tracked = subprocess.run(["git", "ls-files", "mergefile"], cwd=ROOT, capture_output=True, text=True)
        data = [n for n in tracked.stdout.split() if not n.endswith(".py")]
        if tracked.returncode == 0:  # a checkout: every tracked data file is packaged
            assert "mergefile/ui/static/index.html" in data
            assert set(data) <= names, sorted(set(data) - names)
        zf.extractall(tmp_path / "site")
    # The extracted wheel has no top-level grammar/ beside it, so only the resource can work.
    run = subprocess.run(
        [sys.executable, "-c", _CHECK, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "linear"
