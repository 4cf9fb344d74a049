"""brainray: compute-optimal scaling sweeps of video brain-encoding models on Ray Tune.

Data flows one way: gameplay -> video -> brain (simbrain or fmri) -> vqvae tokens ->
trial (gpt + encoding) -> sweep -> triallog -> frontier / report.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
