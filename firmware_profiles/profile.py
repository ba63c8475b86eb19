"""Device profiles: what a board can compute, hold and send, read from a TOML file and validated.

``load_profile(name_or_path)`` returns a frozen ``Profile``; ``list_profiles()`` names the
packaged ones (``firmware_profiles/profiles/*.toml``). Every bad key or value raises UserError
naming the file, the key and the value. MB means MiB (2**20 bytes); Mbit/s means 10**6 bit/s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from common.compute import BACKENDS, DTYPES
from common.errors import UserError
from common.files import loads_toml, read_toml
from common.schema import Bad as _Bad
from common.schema import Record, one_of, setting, text

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
ARCHITECTURES = ("aarch64", "armv7l", "armv6l", "x86_64", "riscv64", "ppc64le", "s390x")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
PROVIDERS = GPU_PROVIDERS + ("OpenVINOExecutionProvider", "DnnlExecutionProvider",
                             "XnnpackExecutionProvider", "ACLExecutionProvider",
                             "ArmNNExecutionProvider", "QNNExecutionProvider", "CPUExecutionProvider")
SOURCE_KINDS = ("public spec:", "estimated:", "measured:")
MIB = 2**20



def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(f"{key} = {value!r}: expected a positive integer")
    return value


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise _Bad(f"{key} = {value!r}: expected a positive number")
    return float(value)


def _fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise _Bad(f"{key} = {value!r}: expected a number in (0, 1]")
    return float(value)


def _providers(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise _Bad(f"{key} = {value!r}: expected a non-empty list of ONNX Runtime provider names")
    for p in value:
        if p not in PROVIDERS:
            raise _Bad(f"{key} = {value!r}: unknown provider {p!r} (known: {', '.join(PROVIDERS)})")
    if len(set(value)) != len(value) or "CPUExecutionProvider" not in value:
        raise _Bad(f"{key} = {value!r}: expected distinct providers that include "
                   "CPUExecutionProvider as the fallback")
    return tuple(value)


@dataclass(frozen=True)
class DeviceSection(Record):
    name: str = setting(check=text)
    architecture: str = setting(check=one_of(*ARCHITECTURES))
    cores: int = setting(check=_positive_int)
    threads: int = setting(check=_positive_int)
    description: str = setting("", text)


@dataclass(frozen=True)
class MemorySection(Record):
    total_mb: float = setting(check=_positive)
    budget_mb: float = setting(check=_positive)


@dataclass(frozen=True)
class ComputeSection(Record):
    model: str = setting(check=text)
    peak_gflops: float = setting(check=_positive)
    effective_fraction: float = setting(check=_fraction)


@dataclass(frozen=True)
class KernelsSection(Record):
    preferred: str = setting(check=one_of(*BACKENDS))
    providers: tuple = setting(check=_providers)
    dtype: str = setting(check=one_of(*DTYPES))


@dataclass(frozen=True)
class NetworkSection(Record):
    link: str = setting(check=text)
    bandwidth_mbit: float = setting(check=_positive)
    latency_ms: float = setting(check=_positive)


def _source_table(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"[{key}] must be a table, got {value!r}")
    return dict(value)


@dataclass(frozen=True)
class ProfileFile(Record):
    """A profile TOML file as written; ``Profile`` is what the code reads (figures flattened)."""

    device: DeviceSection = setting(check=None)
    memory: MemorySection = setting(check=None)
    cpu: ComputeSection = setting(check=None)
    kernels: KernelsSection = setting(check=None)
    network: NetworkSection = setting(check=None)
    gpu: ComputeSection | None = setting(None)
    sources: dict = setting({}, _source_table)


# Figures that must say where they come from in [sources].
SOURCED = ("device.cores", "memory.total_mb", "cpu.peak_gflops", "cpu.effective_fraction",
           "network.bandwidth_mbit", "network.latency_ms")
GPU_SOURCED = ("gpu.peak_gflops", "gpu.effective_fraction")


@dataclass(frozen=True)
class Profile:
    """One device: compute, memory and network figures, and how the agent should run on it.

    ``effective_gflops`` is the sustained float32 matmul rate of the device the preferred kernels
    run on (the GPU when kernels = onnx and the first provider is a GPU provider, else the CPU):
    peak_gflops * effective_fraction. ``sources`` maps "section.key" to where a figure comes from.
    """

    name: str
    path: str
    description: str
    architecture: str
    cores: int
    threads: int
    memory_mb: float
    budget_mb: float
    cpu_model: str
    cpu_peak_gflops: float
    cpu_effective_fraction: float
    gpu_model: str | None
    gpu_peak_gflops: float | None
    gpu_effective_fraction: float | None
    kernels: str
    providers: tuple[str, ...]
    dtype: str
    link: str
    bandwidth_mbit: float
    latency_ms: float
    sources: Mapping[str, str] = field(hash=False)

    @property
    def compute_device(self) -> str:
        """"gpu" if the preferred kernels run on the GPU, else "cpu"."""
        on_gpu = self.kernels == "onnx" and self.providers[0] in GPU_PROVIDERS
        return "gpu" if on_gpu and self.gpu_peak_gflops else "cpu"

    @property
    def peak_gflops(self) -> float:
        return self.gpu_peak_gflops if self.compute_device == "gpu" else self.cpu_peak_gflops

    @property
    def effective_gflops(self) -> float:
        if self.compute_device == "gpu":
            return self.gpu_peak_gflops * self.gpu_effective_fraction
        return self.cpu_peak_gflops * self.cpu_effective_fraction

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_mb * MIB)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_mb * MIB)

    @property
    def dtype_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize


def list_profiles() -> list[str]:
    """Names of the packaged profiles, sorted (e.g. "raspberry-pi-4b")."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def profile_path(name_or_path: str | Path) -> Path:
    """The file for a packaged profile name, or ``name_or_path`` itself if it names a file."""
    text = str(name_or_path)
    if text in list_profiles():
        return PROFILE_DIR / f"{text}.toml"
    path = Path(text)
    if path.suffix == ".toml" or path.exists() or "/" in text:
        return path
    raise UserError(f"unknown profile {text!r} (known: {', '.join(list_profiles())}; "
                    "or give a path to a .toml file)")


