"""The README's set-up commands and .ci/run must not drift apart."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip() for b in _bash_blocks(setup)]
    assert len(blocks) == 2, "the README has exactly two set-up commands"
    test_command = blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = test_command.rsplit(" && ", 1)
    assert install in ci, "CI installs exactly as the README says"
    assert run in ci, "CI runs the tests exactly as the README says"
    assert "constraints/cpu.txt" in blocks[0]


def test_every_subcommand_is_documented():
    readme = (ROOT / "README.md").read_text()
    for sub in ("data generate", "data info", "data masks", "configs", "train", "inpaint", "evaluate", "demo"):
        assert f"fieldpaint {sub}" in readme or f"`{sub}`" in readme, sub
