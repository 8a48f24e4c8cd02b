"""Files in and out: safetensors by hand (hostile-file safe), atomic writes and checkpoints."""

from minift.io.atomic import atomic_directory, atomic_write, fsync_directory
from minift.io.checkpoint import load_checkpoint, save_checkpoint
from minift.io.safetensors import (
    MAX_HEADER_SIZE,
    SafeFile,
    SafetensorsError,
    TensorInfo,
    load,
    load_file,
    read_metadata,
    save,
    save_file,
)

__all__ = [
    "MAX_HEADER_SIZE", "SafeFile", "SafetensorsError", "TensorInfo", "atomic_directory",
    "atomic_write", "fsync_directory", "load", "load_checkpoint", "load_file", "read_metadata",
    "save", "save_checkpoint", "save_file",
]
