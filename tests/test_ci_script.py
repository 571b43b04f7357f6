"""`.ci/run`, what CI runs: the README's test command verbatim (the two cannot drift apart), inside a fresh
virtualenv in a temporary directory that is gone afterwards, and a run that collects no tests fails."""
import os
import re
import shlex
import subprocess

from server_support import ROOT

CI_SCRIPT = os.path.join(ROOT, ".ci", "run")


def readme_test_command() -> str:
    """The second code block of README.md's Quickstart section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        quickstart = f.read().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", quickstart, flags=re.DOTALL | re.MULTILINE)
    return blocks[1].strip()


def ci_test_command(script: str) -> str:
    [line] = [line for line in script.splitlines() if line.startswith("TEST_COMMAND=")]
    [command] = shlex.split(line[len("TEST_COMMAND="):])
    return command


def test_ci_runs_the_readme_test_command_verbatim():
    with open(CI_SCRIPT) as f:
        assert ci_test_command(f.read()) == readme_test_command()


def test_ci_runs_in_a_fresh_virtualenv_that_it_removes_and_fails_without_tests(tmp_path):
    """The script itself, its command swapped for one that records its Python and exits as pytest does when it
    collects nothing (5)."""
    with open(CI_SCRIPT) as f:
        script = f.read()
    seen = tmp_path / "prefix.txt"
    stand_in = f"python -c 'import sys; open(\"{seen}\", \"w\").write(sys.prefix); sys.exit(5)'"
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(script.replace(shlex.quote(ci_test_command(script)), shlex.quote(stand_in)))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    run = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                         env={**os.environ, "TMPDIR": str(temporary)})
    assert run.returncode == 5, run.stderr
    assert "collected no tests" in run.stderr
    prefix = seen.read_text()
    assert os.path.dirname(prefix) == str(temporary)   # the virtualenv mktemp -d made, not this one
    assert not os.listdir(temporary), "the virtualenv was left behind"
