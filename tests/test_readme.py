"""README promises: the tour runs, and CI runs exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    command = next(line for line in README.splitlines() if 'pip install -e ".[test]"' in line)
    assert command.strip() in (ROOT / ".ci" / "run").read_text()


def test_the_five_minute_tour_runs(capsys):
    tour = re.search(r"## A five-minute tour\s+```python\n(.*?)```", README, re.S).group(1)
    exec(compile(tour, "README tour", "exec"), {})
    assert "(4, 16)" in capsys.readouterr().out
