"""experiments/RESULTS.md cannot drift from the JSON it was made from."""

import shutil

from experiments import report


def test_results_page_matches_its_json():
    assert report.check() == []


def test_every_table_is_on_the_page():
    text = report.RESULTS.read_text()
    for name in report.TABLES:
        assert f"<!-- report:{name} -->" in text, name


def test_a_tampered_number_is_detected(tmp_path):
    page = tmp_path / "RESULTS.md"
    text = report.RESULTS.read_text()
    # the ARTBP row of the influence-balancing table, one digit changed
    start = text.index("<!-- report:influence_balancing -->")
    row = text.index("| ARTBP", start)
    end = text.index("\n", row)
    line = text[row:end]
    cells = line.split("|")
    number = cells[4].strip()  # the mean-loss column, e.g. "-0.164"
    changed = number[:-1] + str((int(number[-1]) + 1) % 10)
    cells[4] = f" {changed} "
    tampered = "|".join(cells)
    assert tampered != line
    page.write_text(text[:row] + tampered + text[end:])
    problems = report.check(page)
    assert len(problems) == 1 and "influence_balancing" in problems[0]
    assert changed in problems[0]


def test_a_changed_json_is_detected(tmp_path):
    figures = tmp_path / "figures"
    shutil.copytree(report.FIGURES, figures, ignore=shutil.ignore_patterns("*.png"))
    path = figures / "sunspots.json"
    path.write_text(path.read_text().replace('"naive": 32.89', '"naive": 31.89', 1))
    problems = report.check(report.RESULTS, figures)
    assert problems and all("sunspots" in p for p in problems)


def test_a_missing_table_is_detected(tmp_path):
    page = tmp_path / "RESULTS.md"
    text = report.RESULTS.read_text()
    page.write_text(
        text.replace("<!-- report:char_lm -->", "").replace(
            "<!-- /report:char_lm -->", ""
        )
    )
    assert any("'char_lm' missing" in p for p in report.check(page))


def test_char_lm_commands_match_the_runs_on_the_page():
    """Each char-LM JSON was made by its command in report.RUNS: rerunning
    the page's commands would redo the same configurations."""
    import json

    from experiments import char_lm

    for name in ("char_lm", "char_lm_gru", "char_lm_k64"):
        saved = json.loads((report.FIGURES / f"{name}.json").read_text())["config"]
        args = vars(char_lm.parse_args(report.RUNS[name][1:]))
        for key in ("out", "jobs"):  # where and how fast, not what
            saved.pop(key), args.pop(key)
        # on which devices (a flag newer than the stored runs, which ran on
        # one device each: its default), not what
        assert args.pop("devices") is None and saved.pop("devices", None) is None
        assert args == saved, name


def test_a_truncated_json_is_named(tmp_path):
    figures = tmp_path / "figures"
    shutil.copytree(report.FIGURES, figures, ignore=shutil.ignore_patterns("*.png"))
    path = figures / "sunspots.json"
    path.write_text(path.read_text()[:40])  # a copy cut short
    problems = report.check(report.RESULTS, figures)
    assert len(problems) == 1
    assert str(path) in problems[0] and "damaged, not valid JSON" in problems[0]
    assert "'sunspots'" in problems[0]
