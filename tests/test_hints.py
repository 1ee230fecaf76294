"""Every command an error message suggests (in backticks) parses with the real `stego` parser: options that a
command does not have, or a root that is a placeholder, cannot creep back into the hints."""
import ast
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import write_imagefolder
from stego import build
from stego.backbones.weights import WEIGHTS_OPTION
from stego.cli import build_parser, parse
from stego.config import from_dict, load_config
from stego.data.datasets import build_dataset
from stego.data.fivecrop import five_crop
from stego.data.knn import KnnTable, knn_meta, table_expect
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.evaluate import check_scorable

REPO = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"`(stego [^`]+)`")


def assert_parses(command: str) -> None:
    try:
        parse(build_parser(), shlex.split(command)[1:])
    except SystemExit as done:
        assert done.code == 0, f"suggested command does not parse: {command}"


def suggested(err: Exception) -> list[str]:
    commands = COMMAND.findall(str(err))
    assert commands, f"no command suggested in: {err}"
    return commands


def _cfg(root, **data):
    return from_dict({"data": {"dataset": "synthetic", "root": str(root), "res": 16, "workers": 0, **data},
                      "model": {"backbone": "filterbank", "weights": "random"}})


def _errors(tmp_path) -> list[Exception]:
    """The errors of the usual first mistakes, as a user meets them."""
    errors = []

    def catch(fn, *args, **kwargs):
        with pytest.raises(StegoError) as err:
            fn(*args, **kwargs)
        errors.append(err.value)

    catch(build.train_dataset, _cfg(tmp_path / "no-scenes"))  # synthetic scenes never generated
    scenes = make_scenes(tmp_path / "scenes", SceneSpec(n_train=3, n_val=2, size=32), seed=0)
    catch(build.train_dataset, _cfg(scenes, crop="five"))  # crops never made
    five_crop("imagefolder", scenes, "train", workers=1)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(scenes / "images" / "train" / "00000.png")
    catch(build.train_dataset, _cfg(scenes, crop="five"))  # crops of a changed image
    folder = write_imagefolder(tmp_path / "mine", splits=("train",), n=3).root
    bad = sorted((folder / "images" / "train").iterdir())[0]
    bad.write_bytes(b"not an image")
    catch(lambda: build_dataset("imagefolder", folder, "train").load(0))  # a corrupt image
    meta = knn_meta("dino_vits16", "random", "imagefolder", "train", "none", 32)
    catch(KnnTable.load, tmp_path / "nns" / "missing.pt", table_expect(meta, 3, "3:x"), 8, folder)
    unlabelled = build_dataset("imagefolder", folder, "train")
    unlabelled.items = [(image, None) for image, _ in unlabelled.items]
    catch(check_scorable, unlabelled, 5, _cfg(folder), "train", tmp_path / "run" / "checkpoint.pt")
    catch(load_config, "cocostuff27_relase")
    return errors


def test_every_suggested_command_parses(tmp_path):
    errors = _errors(tmp_path)
    for err in errors:
        assert "\n" not in str(err)
        for command in suggested(err):
            assert_parses(command)
    roots = {str(tmp_path / "no-scenes"), str(tmp_path / "scenes"), str(tmp_path / "mine")}
    named = [c for err in errors for c in suggested(err) if "--root" in c or "synthetic --out" in c]
    assert named and all(any(root in c for root in roots) for c in named), named  # real roots, no placeholder


def test_command_literals_in_the_source_parse():
    """Backticked commands written as plain strings anywhere in the package (docstrings and help texts, which
    name commands rather than suggest them, aside; f-strings are covered above)."""
    found = []
    for path in sorted((REPO / "stego").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        docstrings |= {id(node.value) for node in ast.walk(tree)
                       if isinstance(node, ast.keyword) and node.arg in ("help", "description")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [(path, c) for c in COMMAND.findall(node.value)]
    assert found
    for path, command in found:
        if "{" not in command:
            assert_parses(command)


def test_the_weights_hint_names_real_keys_and_options():
    assert "model.weights=PATH" in WEIGHTS_OPTION and "--weights PATH (stego data knn)" in WEIGHTS_OPTION
    assert load_config("cocostuff27_release", ["model.weights=/w.pth"]).model.weights == "/w.pth"
    assert_parses("stego data knn --dataset d --root r --split train --backbone dino_vits16 --weights /w.pth")


def _documented_commands() -> list[str]:
    """Every `stego ...` line of the README's and docs' shell blocks (comments and continuations joined)."""
    commands = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.splitlines():
                line = line.split("#", 1)[0].strip()
                for prefix in (".venv/bin/", "torchrun --nproc_per_node 4 -m stego.cli "):
                    line = line.replace(prefix, "stego " if prefix.startswith("torchrun") else "")
                if line.startswith("stego "):
                    commands.append(line.split("&&")[0].strip())
    return commands


def test_the_documented_commands_parse():
    commands = _documented_commands()
    assert any("data.dataset=imagefolder" in c for c in commands) and len(commands) > 20
    for command in commands:
        assert_parses(command)


@pytest.mark.parametrize("command", [["data", "fivecrop"], ["data", "knn"], ["data", "synthetic"], ["presets"]])
def test_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    description = text.split("options:")[0]
    assert len(description.split()) > 25, text[:300]


def test_eval_split_has_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    assert "the labelled split to score" in " ".join(capsys.readouterr().out.split())
