"""The install story: CI runs the README's test command, the CLI starts without heavy imports."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from conftest import REPO
from medsynth import __version__
from medsynth.cli.main import COMMANDS, cli


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_test_one() -> None:
    cmds = _readme_commands()
    assert len(cmds) == 2
    install_and_run, install_and_test = cmds
    assert "pip install " in install_and_run and "torch" not in install_and_run and "medsynth generate --modality ct-pelvis -o out/" in install_and_run
    assert "torch==2.13.0" in install_and_test and "pytest" in install_and_test
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert install_and_test in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_help_does_not_import_torch_monai_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "from medsynth.cli.main import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'monai', 'onnxruntime') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out or out.rstrip().endswith("HEAVY="), out


def test_version_and_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    for name in COMMANDS:
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "medsynth " + name in res.output, f"`medsynth {name} --help` shows no example"


def test_unknown_command_fails_cleanly() -> None:
    res = CliRunner().invoke(cli, ["no-such-command"])
    assert res.exit_code != 0 and "No such command" in res.output


def test_latent_recipes_name_the_bundled_packs_step_counts() -> None:
    """A latent recipe replays its bundled pack: the (last phase's) autoencoder's and denoiser's
    --steps are the step counts recorded in the pack."""
    import tomllib

    from medsynth.pack import bundled_packs_dir, load_pack

    recipes = tomllib.loads((REPO / "packaging" / "packs.toml").read_text(encoding="utf-8"))
    latent = {k: r for k, r in recipes.items() if r.get("kind") == "latent"}
    assert latent
    for pack_id, r in latent.items():
        training = load_pack(bundled_packs_dir() / pack_id).metadata.training

        def steps(flags: list[str]) -> int:
            return int(flags[flags.index("--steps") + 1])

        last_ae = r.get("restart", {}).get("autoencoder", r["autoencoder"])
        assert steps(last_ae) == training["autoencoder"]["steps"], pack_id
        last = r["restart"]["denoiser"] if "restart" in r else r["denoiser"]
        assert steps(last) == training["denoiser"]["steps"], pack_id
