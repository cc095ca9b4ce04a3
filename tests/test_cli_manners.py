"""How `cityclf` talks: short usage errors, help for everything, quiet and verbose, JSON, completion,
one instruction after Ctrl-C, measured rates only, file modes, and a start that needs no torch."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import all_parsers, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exits (usage errors, --help)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    for i in range(3):
        Image.fromarray(illustration(96 + 8 * i, 80, i)).save(folder / f"{i}.png")
    return folder


# ---------------------------------------------------------------- usage errors and help


@pytest.mark.parametrize("argv, first, help_line", [
    (["score", "--modle", "x.safetensors", "a.png"], "cityclf score: error: unknown option --modle; did you mean --model?",
     "see `cityclf score --help`"),
    (["scroe", "a.png"], "cityclf: error: unknown command 'scroe'; did you mean score?", "see `cityclf --help`"),
    (["grid", "--store", "x.db", "--combine", "meen"], "cityclf grid: error: unknown value for --combine 'meen'; "
     "did you mean mean?", "see `cityclf grid --help`"),
])
def test_a_usage_error_is_two_lines(argv, first, help_line, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [first, help_line]


def test_cityclf_alone_prints_the_short_help(capsys):
    code, out, err = run([], capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: cityclf COMMAND") and "  score " in out and "  completion " in out
    assert len(out.splitlines()) < 30


def test_the_main_help_lists_the_exit_codes(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for line in ("0    every input", "1    some inputs were skipped", "2    a usage", "3    an internal error",
                 "130  interrupted"):
        assert line in out


def test_every_command_and_option_has_help():
    missing = []
    for parser in all_parsers(build_parser()):
        if not parser.description:
            missing.append(parser.prog)
        missing += [f"{parser.prog} {a.option_strings or a.dest}" for a in parser._actions
                    if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


# ---------------------------------------------------------------- quiet, verbose, JSON, paths


def test_quiet_keeps_results_and_drops_notes(images, tiny_clip_dir, score_head_path, capsys):
    argv = ["score", images, "-m", score_head_path, "--clip", tiny_clip_dir, "--format", "csv"]
    code, out, err = run(argv, capsys)
    assert code == 0 and "cityclf: loading" in err and "cityclf: scored 3 image(s)" in err
    code, quiet_out, quiet_err = run([*argv, "-q"], capsys)
    assert code == 0 and quiet_out == out and quiet_err == ""
    code, _, _ = run([*argv, "--verbose"], capsys)
    assert code == 0


def test_the_loading_line_comes_first(images, tiny_clip_dir, tmp_path, capsys):
    code, _, err = run(["score", images, "-m", tmp_path / "missing.safetensors", "--clip", tiny_clip_dir], capsys)
    assert code == 2
    assert err.splitlines()[0].startswith("cityclf: loading missing.safetensors and CLIP ")


def test_every_jsonl_row_has_a_score(images, tiny_clip_dir, class_head_path, capsys):
    code, out, _ = run(["score", images, "-m", class_head_path, "--clip", tiny_clip_dir, "--format", "jsonl"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 3
    assert all(0 <= r["score"] <= 1 and r["score"] == pytest.approx(1 - r["probs"]["Pass"], abs=1e-5) for r in rows)


def test_json_for_models_and_store_info(images, tiny_clip_dir, score_head_path, tmp_path, monkeypatch, capsys):
    code, out, _ = run(["models", "--json", "--models-dir", tmp_path], capsys)
    releases = json.loads(out)
    assert code == 0 and {r["name"] for r in releases} >= {"CityAesthetics-Anime-v1.8", "CCAnime-Compression-v1.5"}
    assert all(r["local"] is None and r["clip"]["clip"].startswith("openai/") for r in releases)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(images, tmp_path / "pics")
    code, given, _ = run(["score", "pics", "-m", score_head_path, "--clip", tiny_clip_dir, "--store", "s.db",
                          "--format", "csv"], capsys)
    assert code == 0
    code, out, _ = run(["store-info", "--store", "s.db", "--json"], capsys)
    assert code == 0 and json.loads(out)["files"] == 3
    code, out, _ = run(["store-info", "--store", "s.db"], capsys)
    assert code == 0 and out.startswith("store s.db: 3 file(s)")
    # paths as given: the store keeps them absolute, query prints them as score printed them
    code, out, _ = run(["query", "--store", "s.db", "--format", "csv"], capsys)
    assert code == 0 and sorted(out.splitlines()[1:]) == sorted(given.splitlines()[1:])
    assert all(line.startswith("pics/") for line in out.splitlines()[1:])


# ---------------------------------------------------------------- completion


def test_completion_scripts(capsys, tmp_path):
    code, script, _ = run(["completion", "bash"], capsys)
    assert code == 0 and "complete -o filenames -F _cityclf cityclf" in script
    path = tmp_path / "c.bash"
    path.write_text(script + '\nCOMP_WORDS=(cityclf score --comb); COMP_CWORD=2; _cityclf; echo "${COMPREPLY[*]}"\n'
                    'COMP_WORDS=(cityclf score --combine ""); COMP_CWORD=3; _cityclf; echo "${COMPREPLY[*]}"\n'
                    'COMP_WORDS=(cityclf pixiv ""); COMP_CWORD=2; _cityclf; echo "${COMPREPLY[*]}"\n')
    done = subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "--combine" and lines[1] == "mean median max min"
    assert {"ingest", "synth", "train", "eval"} <= set(lines[2].split())
    code, zsh, _ = run(["completion", "zsh"], capsys)
    assert code == 0 and zsh.startswith("#compdef cityclf") and "bashcompinit" in zsh
    code, fish, _ = run(["completion", "fish"], capsys)
    assert code == 0 and "complete -c cityclf -n '__fish_use_subcommand' -a score" in fish
    assert "-l combine -x -a 'mean median max min'" in fish


# ---------------------------------------------------------------- Ctrl-C, progress, file modes


def test_one_instruction_after_ctrl_c(monkeypatch, capsys):
    from cityclf_core.cli import info
    from cityclf_core.errors import Interrupted

    def stopped(args):
        raise Interrupted("checkpoint saved at step 3 (x.ckpt): add --resume to the same command to continue")

    monkeypatch.setattr(info, "cmd_models", stopped)
    code, _, err = run(["models"], capsys)
    assert code == 130
    assert err.strip().splitlines() == ["cityclf: interrupted; checkpoint saved at step 3 (x.ckpt): add --resume "
                                        "to the same command to continue"]

    def plain(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "cmd_store_info", plain)
    code, _, err = run(["store-info", "--store", "x.db"], capsys)
    assert code == 130 and err.strip().splitlines() == [
        "cityclf: interrupted; the store keeps everything finished: rerun to continue"]


def test_a_rate_only_after_it_is_measured():
    import io

    from cityclf_core.progress import ProgressBar

    now = [0.0]
    bar = ProgressBar(1000, "img", stream=io.StringIO(), enabled=True, clock=lambda: now[0])
    bar.set(900)  # a resumed run: 900 files the store has, counted at once
    now[0] += 0.01
    assert "ETA ?" in bar.text() and "img/s" not in bar.text()
    for _ in range(10):  # then real work: one image every half second
        now[0] += 0.5
        bar.update(1)
    text = bar.text()
    assert "910/1000 img" in text and "2.00 img/s" in text and "ETA 00:45" in text


def test_the_train_bar_counts_images_not_other_files(tmp_path, tiny_clip_dir, encoder):
    from cityclf_core.store import EmbeddingStore
    from cityclf_core.train import load_config
    from cityclf_core.train.data import load_image_dataset

    data = tmp_path / "data"
    for folder in ("0_a", "1_b"):
        (data / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(illustration(40, 40, i)).save(data / folder / f"{i}.png")
    cfg_path = data / "config.yaml"  # synth writes its config beside the data: not an image
    cfg_path.write_text("model: {base: T, rev: v1, arch: class}\ntrain: {lr: 1.0e-3, steps: 16, batch: 4}\n"
                        "labels:\n  0: {name: A, loss: 1.0}\n  1: {name: B, loss: 1.0}\n")
    totals, seen = [], []
    with EmbeddingStore(tmp_path / "e.db") as store:
        load_image_dataset(load_config(cfg_path), data, store, encoder, on_total=totals.append,
                           on_file=lambda p, e: seen.append(p))
    assert totals == [6] and len(seen) == 6


def test_files_are_written_with_the_umask(tmp_path, class_head_path):
    from cityclf_core.loading.head_files import load_head_file, save_head

    head = load_head_file(class_head_path)
    old = os.umask(0o022)
    try:
        out = save_head(head.net, head.config, tmp_path / "h.safetensors")
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------- a light start


def test_help_and_the_parser_import_neither_torch_nor_transformers():
    probe = ("import sys\nfrom cityclf_core.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "import cityclf_core\n"
             "print([m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stderr.strip() == "[]"


#: runs one command as `cityclf` would, then names the heavy modules it imported and its exit code
NO_MODEL_PROBE = ("import sys\nfrom cityclf_core.cli import main\n"
                  "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
                  "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], code, file=sys.stderr)\n")


@pytest.fixture(scope="module")
def scored_store(images, tiny_clip_dir, score_head_path, class_head_path, tmp_path_factory):
    """A small store with a score head's and a classifier's scores (made in this process, which loads torch)."""
    db = tmp_path_factory.mktemp("light") / "s.db"
    code = main([str(a) for a in ["score", images, "-m", score_head_path, "-m", class_head_path, "--clip",
                                   tiny_clip_dir, "--store", db, "--format", "csv", "-q"]])
    assert code == 0
    return db


@pytest.mark.parametrize("argv", [
    ["query", "--store", "{db}", "--min", "TestCompression:Pass=0", "--top", "2", "--sort-by", "TestAesthetics",
     "--format", "csv"],
    ["query", "--store", "{db}", "--format", "jsonl"],
    ["store-info", "--store", "{db}", "--json"],
    ["export", "--store", "{db}", "--out", "{tmp}/e.npz"],
    ["prune", "--store", "{db}", "--dry-run"],
    ["models", "--models-dir", "{tmp}"],
    ["models", "--json", "--models-dir", "{tmp}"],
    ["import-shards", "{tmp}", "--store", "{tmp}/i.db"],
], ids=["query-csv", "query-jsonl", "store-info", "export", "prune", "models", "models-json", "import-shards"])
def test_commands_that_need_no_model_import_neither_torch_nor_transformers(argv, scored_store, tmp_path):
    args = [a.format(db=scored_store, tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", NO_MODEL_PROBE, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    heavy = [line for line in done.stderr.splitlines() if line.startswith("HEAVY ")]
    assert done.returncode == 0 and heavy == ["HEAVY [] 0"], done.stderr
    if argv[0] == "query":  # it answered, with both kinds' stored results
        assert "TestAesthetics" in done.stdout and "TestCompression" in done.stdout
