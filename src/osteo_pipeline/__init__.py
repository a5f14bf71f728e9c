"""osteo_pipeline: Kedro pipelines that detect osteoporosis in spine DXA scans."""

__version__ = "0.1.0"
