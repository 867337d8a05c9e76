"""Deterministic object keys and record ids: (job, epoch, index) -> key, so a retried task
overwrites its own objects instead of adding new ones."""

from __future__ import annotations


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def sample_id(epoch: int, prompt: int, index: int) -> str:
    return f"e{epoch}-p{prompt:03d}-s{index:03d}"


def pair_id(epoch: int, prompt: int, index: int) -> str:
    return f"e{epoch}-p{prompt:03d}-k{index:03d}"


def trajectory_key(job_id: str, sid: str) -> str:
    return f"{job_prefix(job_id)}{sid.split('-')[0]}/samples/{sid}.safetensors"


def image_key(job_id: str, sid: str) -> str:
    return f"{job_prefix(job_id)}{sid.split('-')[0]}/images/{sid}.png"


def target_key(job_id: str, pid: str) -> str:
    return f"{job_prefix(job_id)}{pid.split('-')[0]}/pairs/{pid}.target.safetensors"


def target_image_key(job_id: str, pid: str) -> str:
    return f"{job_prefix(job_id)}{pid.split('-')[0]}/pairs/{pid}.target.png"


def mask_key(job_id: str, pid: str) -> str:
    return f"{job_prefix(job_id)}{pid.split('-')[0]}/pairs/{pid}.mask.png"


def checkpoint_key(job_id: str, version: int) -> str:
    return f"{job_prefix(job_id)}checkpoints/{version}/pytorch_lora_weights.safetensors"


def trainer_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}trainer"


def train_unit(epoch: int, prompt: int) -> str:
    return f"e{epoch}-p{prompt:03d}"
