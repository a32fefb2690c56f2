"""`ftc explain` and eval's `eval.explain`: why a classifier called an input what it did.

attribution.py: Integrated Gradients and attention rollout on the input embedding layer;
page.py: the self-contained HTML page; run.py: the command and the eval hook. What differs
between text and images lives with the tasks (fine_tune_cli/tasks/explainers.py).
"""
