"""Small builders for synthetic samples and a settable clock."""

from __future__ import annotations

from dataclasses import dataclass

from steadygen.telemetry import GpuProcess, GpuReading, HostReading, Sample


@dataclass
class FakeClock:
    t: float = 100.0

    def __call__(self) -> float:
        return self.t


def gpu(index: int = 0, **fields: object) -> GpuReading:
    base: dict[str, object] = dict(
        name="NVIDIA H100",
        sm_clock_hz=1.98e9,
        sm_clock_max_hz=1.98e9,
        util_gpu_pct=99.0,
        temp_c=60.0,
        power_w=600.0,
        power_limit_w=700.0,
        mem_used_bytes=30 << 30,
        mem_total_bytes=80 << 30,
        clock_event_mask=0,
    )
    base.update(fields)
    return GpuReading(index=index, **base)  # type: ignore[arg-type]


def sample(
    t: float,
    gpus: list[GpuReading] | None = None,
    processes: list[GpuProcess] | None = None,
    **host: object,
) -> Sample:
    return Sample(
        t_mono=t,
        t_wall=1.7e9 + t,
        host=HostReading(**host),  # type: ignore[arg-type]
        gpus=[gpu()] if gpus is None else gpus,
        processes=processes,
    )


def proc(
    pid: int, ours: bool, used: int = 1 << 30, gpu_index: int = 0, name: str | None = "x"
) -> GpuProcess:
    return GpuProcess(
        gpu_index=gpu_index,
        pid=pid,
        name=name,
        used_bytes=used,
        sm_util_pct=None,
        ours=ours,
        kind="compute",
    )
