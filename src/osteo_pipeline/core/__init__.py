"""The study's shared vocabulary, below every other layer: label schemes, the leakage guards and
the classification metrics that training (to choose) and evaluation (to report) both compute.

Light on purpose (numpy, pandas; scikit-learn only where a metric is computed), so anything may
import it and nothing here imports the rest of the project.
"""
