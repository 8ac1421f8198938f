"""The occlusion world: synthetic scenes with exact ground truth (visible and amodal masks, depth, occlusion),
shared by the demo, the benchmarks and the dataset generators of ``amodal data synth``."""
