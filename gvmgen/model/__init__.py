"""The GVMGen model: configuration, modules and checkpoint loading."""

from .config import GVMGenConfig, preset
from .gvmgen import GVMGen

__all__ = ["GVMGen", "GVMGenConfig", "preset"]
