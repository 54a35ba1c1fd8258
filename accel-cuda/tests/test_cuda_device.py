"""accel_cuda.kernels.device: the cached per-device facts the kernels' plans read."""

from __future__ import annotations

import pytest
import torch
from accel_cuda.kernels.device import CPU, DeviceInfo, device_info


def test_cpu_tensors_get_the_interpreter_defaults():
    assert device_info(torch.device("cpu")) == CPU == DeviceInfo(name="", capability=(0, 0), sms=132)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_matches_its_properties_and_is_cached():
    props = torch.cuda.get_device_properties(0)
    info = device_info(torch.device("cuda", 0))
    assert info == DeviceInfo(props.name, (props.major, props.minor), props.multi_processor_count)
    assert device_info(torch.device("cuda")) is info  # the current device, from the same cache
