import json
import subprocess
import sys

import click
from click.testing import CliRunner

from wbc.cli import cli


def all_commands(group=cli, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_and_option_has_help_and_an_example():
    assert cli.help
    for path, command in all_commands():
        assert command.help, f"wbc {' '.join(path)} has no help"
        assert "Example:" in command.help.strip().splitlines()[-1] or "Example:" in command.help, (
            f"wbc {' '.join(path)}: the docstring should end with an example"
        )
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help",):
                assert param.help, f"wbc {' '.join(path)} {param.opts[0]} has no help text"
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from wbc.cli import cli\n"
        "for args in (['--help'], ['prepare', '--help'], ['train', '--help']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "wbc", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "wbc" in out.stdout


def test_bad_config_key_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        cli, ["prepare", "--data-dir", str(tmp_path), "--set", "augment.per_clas=3"]
    )
    assert result.exit_code == 1
    assert "did you mean 'per_class'" in result.output
    assert "Traceback" not in result.output


def test_prepare_without_raw_data_says_what_to_do(tmp_path):
    result = CliRunner().invoke(cli, ["prepare", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert "--raw" in result.output and "Traceback" not in result.output


def test_prepare_with_unwritable_data_dir(tmp_path, tiny_raw):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(
        cli, ["prepare", "--raw", str(tiny_raw), "--data-dir", str(blocker / "data")]
    )
    assert result.exit_code == 1
    assert str(blocker) in result.output and "Traceback" not in result.output


def test_prepare_end_to_end_then_skips(tmp_path, tiny_raw):
    data = tmp_path / "data"
    args = [
        "prepare",
        "--raw",
        str(tiny_raw),
        "--data-dir",
        str(data),
        "--set",
        "augment.per_class=20",
        "--set",
        "augment.workers=1",
        "--set",
        "subsets.small=10",
        "--set",
        "subsets.medium=20",
        "--set",
        "subsets.full=20",
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    for folder in (
        "interim/renamed",
        "interim/augmented",
        "processed/split",
        "processed/small",
        "processed/medium",
        "processed/full",
    ):
        assert (data / folder / "manifest.json").is_file(), folder
    assert len(list((data / "interim/augmented/MONOCYTE").glob("*.jpg"))) == 20
    small = json.loads((data / "processed/small/manifest.json").read_text())
    assert small["summary"]["counts"]["NEUTROPHIL"]["train"] == 9
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0
    assert second.output.count("skipped") >= 5
    one = CliRunner().invoke(cli, args + ["--stage", "split", "--force"])
    assert one.exit_code == 0 and "split: done" in one.output and "rename" not in one.output


def test_prepared_crop_is_read_from_the_manifests(tmp_path, tiny_raw):
    from wbc.data.pipeline import prepared_crop

    assert prepared_crop(tmp_path / "nothing") is None
    for mode in ("none", "detect"):
        data = tmp_path / mode
        result = CliRunner().invoke(
            cli,
            [
                "prepare",
                "--raw",
                str(tiny_raw),
                "--data-dir",
                str(data),
                "--set",
                f"crop.mode={mode}",
                "--set",
                "crop.size=48",
                "--set",
                "augment.per_class=12",
                "--set",
                "augment.workers=1",
                "--set",
                "augment.engine=opencv",
                "--stage",
                "rename",
            ],
        )
        assert result.exit_code == 0, result.output
        for stage in ("crop", "augment"):
            result = CliRunner().invoke(
                cli,
                [
                    "prepare",
                    "--data-dir",
                    str(data),
                    "--raw",
                    str(tiny_raw),
                    "--set",
                    f"crop.mode={mode}",
                    "--set",
                    "crop.size=48",
                    "--set",
                    "augment.per_class=12",
                    "--set",
                    "augment.workers=1",
                    "--set",
                    "augment.engine=opencv",
                    "--stage",
                    stage,
                ],
            )
            assert result.exit_code == 0, result.output
        found = prepared_crop(data)
        assert found["mode"] == mode
        if mode == "detect":
            assert found["size"] == 48 and found["padding"] == 0.15
