"""The reflective sampling engine: model-agnostic, in sigma space (see docs/architecture.md)."""

from .ddim import StepOutput, ddim_inversion_step, ddim_log_prob, ddim_step
from .guidance import ClassifierFreeGuidance, GuidedDenoiser
from .noise import BranchNoise, derived_seeds
from .parametrization import EpsilonPrediction, Parametrization, RectifiedFlow, VPrediction, parametrization_for
from .reflective import SELECTIONS, PassRecord, Reflection, ReflectionResult, planned_model_calls, reflect, reflective_sample
from .renoise import Renoised, renoise, renoise_start
from .samplers import SampleOutput, Trajectory, invert, prior_latent, sample
from .schedules import VPSchedule, ddim_sigmas, flow_sigmas, karras_sigmas

__all__ = [
    "SELECTIONS", "BranchNoise", "derived_seeds", "ClassifierFreeGuidance", "EpsilonPrediction", "GuidedDenoiser", "Parametrization",
    "PassRecord", "RectifiedFlow", "Reflection", "ReflectionResult", "Renoised", "SampleOutput", "StepOutput",
    "Trajectory", "VPSchedule", "VPrediction", "ddim_inversion_step", "ddim_log_prob", "ddim_sigmas", "ddim_step",
    "flow_sigmas", "invert", "karras_sigmas", "parametrization_for", "planned_model_calls", "prior_latent",
    "reflect", "reflective_sample", "renoise", "renoise_start", "sample",
]
