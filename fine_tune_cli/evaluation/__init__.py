"""Evaluation: metrics from scikit-learn and reports (metrics.json, md/html, PNG plots)."""
