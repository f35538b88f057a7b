"""The CLI frame: help, version, startup imports, generated artefacts."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, run_still

FORBIDDEN = ("torch", "transformers", "numpy", "scipy", "datasketch", "vllm", "faiss")


def _commands() -> list[str]:
    from still.cli import COMMANDS

    return sorted(COMMANDS)


def test_version_and_module_entry():
    res = run_still("--version")
    assert "still" in res.out and "0." in res.out
    res = subprocess.run([ROOT / ".venv" / "bin" / "still", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "still" in res.stdout


def test_help_for_every_command():
    res = run_still("--help")
    for name in _commands():
        assert name in res.out
        sub = run_still([name, "--help"])
        assert "Usage: still " + name in sub.out
        assert len(sub.out.splitlines()) > 5


def test_help_listing_table_equals_each_commands_own_short_help():
    import sys

    import click

    from still.cli import COMMANDS, SHORT_HELP, cli

    assert sorted(SHORT_HELP) == sorted(COMMANDS)
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        assert SHORT_HELP[name] == command.get_short_help_str(limit=sys.maxsize), name
    res = run_still("--help")
    for name, summary in SHORT_HELP.items():
        assert summary[:40] in res.out, name
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom still.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('still.cli.') and not m.split('.')[-1].startswith('_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_help_and_completion_import_no_heavy_modules():
    names = _commands()
    code = f"""
import sys, os
from click.testing import CliRunner
from still.cli import cli
r = CliRunner()
assert r.invoke(cli, ['--help']).exit_code == 0
for name in {names!r}:
    res = r.invoke(cli, [name, '--help'])
    assert res.exit_code == 0, res.output
os.environ['_STILL_COMPLETE'] = 'bash_complete'
os.environ['COMP_WORDS'] = 'still d'
os.environ['COMP_CWORD'] = '1'
from click.shell_completion import shell_complete
shell_complete(cli, {{}}, 'still', '_STILL_COMPLETE', 'bash_complete')
for name in {names!r}:
    os.environ['COMP_WORDS'] = 'still ' + name + ' --'
    os.environ['COMP_CWORD'] = '2'
    shell_complete(cli, {{}}, 'still', '_STILL_COMPLETE', 'bash_complete')
heavy = [m for m in {FORBIDDEN!r} if m in sys.modules]
print("HEAVY:" + ','.join(heavy))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "plain,dedup" in res.stdout  # completion answered
    heavy = res.stdout.strip().splitlines()[-1]
    assert heavy == "HEAVY:", f"heavy modules imported at startup: {heavy}"


def test_generated_artefacts_do_not_drift():
    res = subprocess.run([sys.executable, "-m", "still.cli._generate", "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_unknown_command_is_usage_error():
    res = run_still("no-such-command", code=2)
    assert "No such command" in res.stderr


def test_missing_extra_gives_install_hint(tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("method: linear\n")
    code = (
        f"import sys; sys.modules['yaml'] = None; sys.argv = ['still', 'merge', '--spec', {str(spec)!r}, '-o', "
        f"{str(tmp_path / 'out')!r}]; from still.cli import main; main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "pip install 'still[models]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
