"""Export of Stable Diffusion pipelines to OpenVINO IR."""

from sd_ovopt.export.metadata import METADATA_FILE, ExportMetadata, read_metadata
from sd_ovopt.export.pipeline import export_pipeline
from sd_ovopt.export.vae import replace_vae

__all__ = ["METADATA_FILE", "ExportMetadata", "export_pipeline", "read_metadata", "replace_vae"]
