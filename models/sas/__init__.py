"""Sequential amodal segmentation by diffusion (SYSTEMS §5; saraao/SAS): a UNet denoiser on the image, the cumulative
occlusion mask and the noisy mask, diffusers' schedulers for sampling, and the layer-by-layer ensemble inference."""
from amodal.models.sas.config import SASConfig, paper_config, tiny_config
from amodal.models.sas.inference import (
    LayerDecomposition,
    LayerInference,
    decompose,
    layer_loop,
    model_sample_fn,
    select_member,
)
from amodal.models.sas.model import (
    SAMPLERS,
    DiffusionTerms,
    LoadedSAS,
    SASDenoiser,
    SASOutputs,
    SASTargets,
    build_sas,
    build_scheduler,
    build_unet,
    load_sas,
    noise_masks,
    sample_masks,
    sas_losses,
    training_scheduler,
    vb_term,
)

__all__ = [
    "DiffusionTerms", "LayerDecomposition", "LayerInference", "LoadedSAS", "SAMPLERS", "SASConfig", "SASDenoiser",
    "SASOutputs", "SASTargets", "build_sas", "build_scheduler", "build_unet", "decompose", "layer_loop", "load_sas",
    "model_sample_fn", "noise_masks", "paper_config", "sample_masks", "sas_losses", "select_member", "tiny_config",
    "training_scheduler", "vb_term",
]