def load_profile(name_or_path: str | Path) -> Profile:
    """Read and validate a profile: a packaged name (see ``list_profiles``) or a TOML path.

    Raises UserError "profile FILE: section.key = VALUE: expected ..." for a missing, unknown or
    bad key, and for memory.budget_mb > memory.total_mb or threads > cores.
    """
    path = profile_path(name_or_path)
    label = path.name if path.parent == PROFILE_DIR else str(path)
    return _build(read_toml(path, f"profile {label}"), str(path), f"profile {label}")


def parse_profile(text: str, source: str = "<text>") -> Profile:
    """Validate profile TOML text (as ``load_profile`` does for a file)."""
    return _build(loads_toml(text, f"profile {source}"), source, f"profile {source}")


def _build(raw: dict, path: str, where: str) -> Profile:
    f = ProfileFile.from_table(raw, where)
    try:
        _check(f)
    except _Bad as err:
        raise UserError(f"{where}: {err}") from None
    dev, mem, cpu, ker, net, gpu = f.device, f.memory, f.cpu, f.kernels, f.network, f.gpu
    return Profile(
        name=dev.name, path=path, description=dev.description,
        architecture=dev.architecture, cores=dev.cores, threads=dev.threads,
        memory_mb=mem.total_mb, budget_mb=mem.budget_mb,
        cpu_model=cpu.model, cpu_peak_gflops=cpu.peak_gflops, cpu_effective_fraction=cpu.effective_fraction,
        gpu_model=gpu and gpu.model, gpu_peak_gflops=gpu and gpu.peak_gflops,
        gpu_effective_fraction=gpu and gpu.effective_fraction,
        kernels=ker.preferred, providers=ker.providers, dtype=ker.dtype,
        link=net.link, bandwidth_mbit=net.bandwidth_mbit, latency_ms=net.latency_ms,
        sources=MappingProxyType(dict(f.sources)))


def _check(f: ProfileFile) -> None:
    """The rules across keys: budget <= total, threads <= cores, a GPU provider needs [gpu], and
    [sources]: "section.key" = "public spec: ..." | "estimated: ..." | "measured: ..." for every figure
    in SOURCED (and GPU_SOURCED with a [gpu] section)."""
    if f.memory.budget_mb > f.memory.total_mb:
        raise _Bad(f"memory.budget_mb = {_num(f.memory.budget_mb)} exceeds memory.total_mb = "
                   f"{_num(f.memory.total_mb)}")
    if f.device.threads > f.device.cores:
        raise _Bad(f"device.threads = {f.device.threads} exceeds device.cores = {f.device.cores}")
    if f.kernels.providers[0] in GPU_PROVIDERS and f.gpu is None:
        raise _Bad(f"kernels.providers = {list(f.kernels.providers)!r}: {f.kernels.providers[0]} needs a "
                   "[gpu] section")
    sections = {"device": DeviceSection, "memory": MemorySection, "cpu": ComputeSection, "gpu": ComputeSection,
                "kernels": KernelsSection, "network": NetworkSection}
    known = {f"{s}.{fl.name}" for s, rec in sections.items() for fl in rec.fields()}
    for key, value in f.sources.items():
        if key not in known:
            raise _Bad(f"unknown key sources.\"{key}\" (expected \"section.key\" of a profile figure)")
        if not isinstance(value, str) or not value.startswith(SOURCE_KINDS):
            raise _Bad(f"sources.\"{key}\" = {value!r}: expected a string starting with "
                       f"{', '.join(SOURCE_KINDS)}")
    for key in SOURCED + (GPU_SOURCED if f.gpu is not None else ()):
        if key not in f.sources:
            raise _Bad(f"missing key sources.\"{key}\" (say where {key} comes from: "
                       f"{', '.join(SOURCE_KINDS)} ...)")


def _num(x: float) -> str:
    return f"{x:g}"
