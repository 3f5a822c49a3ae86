"""What the README and docs tell a user works as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = [block.strip() for block in fenced_blocks(README, "bash")]
    install, test = blocks[0], blocks[-1]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)


def test_parameters_doc_is_generated_from_the_table():
    from spikeinterface_esort.parameters import parameters_markdown

    assert (ROOT / "docs" / "parameters.md").read_text() == parameters_markdown()


def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (code,) = fenced_blocks(README, "python")
    exec(compile(code, "README.md quick start", "exec"), {})
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy\s+([0-9.]+)", printed).group(1))
    assert accuracy > 0.85, printed
    assert (tmp_path / "quickstart" / "esort_output" / "sorter_output" / "esort.log").is_file()


@pytest.mark.parametrize("command", [block.strip() for block in fenced_blocks(README, "bash")[1:2]])
def test_readme_demo_command_runs(command, tmp_path):
    args = command.split()
    assert args[:3] == ["python", "-m", "spikeinterface_esort"]
    result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = re.search(r"esort \(ground_truth annotations\)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", result.stdout)
    assert row and float(row.group(1)) > 0.85, result.stdout
    assert (tmp_path / "esort_demo" / "esort" / "sorter_output" / "sorting").is_dir()
    # each step's time in a user's words; the internal figures stay in timings.json and the log
    assert "training the network" in result.stdout and "x real time" in result.stdout
    assert "tuner" not in result.stdout and "inference_" not in result.stdout


def test_benchmark_commands_in_the_docs_parse():
    """The benchmark commands of README.md and docs/benchmarks.md name existing presets, cases and options
    (running them takes minutes to an hour: tests/test_benchmark.py runs the same code on a small recording)."""
    from spikeinterface_esort.tools.benchmark import SORTERS, build_parser

    text = README + (ROOT / "docs" / "benchmarks.md").read_text()
    lines = "\n".join(fenced_blocks(text, "bash")).replace("\\\n", " ").splitlines()
    commands = [line for line in lines if "spikeinterface_esort.tools.benchmark" in line]
    assert len(commands) >= 3
    for command in commands:
        args = build_parser().parse_args(command.split("spikeinterface_esort.tools.benchmark", 1)[1].split())
        assert all(case in SORTERS + ("esort_published", "esort_ensemble", "esort_self_training") for case in args.sorters)


def test_speed_doc_commands_parse():
    """The throughput commands of docs/speed.md use existing options, datasets and dtypes."""
    from spikeinterface_esort.tools.throughput import build_parser

    text = (ROOT / "docs" / "speed.md").read_text()
    lines = "\n".join(fenced_blocks(text, "bash")).replace("\\\n", " ").splitlines()
    commands = [line for line in lines if "spikeinterface_esort.tools.throughput" in line]
    assert len(commands) >= 3
    for command in commands:
        build_parser().parse_args(command.split("spikeinterface_esort.tools.throughput", 1)[1].split())


def test_study_commands_in_the_docs_parse():
    """The studies commands of docs/*.md (in code blocks or inline) name existing studies and options."""
    from spikeinterface_esort.tools.studies import build_parser

    text = "\n".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
    lines = "\n".join(fenced_blocks(text, "bash")).replace("\\\n", " ").splitlines()
    lines += re.findall(r"`(python -m spikeinterface_esort\.tools\.studies [^`]*)`", text)
    commands = [line for line in lines if "spikeinterface_esort.tools.studies" in line]
    assert len(commands) >= 3
    for command in commands:
        build_parser().parse_args(command.split("spikeinterface_esort.tools.studies", 1)[1].split())


def test_user_guide_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    blocks = fenced_blocks(guide, "python")
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/user-guide.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"held-out accuracy ([0-9.]+)", printed).group(1))
    assert accuracy > 0.85, printed
    published_accuracy = float(re.search(r"published path: held-out accuracy ([0-9.]+)", printed).group(1))
    assert published_accuracy > 0.85, printed
    assert "esort_validation_accuracy" in printed
    assert (tmp_path / "guide" / "tuned_model" / "model.json").is_file()
    # the install block is the README's
    assert fenced_blocks(guide, "bash")[0].strip() == fenced_blocks(README, "bash")[0].strip()


@pytest.mark.parametrize("module", ["settings_study", "scaling", "benchmark", "import_time"])
def test_long_recording_and_defaults_commands_in_the_docs_parse(module):
    """The settings-study, scaling and benchmark commands of docs/*.md use existing options, presets and
    parameters (running them takes hours: tests/test_long_preset.py runs the same code at a small size)."""
    import importlib

    tool = importlib.import_module(f"spikeinterface_esort.tools.{module}")
    text = "\n".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
    lines = "\n".join(fenced_blocks(text, "bash")).replace("\\\n", " ").splitlines()
    commands = [line for line in lines if f"spikeinterface_esort.tools.{module} " in line]
    assert commands
    for command in commands:
        args = tool.build_parser().parse_args(shlex.split(command.split(f"spikeinterface_esort.tools.{module}", 1)[1]))
        if module == "settings_study":
            for candidate in args.candidates:
                tool.candidate_params(candidate)  # names a candidate or existing parameters


def test_real_data_how_to_reads_a_finished_run_as_written(small_esort_run, tmp_path, monkeypatch, capsys):
    """docs/real-data.md's python blocks run on a finished esort run, in the folder the page names."""
    import shutil

    folder, sorting = small_esort_run
    shutil.copytree(folder, tmp_path / "esort_output")
    monkeypatch.chdir(tmp_path)
    blocks = fenced_blocks((ROOT / "docs" / "real-data.md").read_text(), "python")
    assert blocks
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/real-data.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    trusted, total = map(int, re.search(r"(\d+) of (\d+) units: accuracy >= 0.8", printed).groups())
    assert total == len(sorting.unit_ids) and 0 < trusted <= total


def test_docs_are_reference_not_a_diary():
    """No page over 350 lines; no commit hashes or clock times outside CHANGELOG.md (history lives there)."""
    for path in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        text = path.read_text()
        assert len(text.splitlines()) <= 350, f"{path.name}: {len(text.splitlines())} lines"
        hashes = re.findall(r"\bcommit [0-9a-f]{7,40}\b", text)
        clock = re.findall(r"\b(?:[01]?\d|2[0-3]):[0-5]\d(?:-(?:[01]?\d|2[0-3]):[0-5]\d)?\)?(?= |,|\)|;)", text)
        clock = [c for c in clock if not re.search(rf"\|\s*{re.escape(c)}", text)]  # not a ratio in a table cell
        assert not hashes and not clock, f"{path.name}: {hashes + clock}"
