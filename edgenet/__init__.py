"""edgenet: SpeciesNet (MegaDetector + classifier + ensemble) on onnxruntime."""

__version__ = "0.1.0"
