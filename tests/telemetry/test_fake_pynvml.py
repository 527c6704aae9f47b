"""The fake pynvml must not drift from the real one: same names, constant values, signatures
and return types, and the units the NVML documentation gives."""

from __future__ import annotations

import ctypes
import inspect

import pynvml
import pytest

from . import fake_pynvml

PREFIXES = ("nvml", "NVML", "c_nvml")


def _public_names() -> list[str]:
    return [n for n in vars(fake_pynvml) if n.startswith(PREFIXES)]


def test_fake_pynvml_matches_real() -> None:
    missing = [n for n in _public_names() if not hasattr(pynvml, n)]
    assert missing == [], f"the fake defines names the real pynvml lacks: {missing}"


@pytest.mark.parametrize(
    "name", [n for n in _public_names() if isinstance(getattr(fake_pynvml, n), int)]
)
def test_fake_constants_have_real_values(name: str) -> None:
    assert getattr(fake_pynvml, name) == getattr(pynvml, name)


def test_fake_errors_derive_like_real() -> None:
    for cls in ("NVMLError_NotSupported", "NVMLError_LibraryNotFound", "NVMLError_NotFound"):
        assert issubclass(getattr(pynvml, cls), pynvml.NVMLError)
        assert issubclass(getattr(fake_pynvml, cls), fake_pynvml.NVMLError)
    err = fake_pynvml.NVMLError(fake_pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert type(err) is fake_pynvml.NVMLError_NotSupported
    real = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert type(real).__name__ == type(err).__name__
    assert fake_pynvml.NVMLError_LibraryNotFound().value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND


def test_fake_struct_fields_match_real() -> None:
    for name in (
        "c_nvmlUtilization_t",
        "c_nvmlMemory_t",
        "c_nvmlFieldValue_t",
        "c_nvmlProcessUtilizationSample_t",
    ):
        fake_fields = [f[0] for f in getattr(fake_pynvml, name)._fields_]
        real_fields = [f[0] for f in getattr(pynvml, name)._fields_]
        assert fake_fields == real_fields, name


# -- signatures and return types against the real module ----------------------------------

OPAQUE = {"nvmlDeviceGetHandleByIndex"}  # a device handle: opaque to callers by design
NO_RESULT = {"nvmlInit", "nvmlShutdown"}


def _fake_functions() -> list[str]:
    return sorted(n for n, v in vars(fake_pynvml).items()
                  if n.startswith("nvml") and inspect.isfunction(v))


def _shape(params: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in params.parameters.values()]


@pytest.mark.parametrize("name", _fake_functions())
def test_fake_signatures_match_real(name: str) -> None:
    """Same parameter names, kinds and defaults as the real function: a keyword call that
    works on the fake works on a GPU."""
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(fake_pynvml, name))
    assert _shape(fake) == _shape(real), name


class NullDriver:
    """Stands in for libnvidia-ml's C functions under the real pynvml: every call succeeds
    and writes nothing; a size probe (an output array of None) is told one entry is there.
    The real Python wrappers then return exactly the types they return on a GPU."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args: object) -> int:
        if any(a is None for a in args):
            for a in args:
                target = getattr(a, "_obj", None)  # byref(c_uint count)
                if isinstance(target, ctypes.c_uint):
                    target.value = 1
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        return pynvml.NVML_SUCCESS


def _type_of(value: object) -> object:
    """A comparable description of a return value's type: the class name, the element types
    of a list or ctypes array, and the attribute names of pynvml's friendly objects."""
    if isinstance(value, list | ctypes.Array):
        return (type(value).__name__ if isinstance(value, list) else "ctypes-array",
                sorted({repr(_type_of(v)) for v in value}))
    if type(value).__name__ == "nvmlFriendlyObject":
        return ("nvmlFriendlyObject", sorted(vars(value)))
    return type(value).__name__


