"""The examples run as a learner runs them, and print what they promise."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout


def test_autograd_example_matches_the_hand_derivation():
    out = run("01_autograd.py")
    difference = float(out.split("max difference:")[1].split()[0])
    assert difference < 1e-12 and "gradcheck passed: True" in out


def test_classifier_example_learns_the_spirals():
    out = run("02_train_a_classifier.py", "300")
    accuracy = float(out.split("training accuracy:")[1].split()[0])
    assert accuracy > 0.95
