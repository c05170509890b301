"""OpenVINO pipelines."""

from sd_ovopt.pipelines.ov_pipeline import PRECISIONS, SdOvOptPipeline

__all__ = ["PRECISIONS", "SdOvOptPipeline"]
