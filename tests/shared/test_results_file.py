"""The benchmarks' results files (scripts/bench/results): one curated file per benchmark, a new run replacing the
table its command wrote."""

from openpi.shared import results_file
from tests.helpers import REPO_ROOT

RESULTS = REPO_ROOT / "scripts" / "bench" / "results"


def test_a_new_run_replaces_the_table_of_its_command_and_keeps_the_rest(tmp_path):
    output = tmp_path / "results.md"
    output.write_text("# A benchmark\n\nWhat it measures.\n")
    results_file.write_run(output, "uv run bench.py --a ", ["## day 1", "| old |"])
    results_file.write_run(output, "uv run bench.py --b", ["## day 1", "| other |"])
    output.write_text(output.read_text() + "\nReading: the author's.\n")
    results_file.write_run(output, "uv run bench.py --a", ["## day 2", "| new |"])
    text = output.read_text()
    assert "| old |" not in text and text.count("| new |") == 1 and text.count("| other |") == 1
    assert text.startswith("# A benchmark\n\nWhat it measures.\n") and text.endswith("Reading: the author's.\n")
    assert text.index("| new |") < text.index("| other |")  # replaced in place
    fresh = tmp_path / "fresh.md"
    results_file.write_run(fresh, "uv run bench.py", ["| row |"])
    assert fresh.read_text() == "<!-- run: uv run bench.py -->\n| row |\n\n<!-- end of run -->\n"


def test_the_results_folder_holds_one_curated_file_per_benchmark():
    files = [path for path in RESULTS.rglob("*") if path.is_file()]
    assert len(files) <= 30 and all(path.suffix == ".md" and path.parent == RESULTS for path in files)
    for path in files:
        text = path.read_text()
        assert text.startswith("# ") and "```" in text, path.name  # a title and the command that produced it
        assert text.count("<!-- run: ") == text.count("<!-- end of run -->"), path.name
