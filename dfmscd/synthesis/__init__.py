"""Data-free image synthesis: generators, the teacher's BN statistics, labels and the pool."""

from dfmscd.synthesis.augment import DiffAugment
from dfmscd.synthesis.bn_hook import BatchNormStatsHook, TeacherBNHooks, batch_stats
from dfmscd.synthesis.generator import Generator, from_uint8, plan_upsampling, to_uint8
from dfmscd.synthesis.label_bridge import IIDLabels, LabelBridge, allocate_deficit, class_weights, make_label_source
from dfmscd.synthesis.mixture import MixtureOfGenerators, conditional_generators, partner_students, resolve_num_generators
from dfmscd.synthesis.pool import ImagePool
from dfmscd.synthesis.step import SynthesisOutput, SynthesisWeights, synthesize

__all__ = [
    "BatchNormStatsHook",
    "DiffAugment",
    "Generator",
    "IIDLabels",
    "ImagePool",
    "LabelBridge",
    "MixtureOfGenerators",
    "SynthesisOutput",
    "SynthesisWeights",
    "TeacherBNHooks",
    "allocate_deficit",
    "batch_stats",
    "class_weights",
    "conditional_generators",
    "from_uint8",
    "make_label_source",
    "partner_students",
    "plan_upsampling",
    "resolve_num_generators",
    "synthesize",
    "to_uint8",
]