@pytest.mark.parametrize("name", [n for n in _fake_functions() if n not in OPAQUE | NO_RESULT])
def test_fake_return_types_match_real(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", NullDriver)
    args = _args_for(name)
    real = getattr(pynvml, name)(*([ctypes.c_void_p()] if args else []), *args[1:])
    state = fake_pynvml.install(fake_pynvml.FakeNvml())
    state.initialised = 1
    device = state.devices[0]
    device.processes = [fake_pynvml.FakeProcess(pid=1, sm_util=1, kind="compute"),
                        fake_pynvml.FakeProcess(pid=2, sm_util=1, kind="graphics")]
    try:
        fake = getattr(fake_pynvml, name)(*([device] if args else []), *args[1:])
    finally:
        fake_pynvml.install(fake_pynvml.FakeNvml())
    assert _type_of(fake) == _type_of(real), name


def _args_for(name: str) -> list[object]:
    """Arguments for one call: a handle first when the function takes one, then values."""
    params = list(inspect.signature(getattr(pynvml, name)).parameters)
    values: dict[str, object] = {
        "handle": "handle", "type": pynvml.NVML_CLOCK_SM,
        "sensor": pynvml.NVML_TEMPERATURE_GPU,
        "threshold": pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN, "timeStamp": 0,
        "fieldIds": [pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN],
    }
    required = [p for p in params if inspect.signature(getattr(pynvml, name)).parameters[p]
                .default is inspect.Parameter.empty]
    return [values[p] for p in required] if required and required[0] == "handle" else []


# -- units, pinned to the NVML documentation -------------------------------------------------
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html:
#   nvmlDeviceGetClockInfo / GetMaxClockInfo: "clock speed in MHz"
#   nvmlDeviceGetPowerUsage / GetEnforcedPowerLimit: "power usage ... in milliwatts"
#   nvmlDeviceGetTotalEnergyConsumption: "energy consumption ... in millijoules (mJ)"
#   nvmlDeviceGetMemoryInfo: total / free / used "in bytes"
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlFieldValueQueries.html and nvml.h,
#   "Field values for Clock Throttle Reason Counters: All counters are in nanoseconds".


def test_units_follow_the_nvml_documentation(fake_nvml: fake_pynvml.FakeNvml) -> None:
    from steadygen.telemetry.counters import CounterDeltas, EdgeCounters, HostCounters
    from steadygen.telemetry.nvml import NvmlBackend

    dev = fake_nvml.devices[0]
    dev.update(sm_clock_mhz=1410, sm_clock_max_mhz=1980, mem_clock_mhz=1593,
               power_mw=312_500, power_limit_mw=400_000, mem_used=3 << 30, mem_total=80 << 30)
    backend = NvmlBackend()
    (g,) = backend.read_gpus()
    assert g.sm_clock_hz == 1_410_000_000 and g.sm_clock_max_hz == 1_980_000_000  # MHz
    assert g.mem_clock_hz == 1_593_000_000
    assert g.power_w == 312.5 and g.power_limit_w == 400.0  # mW
    assert g.mem_used_bytes == 3 << 30 and g.mem_total_bytes == 80 << 30  # bytes
    (start,) = backend.read_counters()
    dev.add_energy(12.5)  # the fake counts in mJ, as NVML does: 12,500 mJ
    dev.add_throttle("sw_thermal", 0.75)  # 750,000,000 ns
    (end,) = backend.read_counters()
    assert end.energy_mj - start.energy_mj == 12_500  # type: ignore[operator]
    assert end.throttle_ns["sw_thermal"] - start.throttle_ns["sw_thermal"] == 750_000_000
    d = CounterDeltas.between(EdgeCounters(0.0, HostCounters(), [start]),
                              EdgeCounters(1.0, HostCounters(), [end]))
    gd = d.gpu(0)
    assert gd is not None and gd.energy_j == 12.5 and gd.throttle_s["sw_thermal"] == 0.75
