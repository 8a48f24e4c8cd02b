"""Every kernel source compiles with nvcc for Ampere (sm_80) and Hopper (sm_90).

This runs wherever nvcc is installed, GPU or not, so that a syntax error in a kernel cannot
land on a machine that has no GPU to load it.
"""

import shutil
import subprocess

import pytest

from backends.kernels.loader import KERNEL_DIR, NVCC_OPTIONS, kernel_sources

NVCC = shutil.which("nvcc")


def test_there_are_kernel_sources():
    names = {path.name for path in kernel_sources()}
    assert {"sgemm.cu", "lora.cu", "nf4.cu", "softmax.cu", "cross_entropy.cu", "norm.cu"} <= names


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", kernel_sources(), ids=lambda p: p.name)
def test_kernel_compiles_with_nvcc(source, arch, tmp_path):
    command = [NVCC, *NVCC_OPTIONS, f"-arch={arch}", f"-I{KERNEL_DIR}", "-c", str(source),
               "-o", str(tmp_path / "kernel.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
