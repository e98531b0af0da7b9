"""The dual-stream LM: Mamba2/attention hybrid backbone, depformer, streaming generator."""

from models.lm.checkpoint import load_lm, load_lm_state_dict, save_lm
from models.lm.config import LMConfig, MambaConfig
from models.lm.generator import GenState, LMGenerator, StepOutput
from models.lm.model import LMModel
from models.lm.sampling import SamplingConfig

__all__ = ["GenState", "LMConfig", "LMGenerator", "LMModel", "MambaConfig", "SamplingConfig", "StepOutput",
           "load_lm", "load_lm_state_dict", "save_lm"]
