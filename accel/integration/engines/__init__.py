"""Engine adapters: an AccelConfig and an accel artifact in, what a serving engine takes out.

    from accel.integration.engines import lmdeploy_deployment, vllm_deployment

    plan = vllm_deployment("accel-out/bundled-w4a16")       # EngineArgs kwargs + `vllm serve` argv + notes
    plan.serve_argv(port=8000)                               # ["vllm", "serve", ..., "--kv-cache-dtype", ...]
    plan.build()                                             # vllm's own EngineArgs (vllm installed)

    plan = lmdeploy_deployment("accel-out/bundled-w4a16-awq")  # TurboMind or PyTorch engine config kwargs
    plan.api_server_argv(port=23333)                            # ["lmdeploy", "serve", "api_server", ...]
    backend_config, speculative_config = plan.build()          # lmdeploy's own classes (lmdeploy installed)

Neither engine is imported until `build()`: the mapping itself needs only accel. What an engine cannot take is an
EngineConfigError naming the field and the fix; what it takes differently is listed in the deployment's notes.
"""

from accel.integration.engines.artifact import ArtifactSummary, EngineConfigError, read_artifact
from accel.integration.engines.lmdeploy import LMDEPLOY_VERSION_CHECKED, LMDeployDeployment, lmdeploy_deployment
from accel.integration.engines.vllm import VLLM_VERSION_CHECKED, VLLMDeployment, vllm_deployment

__all__ = [
    "LMDEPLOY_VERSION_CHECKED",
    "VLLM_VERSION_CHECKED",
    "ArtifactSummary",
    "EngineConfigError",
    "LMDeployDeployment",
    "VLLMDeployment",
    "lmdeploy_deployment",
    "read_artifact",
    "vllm_deployment",
]
