"""Device profiles: what a board can compute, hold and send, read from a TOML file and validated.

``load_profile(name_or_path)`` returns a frozen ``Profile``; ``list_profiles()`` names the
packaged ones (``firmware_profiles/profiles/*.toml``). Every bad key or value raises UserError
naming the file, the key and the value. MB means MiB (2**20 bytes); Mbit/s means 10**6 bit/s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from coordinator_free.common.errors import UserError
from coordinator_free.common.files import read_toml

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
ARCHITECTURES = ("aarch64", "armv7l", "armv6l", "x86_64", "riscv64", "ppc64le", "s390x")
KERNELS = ("numpy", "onnx")
DTYPES = ("float32", "float64")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
PROVIDERS = GPU_PROVIDERS + ("OpenVINOExecutionProvider", "DnnlExecutionProvider",
                             "XnnpackExecutionProvider", "ACLExecutionProvider",
                             "ArmNNExecutionProvider", "QNNExecutionProvider", "CPUExecutionProvider")
SOURCE_KINDS = ("public spec:", "estimated:", "measured:")
MIB = 2**20

Check = Callable[[str, Any], Any]


class _Bad(Exception):
    """A value failed its check; ``load_profile`` adds the file name and raises UserError."""


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"{key} = {value!r}: expected a non-empty string")
    return value


def _one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Bad(f"{key} = {value!r}: expected one of {', '.join(choices)}")
        return value
    return check


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


# section -> key -> (required?, check)
SCHEMA: dict[str, dict[str, tuple[bool, Check]]] = {
    "device": {"name": (True, _text), "description": (False, _text),
               "architecture": (True, _one_of(*ARCHITECTURES)),
               "cores": (True, _positive_int), "threads": (True, _positive_int)},
    "memory": {"total_mb": (True, _positive), "budget_mb": (True, _positive)},
    "cpu": {"model": (True, _text), "peak_gflops": (True, _positive),
            "effective_fraction": (True, _fraction)},
    "gpu": {"model": (True, _text), "peak_gflops": (True, _positive),
            "effective_fraction": (True, _fraction)},
    "kernels": {"preferred": (True, _one_of(*KERNELS)), "providers": (True, _providers),
                "dtype": (True, _one_of(*DTYPES))},
    "network": {"link": (True, _text), "bandwidth_mbit": (True, _positive),
                "latency_ms": (True, _positive)},
}
OPTIONAL_SECTIONS = ("gpu", "sources")
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
        return 4 if self.dtype == "float32" else 8


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
    raw = read_toml(path, f"profile {label}")
    try:
        return _build(raw, str(path))
    except _Bad as err:
        raise UserError(f"profile {label}: {err}") from None


def parse_profile(text: str, source: str = "<text>") -> Profile:
    """Validate profile TOML text (as ``load_profile`` does for a file)."""
    try:
        return _build(tomllib.loads(text), source)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"profile {source} is not valid TOML: {err}") from None
    except _Bad as err:
        raise UserError(f"profile {source}: {err}") from None


def _build(raw: dict, path: str) -> Profile:
    values: dict[str, dict[str, Any]] = {}
    for section, body in raw.items():
        if section not in SCHEMA and section != "sources":
            raise _Bad(f"unknown section [{section}] (known: {', '.join([*SCHEMA, 'sources'])})")
        if not isinstance(body, dict):
            raise _Bad(f"[{section}] must be a table, got {body!r}")
    for section, keys in SCHEMA.items():
        body = raw.get(section)
        if body is None:
            if section in OPTIONAL_SECTIONS:
                continue
            raise _Bad(f"missing section [{section}]")
        for key in body:
            if key not in keys:
                raise _Bad(f"unknown key {section}.{key} (known in [{section}]: {', '.join(keys)})")
        values[section] = {}
        for key, (required, check) in keys.items():
            if key in body:
                values[section][key] = check(f"{section}.{key}", body[key])
            elif required:
                raise _Bad(f"missing key {section}.{key}")
    sources = _sources(raw.get("sources", {}), has_gpu="gpu" in values)
    dev, mem, cpu, ker, net = (values[s] for s in ("device", "memory", "cpu", "kernels", "network"))
    gpu = values.get("gpu", {})
    if mem["budget_mb"] > mem["total_mb"]:
        raise _Bad(f"memory.budget_mb = {_num(mem['budget_mb'])} exceeds memory.total_mb = "
                   f"{_num(mem['total_mb'])}")
    if dev["threads"] > dev["cores"]:
        raise _Bad(f"device.threads = {dev['threads']} exceeds device.cores = {dev['cores']}")
    if ker["providers"][0] in GPU_PROVIDERS and not gpu:
        raise _Bad(f"kernels.providers = {list(ker['providers'])!r}: {ker['providers'][0]} needs a "
                   "[gpu] section")
    return Profile(
        name=dev["name"], path=path, description=dev.get("description", ""),
        architecture=dev["architecture"], cores=dev["cores"], threads=dev["threads"],
        memory_mb=mem["total_mb"], budget_mb=mem["budget_mb"],
        cpu_model=cpu["model"], cpu_peak_gflops=cpu["peak_gflops"],
        cpu_effective_fraction=cpu["effective_fraction"],
        gpu_model=gpu.get("model"), gpu_peak_gflops=gpu.get("peak_gflops"),
        gpu_effective_fraction=gpu.get("effective_fraction"),
        kernels=ker["preferred"], providers=ker["providers"], dtype=ker["dtype"],
        link=net["link"], bandwidth_mbit=net["bandwidth_mbit"], latency_ms=net["latency_ms"],
        sources=MappingProxyType(sources))


def _sources(body: dict, has_gpu: bool) -> dict[str, str]:
    """[sources]: "section.key" = "public spec: ..." | "estimated: ..." | "measured: ...".

    Every figure in SOURCED (and GPU_SOURCED with a [gpu] section) must have one.
    """
    known = {f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
    for key, value in body.items():
        if key not in known:
            raise _Bad(f"unknown key sources.\"{key}\" (expected \"section.key\" of a profile figure)")
        if not isinstance(value, str) or not value.startswith(SOURCE_KINDS):
            raise _Bad(f"sources.\"{key}\" = {value!r}: expected a string starting with "
                       f"{', '.join(SOURCE_KINDS)}")
    for key in SOURCED + (GPU_SOURCED if has_gpu else ()):
        if key not in body:
            raise _Bad(f"missing key sources.\"{key}\" (say where {key} comes from: "
                       f"{', '.join(SOURCE_KINDS)} ...)")
    return dict(body)


def _num(x: float) -> str:
    return f"{x:g}"
