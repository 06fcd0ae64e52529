"""Generated placement scenarios for `make bench` and the property tests."""

from __future__ import annotations

import random

from airavata_prefect.domain.placement import TaskClass
from airavata_prefect.domain.resources import ComputeResource, Prices


def resources(rng: random.Random, n: int) -> list[ComputeResource]:
    out = []
    for i in range(n):
        gpus = rng.choice([0, 0, 0, 2, 4, 8])
        out.append(ComputeResource(
            name=f"r{i}", type=rng.choice(["slurm", "kubernetes", "baremetal"]),
            nodes=rng.choice([1, 2, 4, 8, 16, 64]), cores_per_node=rng.choice([8, 16, 32, 64]),
            gpus_per_node=gpus, mem_gb_per_node=rng.choice([32, 64, 128, 256]),
            max_walltime=rng.choice([None, "04:00:00", "24:00:00", "72:00:00"]),
            queue_wait=f"0:{rng.randint(0, 59):02d}:00",
            cost=Prices(core_hour=round(rng.uniform(0.005, 0.1), 4),
                        gpu_hour=round(rng.uniform(0.5, 3.0), 2) if gpus else 0,
                        node_hour=round(rng.uniform(0, 0.5), 2)),
            egress_gb={"store": round(rng.uniform(0, 0.1), 3)}))
    return out


def classes(rng: random.Random, n_classes: int, total: int, levels: int = 4) -> list[TaskClass]:
    weights = [rng.random() for _ in range(n_classes)]
    counts = [max(1, int((total - n_classes) * w / sum(weights))) for w in weights]
    counts[0] += max(0, total - sum(counts))  # every class has at least one instance
    out = []
    for i, n in enumerate(counts):
        out.append(TaskClass(
            name=f"c{i}", count=n, cpu=rng.choice([1, 1, 2, 4, 8]), gpu=rng.choice([0] * 9 + [1]),
            ram_gb=rng.choice([0, 1, 2, 4, 8]), runtime_s=rng.choice([60, 300, 900, 3600]),
            walltime_s=rng.choice([None, 3600, 7200]), level=i * levels // n_classes,
            input_gb=rng.choice([0, 0.1, 1.0]), storages=("store",)))
    return out
