"""The entry point: lazy command imports, bare `fom`, --version."""

import subprocess
import sys

from fom_cli.cli import COMMANDS, command_module
from conftest import run_cli


def test_help_and_version_do_not_import_torch():
    # A fresh interpreter: this test process has imported torch long ago.
    code = ("import sys\n"
            "from fom_cli.cli import build_parser\n"
            "build_parser()\n"
            "build_parser(['--version'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert not any(name.startswith('fom_cli.commands.') for name in sys.modules), 'a command imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    version = subprocess.run([sys.executable, "-m", "fom_cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("fom ")


def test_every_command_has_a_parser_and_run():
    for name in COMMANDS:
        module = command_module(name)
        assert callable(module.configure_parser) and callable(module.run), name


def test_bare_fom_prints_usage_and_the_commands(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 2
    assert "usage: fom" in err and all(name in err for name in COMMANDS)
