"""One folder per pipeline (Kedro finds them with ``find_pipelines``): nodes.py holds the functions,
pipeline.py wires them, the catalog and parameters live in conf/."""
